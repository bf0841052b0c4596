"""`her2 batch CASES.csv --out DIR`: virtual HER2 for many slides; finished cases are skipped.

CASES.csv is the cases CSV of `her2 tile`; here only `he` is needed, and optionally `rois`,
`her2_registered` (the real HER2 on the H&E grid: gives metrics.json) and `case`. Share the work over GPUs or processes with
`torchrun --nproc-per-node N -m her2core batch ...` (same outputs as one process).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cases", type=Path, help="cases CSV: he[, rois][, her2_registered][, case] (the file of `her2 tile`)")
    p.add_argument("--run", required=True, type=Path, help="run folder written by `her2 train`")
    p.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per case)")
    p.add_argument("--steps", type=opt.positive_int, default=None, help="sampling steps (diffusion models)")
    p.add_argument("--batch-size", type=opt.positive_int, default=8, help="tiles per model call (default 8)")
    p.add_argument("--seed", type=opt.seed_int, default=0)
    p.add_argument("--work-mpp", type=opt.mpp_float, default=None,
                   help="microns per pixel to translate at (default: what the run was trained at)")
    p.add_argument("--tile", type=opt.positive_int, default=512, help="tile size at the working mpp (default 512)")
    p.add_argument("--overlap", type=opt.non_negative_int, default=64, help="tile overlap for blending (default 64)")
    p.add_argument("--metric-tile", type=opt.positive_int, default=256, help="tile size for metrics.json")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", type=opt.device, default=None,
                   help=f"{opt.DEVICE_HELP} (default: best; per rank)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="redo cases finished by another model or other settings (else refused)")


def run(args: argparse.Namespace) -> int:
    from her2core.pipelines.batch import run_batch

    summary = run_batch(args.run, args.cases, args.out, steps=args.steps,
                        batch_size=args.batch_size, seed=args.seed, work_mpp=args.work_mpp,
                        tile=args.tile, overlap=args.overlap, metric_tile=args.metric_tile,
                        device=args.device, precision=args.precision,
                        progress=not args.no_progress, overwrite=args.overwrite)
    done = sum(1 for s in summary if s.get("status") == "translated")
    failed = [s["case"] for s in summary if str(s.get("status", "")).startswith("error")]
    if done:
        print(f"{done} case(s) translated into {args.out}")
    if failed:
        print(f"her2 batch: {len(failed)} case(s) failed: {', '.join(failed)}; fix them and run "
              "again (finished cases are skipped)", file=sys.stderr)
        return 2
    return 0
