"""The one output policy (her2core.util.outputs): a command refuses another job's output unless
--overwrite, resumes its own, holds an exclusive lock while writing, and turns a full disk or a
read-only place into one line with nothing partial left. Each test is one failure of issue #18."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_inference_support import ConvNet, he_tile_folder, synth_he

from her2core.errors import UserError
from her2core.inference.options import InferenceOptions
from her2core.util.outputs import PROVENANCE, locked
from her2core.util.progress import Progress

OPTS = InferenceOptions(work_mpp=0.5, tile=64, overlap=16)
KW = {"options": OPTS, "metric_tile": 64}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from her2core.sample import write_tile_dataset

    return write_tile_dataset(tmp_path_factory.mktemp("ds") / "ds", cases=4, tile=64, tiles_per_case=2)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return he_tile_folder(tmp_path_factory.mktemp("tiles") / "he", 5, seed=3)


# ----------------------------------------------------------------------------- evaluate --run

def test_evaluate_run_refuses_another_runs_folder_and_overwrite_rescores(data, tmp_path):
    from her2core.evaluation.evaluate import EvalSettings, evaluate_run

    quiet = {"log": lambda m: None}
    s = lambda: EvalSettings(set_metrics=False)
    a = evaluate_run(ConvNet(seed=0), data, "test", tmp_path / "ev", s(), **quiet)
    before = _files(tmp_path / "ev")
    with pytest.raises(UserError, match="--overwrite") as e:
        evaluate_run(ConvNet(seed=1), data, "test", tmp_path / "ev", s(), **quiet)
    assert "\n" not in str(e.value) and _files(tmp_path / "ev") == before
    # the val split into the test folder would mix both splits' tiles: refused as well
    with pytest.raises(UserError, match="split"):
        evaluate_run(ConvNet(seed=0), data, "val", tmp_path / "ev", s(), **quiet)
    assert _files(tmp_path / "ev") == before
    # the same evaluation again resumes (keeps the tiles) and gives the same table
    assert evaluate_run(ConvNet(seed=0), data, "test", tmp_path / "ev", s(), **quiet)["means"] == a["means"]
    b = evaluate_run(ConvNet(seed=1), data, "test", tmp_path / "ev", s(), overwrite=True, **quiet)
    fresh = evaluate_run(ConvNet(seed=1), data, "test", tmp_path / "fresh", s(), **quiet)
    assert b["means"] == fresh["means"] and b["means"]["psnr"] != a["means"]["psnr"]
    assert sorted(_files(tmp_path / "ev" / "virtual")) == sorted(_files(tmp_path / "fresh" / "virtual"))
    rec = json.loads((tmp_path / "ev" / PROVENANCE).read_text())
    assert rec["split"] == "test" and rec["command"] == "her2 evaluate --run" and len(rec["run_sha256"]) == 64


def test_hidden_part_png_of_a_killed_writer_is_not_a_tile(tmp_path):
    from her2core.evaluation.pairs import list_images
    from her2core.util.atomic import write_png

    write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / ".a.x1y2z3.part.png").write_bytes(b"\x89PNG half")
    assert list(list_images(tmp_path)) == ["a"]


# ----------------------------------------------------------------------------- translate --tiles

def test_translate_tiles_refuses_another_run_and_overwrite_replaces_it(tiles, tmp_path):
    from her2core.inference.tiles import translate_tile_folder

    out = tmp_path / "out"
    translate_tile_folder(ConvNet(seed=0), tiles, out)
    (out / "stale.png").write_bytes((out / "t0.png").read_bytes())  # a tile of another input set
    before = _files(out)
    with pytest.raises(UserError, match="--overwrite"):
        translate_tile_folder(ConvNet(seed=1), tiles, out)
    assert _files(out) == before
    translate_tile_folder(ConvNet(seed=1), tiles, out, overwrite=True)
    translate_tile_folder(ConvNet(seed=1), tiles, tmp_path / "fresh")
    assert _files(out) == _files(tmp_path / "fresh")  # stale.png gone, every tile run B's
    # a folder of someone else's files (no record) is refused too
    other = tmp_path / "mine"
    other.mkdir()
    (other / "t0.png").write_bytes(b"not ours")
    with pytest.raises(UserError, match="did not record"):
        translate_tile_folder(ConvNet(seed=1), tiles, other)
    assert (other / "t0.png").read_bytes() == b"not ours"


def test_translate_cli_passes_overwrite_through(tiles, tmp_path, monkeypatch):
    """`her2 translate --tiles ... --overwrite` reaches translate_tile_folder (it was dropped)."""
    import her2core.inference.tiles as tiles_mod
    from her2core import cli

    seen = {}

    def fake(run, in_dir, out_dir, options=None, **kw):
        seen.update(kw)
        return out_dir

    monkeypatch.setattr(tiles_mod, "translate_tile_folder", fake)
    argv = ["translate", "--run", str(tmp_path), "--tiles", str(tiles), "--out", str(tmp_path / "o")]
    assert cli.main(argv + ["--overwrite"]) == 0 and seen["overwrite"] is True
    assert cli.main(argv) == 0 and seen["overwrite"] is False


# ----------------------------------------------------------------------------- batch

@pytest.fixture(scope="module")
def cases_csv(tmp_path_factory):
    from her2core.slide import write_pyramid

    d = tmp_path_factory.mktemp("cases")
    write_pyramid(d / "B.ome.tif", synth_he(140, 160, seed=6), mpp=0.5, tile=128, min_size=128)
    csv = d / "cases.csv"
    csv.write_text("case,he\nB,B.ome.tif\n")
    return csv


def test_batch_rerun_with_another_model_is_refused_unless_overwrite(cases_csv, tmp_path):
    from her2core.pipelines.batch import run_batch

    out = tmp_path / "out"
    run_batch(ConvNet(seed=0), cases_csv, out, **KW)
    done = json.loads((out / "B" / "DONE").read_text())
    assert len(done["job"]["weights_sha256"]) == 64
    before = _files(out)
    assert run_batch(ConvNet(seed=0), cases_csv, out, **KW)[0]["status"] == "skipped (DONE)"
    with pytest.raises(UserError, match="another model") as e:
        run_batch(ConvNet(seed=1), cases_csv, out, **KW)
    assert "B" in str(e.value) and _files(out) == before
    with pytest.raises(UserError):  # another seed is another job too
        run_batch(ConvNet(seed=0), cases_csv, out, **{**KW, "options": OPTS.replace(seed=5)})
    assert run_batch(ConvNet(seed=1), cases_csv, out, overwrite=True, **KW)[0]["status"] == "translated"
    run_batch(ConvNet(seed=1), cases_csv, tmp_path / "fresh", **KW)
    a, b = _files(out / "B"), _files(tmp_path / "fresh" / "B")
    assert a["virtual_her2.ome.tif"] == b["virtual_her2.ome.tif"] != before["B/virtual_her2.ome.tif"]


# ----------------------------------------------------------------------------- locks

def _hold_while(fn, *args, **kw):
    """Run fn in a thread until it calls the returned `block` hook; returns (thread, go, started)."""
    started, go = threading.Event(), threading.Event()
    errors = []

    def hook(*_):
        started.set()
        go.wait(60)
        return False

    def target():
        try:
            fn(*args, hook=hook, **kw)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    assert started.wait(120)
    return t, go, errors


def test_two_trains_into_one_new_folder_second_gets_one_line(data, tmp_path):
    from her2core.training import TrainConfig, train

    cfg = TrainConfig(max_steps=2, batch_size=2, checkpoint_every=2, device="cpu")
    run = lambda hook: train("pyramid_pix2pix", data, tmp_path / "run", train_config=cfg,
                             progress=Progress(should_stop=hook))
    t, go, errors = _hold_while(lambda hook: run(hook))
    try:
        with pytest.raises(UserError, match="being written by `her2 train`") as e:
            train("pyramid_pix2pix", data, tmp_path / "run", train_config=cfg)
        assert "\n" not in str(e.value) and f"pid {os.getpid()}" in str(e.value)
    finally:
        go.set()
        t.join()
    assert not errors
    assert json.loads((tmp_path / "run/checkpoints/latest.json").read_text())["step"] == 2
    assert not (tmp_path / ".run.lock").exists()  # released and removed


def test_two_slide_translations_into_one_output_second_gets_one_line(tmp_path):
    from her2core.inference.slide import translate_slide
    from her2core.slide import write_pyramid

    slide = write_pyramid(tmp_path / "he.ome.tif", synth_he(200, 200, seed=2), mpp=0.5, tile=128,
                          min_size=128)
    out = tmp_path / "v.ome.tif"
    kw = {"options": InferenceOptions(work_mpp=0.5, tile=64, overlap=16)}
    t, go, errors = _hold_while(lambda hook: translate_slide(ConvNet(), slide, out,
                                                             progress=Progress(hook), **kw))
    try:
        with pytest.raises(UserError, match="being written by"):
            translate_slide(ConvNet(), slide, out, **kw)
    finally:
        go.set()
        t.join()
    assert not errors and out.exists()
    translate_slide(ConvNet(), slide, tmp_path / "alone.ome.tif", **kw)
    import tifffile

    assert np.array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "alone.ome.tif"))


def test_lock_is_held_across_processes_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "o"
    code = ("import sys, time; from her2core.util.outputs import locked\n"
            "with locked(sys.argv[1], 'her2 holder'):\n    print('held', flush=True); time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([os.sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"`her2 holder` \\(pid {p.pid}"), locked(out, "her2 test"):
            pass
    finally:
        p.kill()  # SIGKILL: no cleanup runs in the holder
        p.wait()
    with locked(out, "her2 test"):  # the kernel released the dead holder's lock
        pass


def test_register_refuses_to_replace_a_registration(tmp_path):
    from her2core.registration import register

    out = tmp_path / "reg"
    out.mkdir()
    (out / "transform.json").write_text('{"old": true}')
    with pytest.raises(UserError, match="--overwrite"):
        register(tmp_path / "he.tif", tmp_path / "her2.tif", out)
    assert (out / "transform.json").read_text() == '{"old": true}'
    with pytest.raises(UserError, match="not found|no such|cannot"):  # with --overwrite it goes on
        register(tmp_path / "he.tif", tmp_path / "her2.tif", out, overwrite=True)


# ----------------------------------------------------------------------------- disk full / read-only

@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       check=False, capture_output=True)
    if r.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the monkeypatched tests cover it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_is_one_line_and_leaves_nothing_partial(tmp_path):
    from her2core.util.atomic import write_png

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)  # ~1.4 MB incompressible
    with _tmpfs(tmp_path / "small", "size=1m") as d:
        with pytest.raises(UserError, match="No space left on device.*free disk space") as e:
            write_png(d / "big.png", noise)
        assert str(d / "big.png") in str(e.value)
        assert list(d.iterdir()) == []


def tiles_dir(root: Path) -> Path:
    from her2core.util.atomic import write_png

    write_png(root / "in" / "t.png", synth_he(16, 16))
    return root / "in"


def test_read_only_output_is_one_line(tmp_path):
    from her2core.inference.tiles import translate_tile_folder
    from her2core.util.atomic import write_json

    with _tmpfs(tmp_path / "ro", "size=1m,ro") as d:
        with pytest.raises(UserError, match="Read-only file system"):
            write_json(d / "x.json", {"a": 1})
        with pytest.raises(UserError, match="Read-only file system.*writable --out"):
            translate_tile_folder(ConvNet(), tiles_dir(tmp_path), d / "out")
        assert list(d.iterdir()) == []


def test_enospc_in_the_blend_buffer_is_one_line(tmp_path, monkeypatch):
    from her2core.slide.writer import RawImage

    raw = RawImage(tmp_path / "out.u8", (64, 64, 3))

    def full(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwritev", full)
    with pytest.raises(UserError, match=r"out\.u8: cannot write \(No space left on device\)"):
        raw.write(0, 0, np.zeros((8, 64, 3), np.uint8))


def test_enospc_while_writing_any_atomic_file_leaves_no_temporary(tmp_path, monkeypatch):
    from her2core.util import atomic

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(UserError, match="No space left"):
        atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- NaN

def test_nan_outputs_are_refused(tmp_path):
    from her2core.inference.tiles import translate_batch

    class NaNNet(ConvNet):
        name = "nannet"

        def translate(self, he, *, steps=None, generator=None):
            return he * float("nan")

    with pytest.raises(UserError, match="nannet: produced NaN/inf"):
        translate_batch(NaNNet(), np.zeros((1, 8, 8, 3), np.uint8))


def test_all_nan_checkpoint_is_refused(tmp_path):
    from safetensors.torch import save_file

    from her2core.training import checkpoint

    net = ConvNet()
    save_file({f"model.{k}": torch.full_like(v, float("nan")) for k, v in net.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match="6 of 6 tensors hold NaN/inf"):
        checkpoint.load_weights(net, tmp_path / "w.safetensors")


def test_provenance_records_what_wrote_the_tiles(tiles, tmp_path):
    from her2core.inference.model import weights_fingerprint
    from her2core.inference.tiles import translate_tile_folder

    net = ConvNet()
    translate_tile_folder(net, tiles, tmp_path / "o", InferenceOptions(seed=4))
    rec = json.loads((tmp_path / "o" / PROVENANCE).read_text())
    assert rec["weights_sha256"] == weights_fingerprint(net) and rec["seed"] == 4
    assert rec["inputs"] == str(tiles.resolve())
    assert pd.Series(sorted(p.name for p in (tmp_path / "o").glob("*.png"))).tolist() == [
        f"t{i}.png" for i in range(5)]


def test_nan_displacement_field_is_refused_not_turned_into_white_tiles(tmp_path):
    from her2core.registration.transform import Transform, load_transform

    t = Transform(matrix=np.eye(3), he_mpp=0.5, her2_mpp=0.5, field=np.zeros((2, 4, 4), np.float32),
                  field_spacing=64.0)
    path = t.save(tmp_path / "transform.json")
    assert load_transform(path).field is not None
    bad = np.zeros((2, 4, 4), np.float32)
    bad[0, 1, 2] = np.nan
    np.save(tmp_path / "transform_field.npy", bad, allow_pickle=False)
    with pytest.raises(UserError, match="transform_field.npy: displacement field holds 1 NaN/inf"):
        load_transform(path)
    t.field = bad
    with pytest.raises(UserError, match="--no-field"):
        t.save(tmp_path / "again.json")
    assert not (tmp_path / "again.json").exists()


@pytest.mark.parametrize("argv", [["sample", "--cases", "1"], ["tile", "--cases", "x.csv"],
                                  ["report", "nothing"], ["qupath", "export", "--project", "p"]])
def test_every_command_with_out_takes_the_lock(tmp_path, capsys, argv):
    from her2core import cli

    out = tmp_path / "out"
    started, go = threading.Event(), threading.Event()

    def hold():
        with locked(out, "her2 other"):
            started.set()
            go.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert started.wait(30)
        assert cli.main([*argv, "--out", str(out)]) == 2
    finally:
        go.set()
        t.join()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "being written by `her2 other`" in err and not out.exists()


def test_disk_filling_during_a_slide_translation_is_one_line_no_sigbus(tmp_path):
    """The blend buffer and the pyramid fill a small disk: one line, no output, no scratch left
    (it was a SIGBUS from a memory-mapped buffer). The journal stays for a resume."""
    from her2core.inference.slide import translate_slide
    from her2core.slide import write_pyramid

    slide = write_pyramid(tmp_path / "he.ome.tif", synth_he(600, 600, seed=3, tissue=0.95), mpp=0.5,
                          tile=128, min_size=128)
    with _tmpfs(tmp_path / "small", "size=600k") as d:
        out = d / "v.ome.tif"
        with pytest.raises(UserError, match=r"cannot write \(No space left on device\); free disk space"):
            translate_slide(ConvNet(), slide, out,
                            InferenceOptions(work_mpp=0.5, tile=128, overlap=16))
        assert not out.exists() and not list(d.glob(".pyramid-*")) and not list(d.glob(".*.part*"))


def test_latest_json_pointing_outside_the_run_is_refused(tmp_path):
    from safetensors.torch import save_file

    from her2core.training import checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "elsewhere.safetensors"))
    (tmp_path / "elsewhere.json").write_text('{"step": 1, "framework": "convnet"}')
    (ckpts / "latest.json").write_text(json.dumps({"step": 1, "name": "../../elsewhere"}))
    with pytest.raises(UserError, match="not a checkpoint of this folder"):
        checkpoint.find(ckpts)
