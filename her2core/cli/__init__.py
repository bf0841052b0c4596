"""The `her2` command: a thin dispatcher over her2core.

Each subcommand lives in its own module `her2core.cli.<name>` exposing
`add_arguments(parser)` and `run(args) -> int`. Modules are imported lazily so
`her2 --help` stays fast and a subcommand's heavy imports (torch, napari) are
paid only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help, in the order users meet them (docs/architecture.md).
SUBCOMMANDS: dict[str, str] = {
    "sample": "make embedded example slides and datasets",
    "register": "register a HER2 slide onto its H&E slide; writes the transform and a review",
    "review": "score an existing registration, region by region; previews",
    "tile": "build a paired tile dataset (tissue ∩ ROIs, QC, splits, manifest)",
    "models": "list the frameworks and the parameter counts of their networks",
    "train": "train one of the six frameworks on a dataset",
    "import": "a run folder from a checkpoint of one of the six reference repositories",
    "translate": "virtual HER2 for a tile folder, a region or a whole slide",
    "batch": "virtual HER2 for many slides from a CSV of cases (resumable)",
    "evaluate": "metrics of predictions against targets, or of a run on a dataset split",
    "compare": "mixed-effects comparison and figures over several evaluations",
    "report": "an HTML report of an evaluation or a comparison",
    "qupath": "export to / import from a QuPath project",
    "demo": "the whole chain on embedded data, end to end",
}


# subcommands whose module name differs (`import` is a Python keyword)
MODULES: dict[str, str] = {"import": "import_checkpoint"}


def _module(name: str):
    name = MODULES.get(name, name)
    try:
        return importlib.import_module(f"her2core.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"her2core.cli.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from her2core.cli.options import OneLineParser

    parser = OneLineParser(
        prog="her2",
        description="Virtual HER2 IHC from H&E: datasets, training, inference, evaluation.",
    )
    from her2core import __version__

    parser.add_argument("--version", action="version", version=f"her2 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        mod = _module(name)
        p = sub.add_parser(name, help=help_text if mod else f"{help_text} [not built yet]",
                           description=help_text)
        if mod is not None:
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from her2core.cli.options import OptionError
    from her2core.errors import UserError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except OptionError as exc:
        return exc.exit_code
    if args.command is None:
        parser.print_help()
        return 2
    run = getattr(args, "_run", None)
    if run is None:
        print(f"her2 {args.command}: not built yet in this version", file=sys.stderr)
        return 3
    try:
        with _output_lock(args):
            return int(run(args) or 0)
    except UserError as exc:
        print(f"her2 {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"her2 {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 130


#: commands that wait for a concurrent writer of their --out instead of failing (seconds)
LOCK_WAIT_S = {("qupath", "project"): 120.0}


def _output_lock(args):
    """One writer per output for every command with --out (her2core.util.outputs): a second one
    gets one line naming the first. Under torchrun only rank 0 holds it (all ranks write)."""
    import contextlib
    import os

    from her2core.util.outputs import locked

    out = getattr(args, "out", None)
    if out is None or int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    action = getattr(args, "qupath_command", None)
    name = " ".join(x for x in (args.command, action) if x)
    return locked(out, f"her2 {name}", wait_s=LOCK_WAIT_S.get((args.command, action), 0.0))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
