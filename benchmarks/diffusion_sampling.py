"""Quality versus speed of the diffusion samplers on the embedded data (CPU by default).

    python benchmarks/diffusion_sampling.py [--train-steps 300] [--tile 64] [--threads 2] [--out DIR]

Trains `tiny` BBDM and consistency models on the embedded same-section tiles through the
engine (or reuses --bbdm-run / --cm-run), then translates the held-out (test-split) tiles with
a fixed seed and prints, per sampler and step count: SSIM (skimage, uint8 RGB,
channel_axis=-1, data_range=255 as the BCI/ASP evaluations), L1 against the real HER2 tile
(0-255 scale) and seconds per tile. The mean-HER2-colour baseline is printed for scale.
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
    from skimage.metrics import structural_similarity

    p, t = to_u8(pred), to_u8(target)
    ssim = float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255) for a, b in zip(p, t)]))
    l1 = float(np.abs(p.astype(np.float32) - t.astype(np.float32)).mean())
    return ssim, l1


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
    p.add_argument("--cm-run", default=None)
    p.add_argument("--bbdm-steps", default="1,2,5,20,200")
    p.add_argument("--cm-steps", default="1,2")
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

    runs = {}
    for name, given in (("bbdm", args.bbdm_run), ("consistency", args.cm_run)):
        if given:
            runs[name] = Path(given)
            continue
        out = work / f"run_{name}"
        t0 = time.perf_counter()
        if not (out / "checkpoints" / "latest.json").exists():
            train(name, data, out, preset="tiny", progress=False,
                  train_config=TrainConfig(max_steps=args.train_steps, seed=0, checkpoint_every=10**9))
        print(f"trained tiny {name}: {args.train_steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        runs[name] = out

    print(f"\n{len(he)} held-out tiles of {args.tile}² px, seed 0, {args.threads} threads")
    print(f"{'sampler':<14} {'steps':>5} {'SSIM':>7} {'L1 (0-255)':>11} {'s/tile':>8}")
    s, l1 = scores(mean.expand_as(ihc), ihc)
    print(f"{'mean colour':<14} {'-':>5} {s:>7.3f} {l1:>11.2f} {'-':>8}")
    for name, steps_list in (("bbdm", args.bbdm_steps), ("consistency", args.cm_steps)):
        fw = load_run(runs[name])
        for steps in [int(v) for v in steps_list.split(",")]:
            t0 = time.perf_counter()
            out = fw.translate(he, steps=steps, generator=torch.Generator().manual_seed(0))
            dt = (time.perf_counter() - t0) / len(he)
            s, l1 = scores(out, ihc)
            print(f"{name:<14} {steps:>5} {s:>7.3f} {l1:>11.2f} {dt:>8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
