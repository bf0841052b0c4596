"""`her2 compare`: mixed-effects comparison and figures over several evaluations."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("eval_dirs", nargs="+", help="folders written by `her2 evaluate`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-figures", action="store_true")


def run(args) -> int:
    from her2core.evaluation.mixed import compare

    s = compare(args.eval_dirs, args.out, figures=not args.no_figures)
    for note in s["notes"]:
        print(f"note: {note}")
    for m, f in s["fits"].items():
        print(f"{m}: {f['formula']} (n={f['n']})")
    print(f"{args.out}: mixed_effects.csv, random_effects.csv, compare.json, {len(s['figures'])} figures")
    return 0
