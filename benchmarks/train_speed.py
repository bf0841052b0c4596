"""Training images per second of each framework at 256² on this machine (CPU by default).

    python benchmarks/train_speed.py [--preset tiny] [--steps 3] [--batch 1] [--device cpu]

Times `training_step` through the engine's StepContext on random tiles (the data path
is not measured), after one warm-up step. Frameworks the registry cannot import are listed
as not available.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def measure(name: str, preset: str, size: int, batch: int, steps: int, device: str, precision: str = "fp32"):
    from her2core.models import registry
    from her2core.training.context import EngineContext
    from her2core.training.distributed import DistEnv

    cls = registry.get(name)
    torch.manual_seed(0)
    cfg = cls.preset(preset)
    model = cls(cfg).to(device).train()
    dev = torch.device(device)
    opts = model.make_optimizers(1000, 100)
    ctx = EngineContext(dev, precision, DistEnv(), {k: v[0] for k, v in opts.items()}, None, 1000, 100)
    batch_d = {"he": torch.rand(batch, 3, size, size, device=dev) * 2 - 1,
               "ihc": torch.rand(batch, 3, size, size, device=dev) * 2 - 1,
               "her2_score": torch.randint(0, 4, (batch,), device=dev)}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for step in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        ctx.begin(step)
        model.training_step(batch_d, ctx)
        ctx.end()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t)
        if step == 0 and dev.type == "cuda":
            # the warm-up step's cuDNN autotuning tries workspaces far larger than training needs
            torch.cuda.reset_peak_memory_stats(dev)
    per_step = sorted(times[1:])[len(times[1:]) // 2]
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None
    return batch / per_step, peak


def main(argv=None) -> int:
    from her2core.models import registry

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default=",".join(registry.names()))
    args = p.parse_args(argv)
    if os.environ.get("TORCH_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["TORCH_NUM_THREADS"]))
    print(f"preset {args.preset}, {args.size}², batch {args.batch}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    for name in args.models.split(","):
        try:
            ips, _ = measure(name, args.preset, args.size, args.batch, args.steps, args.device)
        except Exception as exc:  # noqa: BLE001 (one broken framework must not hide the others)
            print(f"{name:16s} not available: {type(exc).__name__}: {exc}")
            continue
        print(f"{name:16s} {ips:8.2f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
