"""One prepared GPU check (< 5 min): training images/s and sampling tiles/s at 256² for the
`paper` presets of BBDM, DDIB and the conditional consistency model, bf16 autocast.

    python benchmarks/gpu_diffusion.py [--size 256] [--batch 8] [--train-steps 5] [--budget-s 270]
    python benchmarks/gpu_diffusion.py --device cpu --size 32 --batch 1 --train-steps 1  # smoke run

Prints one line per measurement and writes gpu_diffusion.json into $OUT if set. Weights are
random (speed does not depend on them). Sampling: BBDM at 200 (reference) and 20 steps, DDIB
at 50 encode + 50 decode steps, the consistency model at 1 and 2 steps. An out-of-memory is
reported and the next measurement runs; the budget stops the list early.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_training(fw, batch, size, steps, device):
    import torch

    from her2core.training.context import EngineContext
    from her2core.training.distributed import DistEnv

    fw.to(device).train()
    opts = fw.make_optimizers(10**6, 1000)
    ctx = EngineContext(device, "bf16", DistEnv(), {k: v[0] for k, v in opts.items()}, None, 10**6, 1000)
    data = {"he": torch.rand(batch, 3, size, size, device=device) * 2 - 1,
            "ihc": torch.rand(batch, 3, size, size, device=device) * 2 - 1,
            "her2_score": torch.zeros(batch, dtype=torch.long, device=device)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 1):  # first step is warm-up
        if i == 1:
            _sync()
            t0 = time.perf_counter()
        ctx.begin(i)
        fw.training_step(data, ctx)
        ctx.end()
    _sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return batch * steps / (time.perf_counter() - t0), peak


def measure_sampling(fw, batch, size, steps, device):
    import torch

    fw.to(device).eval()
    he = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    gen = torch.Generator(device=device).manual_seed(0)
    fw.translate(he[:1], steps=1, generator=gen)  # warm-up
    _sync()
    t0 = time.perf_counter()
    fw.translate(he, steps=steps, generator=gen)
    _sync()
    return batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    import torch

    from her2core.models import registry
    from her2core.util.configs import replace

    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=270.0)
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU")
        return 1
    torch.backends.cudnn.benchmark = True
    plan = [("bbdm", [200, 20]), ("ddib", [50]), ("consistency", [1, 2])]
    rows, start = [], time.perf_counter()
    print(f"{'model':<12} {'what':<22} {'value':>10}  unit")
    for name, sample_steps in plan:
        if time.perf_counter() - start > args.budget_s:
            print(f"{name:<12} skipped: time budget spent")
            continue
        cls = registry.get(name)
        fw = cls(replace(cls.preset("paper"), sample_batch=args.batch))
        try:
            ips, peak = measure_training(fw, args.batch, args.size, args.train_steps, device)
            rows.append({"model": name, "what": "train", "images_per_s": ips, "peak_gib": peak})
            print(f"{name:<12} {'train bf16 b' + str(args.batch):<22} {ips:>10.2f}  images/s (peak {peak:.1f} GiB)", flush=True)
        except torch.cuda.OutOfMemoryError:
            print(f"{name:<12} train: out of memory at batch {args.batch}")
        for st in sample_steps:
            if time.perf_counter() - start > args.budget_s:
                break
            try:
                tps = measure_sampling(fw, args.batch, args.size, st, device)
                rows.append({"model": name, "what": f"sample_{st}", "tiles_per_s": tps})
                print(f"{name:<12} {f'sample {st} steps':<22} {tps:>10.3f}  tiles/s", flush=True)
            except torch.cuda.OutOfMemoryError:
                print(f"{name:<12} sample {st}: out of memory at batch {args.batch}")
        del fw
        torch.cuda.empty_cache()
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_diffusion.json").write_text(json.dumps(
            {"size": args.size, "batch": args.batch, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
