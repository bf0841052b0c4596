"""`her2 report`: a self-contained HTML page of an evaluation, a comparison or a demo folder."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a `her2 evaluate`, `her2 compare` or `her2 demo` output folder")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--he", default=None, help="H&E input tiles (for the example grid)")
    p.add_argument("--title", default=None)


def run(args) -> int:
    from pathlib import Path

    if (Path(args.source) / "demo_summary.json").is_file():
        from her2core.demo_report import build_demo_report

        path = build_demo_report(args.source, args.out)
    else:
        from her2core.evaluation.report import build_report

        path = build_report(args.source, args.out, he_dir=args.he, title=args.title)
    print(f"{path}: written")
    return 0
