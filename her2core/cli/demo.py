"""`her2 demo`: the whole chain on embedded data (see her2core.demo)."""

from __future__ import annotations

from her2core.cli import options as opt


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="smaller slides and shorter training")
    p.add_argument("--seed", type=opt.seed_int, default=0)


def run(args) -> int:
    from pathlib import Path

    from her2core.demo import run_demo
    from her2core.errors import UserError

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"{args.out}: exists and is not a folder; choose another --out")

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0
