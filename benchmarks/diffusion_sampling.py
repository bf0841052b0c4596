"""Few-step quality of the diffusion samplers on the embedded data (CPU-sized by default).

    python benchmarks/diffusion_sampling.py [--train-steps 300] [--tile 64] [--threads 2] [--out DIR]

Trains `tiny` BBDM, DDIB and consistency models briefly on the embedded same-section tiles
through the engine (or reuses --bbdm-run / --ddib-run / --cm-run), then translates the held-out
(test-split) tiles with a fixed seed and prints, per framework, sampler (`--scheduler`) and
step count: PSNR and SSIM (the reference scripts' skimage calls on uint8 RGB,
`evaluation.pixel.reference_psnr_ssim`, averaged per image), L1 (0-255) and seconds per tile,
and whether PSNR and SSIM stay within 2 % of the reference step count's (BBDM 200 bridge
steps, DDIB 250 + 250 DDIM steps). The mean-HER2-colour baseline is printed for scale.
Tiny models trained for minutes, so the absolute numbers say little; the step-count trend is
the point. DDIB's `steps` is both the encode's and the decode's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def to_u8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def scores(pred, target):
    import numpy as np

    from her2core.evaluation.pixel import reference_psnr_ssim

    p, t = to_u8(pred), to_u8(target)
    psnr, ssim = (float(np.mean(v)) for v in zip(*(reference_psnr_ssim(a, b) for a, b in zip(p, t))))
    l1 = float(np.abs(p.astype(np.float32) - t.astype(np.float32)).mean())
    return psnr, ssim, l1


#: framework -> (reference sampler, reference step count)
REFERENCE_STEPS = {"bbdm": ("bridge", 200), "ddib": ("ddim", 250), "consistency": ("multistep", 2)}


def main(argv=None) -> int:
    import torch

    from her2core.datasets.paired import open_paired
    from her2core.sample import write_tile_dataset
    from her2core.training import TrainConfig, load_run, train

    p = argparse.ArgumentParser()
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--bbdm-run", default=None)
    p.add_argument("--ddib-run", default=None)
    p.add_argument("--cm-run", default=None)
    p.add_argument("--frameworks", default="bbdm,ddib,consistency")
    p.add_argument("--bbdm-steps", default="2,5,10,20,50,200")
    p.add_argument("--ddib-steps", default="5,10,20,50,250")
    p.add_argument("--ddib-schedulers", default="ddim,dpmsolver++")
    p.add_argument("--cm-steps", default="1,2")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (README)")
    p.add_argument("--max-tiles", type=int, default=24, help="held-out tiles to translate (the first N)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.out or tempfile.mkdtemp(prefix="dm_bench_"))
    data = work / "tiles"
    if not (data / "manifest.csv").exists():
        write_tile_dataset(data, cases=4, tile=args.tile, mpp=0.5, tiles_per_case=24, seed=0, mode="same")
    test = open_paired(data, "test")
    n = min(len(test), args.max_tiles)
    he = torch.stack([test[i]["he"] for i in range(n)])
    ihc = torch.stack([test[i]["ihc"] for i in range(n)])
    tr = open_paired(data, "train")
    mean = torch.stack([tr[i]["ihc"] for i in range(len(tr))]).mean(dim=(0, 2, 3))[None, :, None, None]

    names = args.frameworks.split(",")
    given_runs = {"bbdm": args.bbdm_run, "ddib": args.ddib_run, "consistency": args.cm_run}
    runs = {}
    for name in names:
        if given_runs[name]:
            runs[name] = Path(given_runs[name])
            continue
        out = work / f"run_{name}"
        t0 = time.perf_counter()
        if not (out / "checkpoints" / "latest.json").exists():
            train(name, data, out, preset="tiny",
                  train_config=TrainConfig(max_steps=args.train_steps, seed=0, checkpoint_every=10**9))
        print(f"trained tiny {name}: {args.train_steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        runs[name] = out

    print(f"\n{len(he)} held-out tiles of {args.tile}² px, seed 0, {args.threads} threads")
    header = f"{'framework':<12} {'sampler':<12} {'steps':>5} {'PSNR':>7} {'SSIM':>7} {'L1':>7} {'s/tile':>7}  within 2 %"
    print(header)
    ps, ss, l1 = scores(mean.expand_as(ihc), ihc)
    rows = [("mean colour", "-", "-", ps, ss, l1, None, "")]
    print(f"{'mean colour':<12} {'-':<12} {'-':>5} {ps:>7.2f} {ss:>7.3f} {l1:>7.2f} {'-':>7}")
    plan = {"bbdm": [("bridge", args.bbdm_steps)], "consistency": [("multistep", args.cm_steps)],
            "ddib": [(sch, args.ddib_steps) for sch in args.ddib_schedulers.split(",")]}
    for name in names:
        fw = load_run(runs[name])
        ref_sched, ref_steps = REFERENCE_STEPS[name]
        results = {}
        for sched, steps_list in plan[name]:
            fw.use_scheduler(sched)
            for steps in [int(v) for v in steps_list.split(",")]:
                t0 = time.perf_counter()
                out = fw.translate(he, steps=steps, generator=torch.Generator().manual_seed(0))
                dt = (time.perf_counter() - t0) / len(he)
                results[(sched, steps)] = (*scores(out, ihc), dt)
        ref = results.get((ref_sched, ref_steps))
        for (sched, steps), (ps, ss, l1, dt) in results.items():
            within = ""
            if ref is not None:
                ok = ps >= 0.98 * ref[0] and ss >= 0.98 * ref[1]
                within = "reference" if (sched, steps) == (ref_sched, ref_steps) else ("yes" if ok else "no")
            rows.append((name, sched, steps, ps, ss, l1, dt, within))
            print(f"{name:<12} {sched:<12} {steps:>5} {ps:>7.2f} {ss:>7.3f} {l1:>7.2f} {dt:>7.3f}  {within}",
                  flush=True)
    if args.markdown:
        print("\n| framework | sampler | steps | PSNR (dB) | SSIM | L1 (0-255) | s/tile | within 2 % of the reference |")
        print("|---|---|---:|---:|---:|---:|---:|---|")
        for name, sched, steps, ps, ss, l1, dt, within in rows:
            dts = "-" if dt is None else f"{dt:.3f}"
            print(f"| {name} | {sched} | {steps} | {ps:.2f} | {ss:.3f} | {l1:.2f} | {dts} | {within} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
