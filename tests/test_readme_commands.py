"""Every `her2` command the README shows parses with the real argument parser, and the first
steps of its chain run on embedded sample data exactly as written (sizes shrunk by appending
overriding options, which argparse lets win)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from her2core.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def her2_argv(command: str) -> list[str] | None:
    """argv after `her2` of a shell line (`her2 ...` or `torchrun ... -m her2core ...`), else None."""
    tokens = shlex.split(command, comments=True)
    if tokens[:1] == ["her2"]:
        return tokens[1:]
    if tokens[:1] == ["torchrun"] and "her2core" in tokens:
        return tokens[tokens.index("her2core") + 1:]
    return None


def readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", README.read_text(), re.DOTALL)
    lines = [ln.strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln and her2_argv(ln) is not None]


def test_readme_shows_the_chain():
    names = {her2_argv(c)[0] for c in readme_commands()}
    assert {"sample", "register", "review", "tile", "train", "translate", "batch", "evaluate",
            "compare", "report", "qupath", "demo"} <= names


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    args = build_parser().parse_args(her2_argv(command))  # argparse exits (status 2) on a bad line
    assert getattr(args, "_run", None) is not None, f"{command}: subcommand not built"


def test_first_readme_steps_run_on_sample_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shrink = {"sample": ["--cases", "1", "--size", "1536"], "tile": ["--tile-px", "256", "--out-px", "128"]}
    steps = [c for c in readme_commands() if her2_argv(c)[0] in ("sample", "register", "review")]
    steps += [c for c in readme_commands() if her2_argv(c)[0] == "tile" and "--he" in c]
    assert [her2_argv(c)[0] for c in steps] == ["sample", "register", "review", "tile"]
    for command in steps:
        argv = her2_argv(command)
        assert main(argv + shrink.get(argv[0], [])) == 0, command
    assert (tmp_path / "reg/case00/her2_registered.ome.tif").is_file()
    assert (tmp_path / "reg/case00/review/review.json").is_file()
    assert (tmp_path / "data/one/manifest.csv").is_file()
