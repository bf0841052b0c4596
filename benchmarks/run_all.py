"""Run every CPU benchmark in one go (`make benchmarks`); each prints its own side-by-side ratios.

    python benchmarks/run_all.py [--only NAME ...] [--quick]

GPU scripts (gpu_*.py) are not run here: they are prepared for a lent GPU machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, full arguments, quick arguments)
BENCHMARKS = {
    "tiling": ("tiling_speed.py", [], ["--sizes", "4096", "8192"]),
    "train": ("train_speed.py", [], ["--steps", "2"]),
    "diffusion": ("diffusion_sampling.py", [], ["--train-steps", "60"]),
    "slide": ("slide_inference.py", [], ["--skip-memory"]),
    "eval": ("eval_speed.py", [], ["--pairs", "24"]),
    "mixed": ("mixed_scale.py", [], ["--sizes", "6k", "36k"]),
    "registration": ("registration.py", ["--memory", "8192", "32768"], ["--cases", "nonrigid", "damage"]),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    p.add_argument("--quick", action="store_true", help="smaller sizes (minutes instead of tens of minutes)")
    args = p.parse_args(argv)
    failed = []
    for name in args.only or BENCHMARKS:
        script, full, quick = BENCHMARKS[name]
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
