"""`her2 batch CASES.csv --out DIR`: virtual HER2 for many slides; finished cases are skipped.

CASES.csv is the cases CSV of `her2 tile`; here only `he` is needed, and optionally `rois`,
`her2_registered` (the real HER2 on the H&E grid: gives metrics.json) and `case`. Share the work over GPUs or processes with
`torchrun --nproc-per-node N -m her2core batch ...` (same outputs as one process).
`--confidence` adds each case's confidence pyramid beside its virtual slide (as `her2 translate
--slide --confidence`); a killed batch resumes from where each case stood.
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
    opt.add_inference_arguments(p, slide_mpp=False,
                                device_help=f"{opt.DEVICE_HELP} (default: best; per rank)")
    p.add_argument("--metric-tile", type=opt.positive_int, default=256, help="tile size for metrics.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="redo cases finished by another model or other settings (else refused)")
    opt.add_confidence_arguments(
        p, "also write each case's confidence: virtual_her2.confidence.ome.tif and "
           "virtual_her2.confidence_rois.json beside its virtual slide")


def run(args: argparse.Namespace) -> int:
    import contextlib

    from her2core.pipelines.batch import run_batch
    from her2core.util.progress import tqdm_bars

    bars = contextlib.nullcontext() if args.no_progress else tqdm_bars("tile")
    with bars as progress:
        summary = run_batch(args.run, args.cases, args.out, opt.inference_options(args),
                            metric_tile=args.metric_tile,
                            confidence=opt.confidence_settings(args) if args.confidence else None,
                            runs=args.runs, progress=progress, overwrite=args.overwrite)
    done = sum(1 for s in summary if s.get("status") == "translated")
    failed = [s["case"] for s in summary if str(s.get("status", "")).startswith("error")]
    if done:
        print(f"{done} case(s) translated into {args.out}")
    if failed:
        print(f"her2 batch: {len(failed)} case(s) failed: {', '.join(failed)}; fix them and run "
              "again (finished cases are skipped)", file=sys.stderr)
        return 2
    return 0
