"""One prepared GPU check (< 5 min): images/s and peak memory of each framework's `paper` preset
at 512², bf16 vs fp32, at each preset's own batch size (capped by --max-batch; BCIStainer's
BatchNorm after global pooling needs batch >= 2).

    python benchmarks/gpu_train.py [--size 512] [--steps 5] [--models a,b] [--budget-s 270]
    python benchmarks/gpu_train.py --device cpu --size 64 --steps 1   # smoke run, no GPU

Prints one line per (framework, precision) and writes gpu_train.json beside $OUT if set.
Frameworks are measured in registry order until the time budget runs out; an out-of-memory
is reported as such and the next one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import torch

    from benchmarks.train_speed import measure
    from her2core.models import registry

    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=0, help="0: the paper preset's batch size")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run")
    p.add_argument("--models", default=",".join(registry.names()))
    p.add_argument("--budget-s", type=float, default=270.0)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU")
        return 1
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name(0) if cuda else "CPU (smoke run)"
    print(f"{where}, torch {torch.__version__}, paper preset, {args.size}²")
    results, t0 = [], time.perf_counter()
    for name in args.models.split(","):
        for precision in ("fp32", "bf16"):
            if time.perf_counter() - t0 > args.budget_s:
                print(f"{name:16s} {precision}: skipped (time budget)")
                continue
            batch = args.batch or min(registry.get(name).preset("paper").batch_size, args.max_batch)
            row = {"framework": name, "precision": precision, "batch": batch}
            try:
                ips, peak = measure(name, "paper", args.size, batch, args.steps, args.device, precision)
                row.update(images_per_s=round(ips, 3), peak_gib=round(peak or 0.0, 2))
                print(f"{name:16s} {precision} batch {batch}: {ips:7.2f} images/s, "
                      f"peak {peak or 0.0:6.2f} GiB", flush=True)
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
                print(f"{name:16s} {precision}: out of memory")
            except Exception as exc:  # noqa: BLE001 (one broken framework must not hide the others)
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"{name:16s} {precision}: failed: {row['error']}")
            results.append(row)
            if cuda:
                torch.cuda.empty_cache()
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_train.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
