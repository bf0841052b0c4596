"""One prepared GPU check (< 5 min): images/s and peak memory of each framework's `paper` preset
at 512², bf16 vs fp32, batch 1.

    python benchmarks/gpu_train.py [--size 512] [--steps 5] [--models a,b] [--budget-s 270]

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
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--models", default=",".join(registry.names()))
    p.add_argument("--budget-s", type=float, default=270.0)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, paper preset, {args.size}², "
          f"batch {args.batch}")
    results, t0 = [], time.perf_counter()
    for name in args.models.split(","):
        for precision in ("fp32", "bf16"):
            if time.perf_counter() - t0 > args.budget_s:
                print(f"{name:16s} {precision}: skipped (time budget)")
                continue
            row = {"framework": name, "precision": precision}
            try:
                ips, peak = measure(name, "paper", args.size, args.batch, args.steps, "cuda", precision)
                row.update(images_per_s=round(ips, 3), peak_gib=round(peak, 2))
                print(f"{name:16s} {precision}: {ips:7.2f} images/s, peak {peak:6.2f} GiB")
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
                print(f"{name:16s} {precision}: out of memory")
            except Exception as exc:  # noqa: BLE001 (one broken framework must not hide the others)
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"{name:16s} {precision}: failed: {row['error']}")
            results.append(row)
            torch.cuda.empty_cache()
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_train.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
