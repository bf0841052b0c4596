"""`her2 compare`: mixed-effects comparison and figures over several evaluations."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("eval_dirs", nargs="+", help="folders written by `her2 evaluate`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-figures", action="store_true")


def run(args) -> int:
    import pandas as pd

    from her2core.evaluation.figures import SIGNIFICANT_P
    from her2core.evaluation.mixed import compare

    s = compare(args.eval_dirs, args.out, figures=not args.no_figures)
    for note in s["notes"]:
        print(f"note: {note}")
    fixed = pd.read_csv(f"{args.out}/mixed_effects.csv")
    for m, f in s["fits"].items():
        levels = ", ".join(f"{v} {k}s" for k, v in f.get("levels", {}).items())
        print(f"{m}: {f['formula']} (n={f['n']}{'; ' + levels if levels else ''})")
        for r in fixed[fixed.metric == m].itertuples():
            mark = " *" if r.p_value <= SIGNIFICANT_P else ""
            print(f"  {r.term:<40} {r.estimate:+.4g}  SE {r.std_error:.3g}  "
                  f"t({r.df:.1f}) = {r.t_value:.2f}  p = {r.p_value:.2g}{mark}")
    print(f"(* p <= {SIGNIFICANT_P:g}; Satterthwaite df as lmerTest)")
    print(f"{args.out}: mixed_effects.csv, random_effects.csv, compare.json, {len(s['figures'])} figures")
    return 0
