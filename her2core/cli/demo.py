"""`her2 demo`: the whole chain on embedded data (see her2core.demo)."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="smaller slides and shorter training")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from her2core.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0
