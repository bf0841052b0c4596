"""The `her2` dispatcher: help lists every subcommand, errors are one line and exit 2."""

import subprocess
import sys

import pytest

from her2core import cli
from her2core.errors import UserError


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_unbuilt_subcommand_says_so(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "frobnicate", "not a real command")
    assert cli.main(["frobnicate"]) == 3
    assert "not built yet" in capsys.readouterr().err


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):
    import types

    mod = types.SimpleNamespace(
        add_arguments=lambda p: p.add_argument("path"),
        run=lambda args: (_ for _ in ()).throw(UserError(f"{args.path}: broken; fix it")),
    )
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", "fake command")
    monkeypatch.setattr(cli, "_module", lambda name: mod if name == "fake" else None)
    assert cli.main(["fake", "x.tif"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "her2 fake: error: x.tif: broken; fix it"


def test_console_script_runs_without_qt():
    code = ("import sys, her2core, her2core.cli, her2core.slide, her2core.stain; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
