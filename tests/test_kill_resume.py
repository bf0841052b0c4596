"""kill -9 at random points, then the same command again: the old state or a resumable one, and
the same bytes as an uninterrupted run (issue #18). Plus the resume dead ends that were fixed:
a run killed before its first checkpoint, a torn log line, diffusion tiles seeded by batch
position in the remaining work.

The SIGKILL tests run each job in its own process (tests/kill_driver.py or `python -m her2core`);
the kill delays are drawn from seeded RNGs, over the uninterrupted run's duration (used only to
place the kills, never asserted)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inference_support import he_tile_folder, synth_he

from her2core.training import Cancelled, TrainConfig, train

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
SEEDS = (1, 2)


def _files(root: Path, pattern: str = "*") -> dict[str, bytes]:
    """Every non-hidden file under root (locks, provenance and temporaries are hidden)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(pattern))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def _run(argv: list[str]) -> float:
    t = time.monotonic()
    r = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return time.monotonic() - t


def _kill_at(argv: list[str], delay: float) -> None:
    p = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()


def _kill_then_resume(make_argv, ref_seconds: float, seed: int, resume_argv=None) -> None:
    """SIGKILL the job after a random delay, then run it (or `resume_argv()`) to completion."""
    rng = random.Random(seed)
    _kill_at(make_argv(), rng.uniform(0.3, 0.95) * ref_seconds)
    _run((resume_argv or make_argv)())


def _driver(*args) -> list[str]:
    return [sys.executable, str(TESTS / "kill_driver.py"), *map(str, args)]


@pytest.fixture(scope="module")
def he_tiles(tmp_path_factory):
    return he_tile_folder(tmp_path_factory.mktemp("he") / "tiles", 9, seed=4)


# ----------------------------------------------------------------------------- translate --tiles

@pytest.mark.parametrize("model", ["convnet", "bbdm"])
def test_translate_tiles_killed_resumes_to_the_same_bytes(he_tiles, tmp_path, model):
    ref = tmp_path / "ref"
    t = _run(_driver("tiles", model, he_tiles, ref))
    want = _files(ref)
    assert len(want) == 9
    for seed in SEEDS:
        out = tmp_path / f"k{seed}"
        _kill_then_resume(lambda: _driver("tiles", model, he_tiles, out), t, seed)  # noqa: B023
        assert _files(out) == want
        assert not list(out.glob(".*.part.png"))  # a killed writer's temporary is cleaned up


def test_diffusion_tiles_resume_is_byte_identical_when_a_batch_was_half_written(he_tiles, tmp_path):
    """A kill between the two PNGs of one batch: the rest used to be re-batched from the first
    missing tile (seeded by its index), so the stochastic sampler drew other noise."""
    from kill_driver import framework

    from her2core.inference.options import InferenceOptions
    from her2core.inference.tiles import translate_tile_folder

    fw = framework("bbdm")
    opts = InferenceOptions(steps=2, batch_size=2, seed=0)
    kw = {"options": opts}
    translate_tile_folder(fw, he_tiles, tmp_path / "full", **kw)
    want = _files(tmp_path / "full")
    translate_tile_folder(fw, he_tiles, tmp_path / "other_seed", opts.replace(seed=1))
    assert _files(tmp_path / "other_seed") != want  # the seed matters: the sampler is stochastic
    cut = tmp_path / "cut"
    translate_tile_folder(fw, he_tiles, cut, **kw)
    for name in ("t3.png", "t5.png", "t6.png", "t8.png"):  # t2|t3 and t4|t5 half done, t6|t7 ...
        (cut / name).unlink()
    translate_tile_folder(fw, he_tiles, cut, **kw)
    assert _files(cut) == want


# ----------------------------------------------------------------------------- translate --slide, batch

@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from her2core.slide import write_pyramid

    d = tmp_path_factory.mktemp("slides")
    write_pyramid(d / "A.ome.tif", synth_he(260, 300, seed=5), mpp=0.5, tile=128, min_size=128)
    write_pyramid(d / "B.ome.tif", synth_he(180, 200, seed=6), mpp=0.5, tile=128, min_size=128)
    (d / "cases.csv").write_text("case,he\nA,A.ome.tif\nB,B.ome.tif\n")
    return d


def test_translate_slide_killed_resumes_to_the_same_bytes(slides, tmp_path):
    t = _run(_driver("slide", slides / "A.ome.tif", tmp_path / "ref" / "v.ome.tif"))
    want = (tmp_path / "ref" / "v.ome.tif").read_bytes()
    for seed in SEEDS:
        out = tmp_path / f"k{seed}" / "v.ome.tif"
        argv = lambda: _driver("slide", slides / "A.ome.tif", out)  # noqa: B023
        rng = random.Random(seed)
        _kill_at(argv(), rng.uniform(0.3, 0.95) * t)
        if not out.exists():  # the output appears complete or not at all
            _run(argv())
        assert out.read_bytes() == want
        assert sorted(p.name for p in out.parent.iterdir()) == ["v.ome.tif"]  # no journal left


def test_batch_killed_resumes_to_the_same_bytes(slides, tmp_path):
    t = _run(_driver("batch", slides / "cases.csv", tmp_path / "ref"))
    want = _files(tmp_path / "ref")
    assert {"A/DONE", "B/DONE", "A/virtual_her2.ome.tif"} <= set(want)
    for seed in SEEDS:
        out = tmp_path / f"k{seed}"
        _kill_then_resume(lambda: _driver("batch", slides / "cases.csv", out), t, seed)  # noqa: B023
        assert _files(out) == want


def test_batch_confidence_killed_resumes_to_the_same_bytes(slides, tmp_path):
    """`her2 batch --confidence` killed anywhere (in a virtual slide, a confidence carrier, its
    pyramid, between cases) and run again: the bytes of an uninterrupted batch."""
    t = _run(_driver("batch-confidence", slides / "cases.csv", tmp_path / "ref"))
    want = _files(tmp_path / "ref")
    assert {"A/DONE", "B/virtual_her2.confidence.ome.tif", "B/virtual_her2.ome.tif"} <= set(want)
    out = tmp_path / "random"  # once at a random moment (the plain batch test has more) ...
    _kill_then_resume(lambda: _driver("batch-confidence", slides / "cases.csv", out), t, SEEDS[-1])
    assert _files(out) == want
    assert not list(out.rglob(".*.json"))  # no stage marker left behind
    # ... and once for sure inside a confidence carrier: as soon as A's first carrier row is on disk
    out = tmp_path / "in_carrier"
    p = subprocess.Popen(_driver("batch-confidence", slides / "cases.csv", out), env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while p.poll() is None and not list(out.glob("A/.*.rgb.ome.tif.work/row_*.u8")):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL and not (out / "A" / "DONE").exists()
    assert (out / "A" / ".virtual.json").exists() and (out / "A" / ".confidence.json").exists()
    _run(_driver("batch-confidence", slides / "cases.csv", out))
    assert _files(out) == want


def test_tile_killed_resumes_to_the_same_bytes(tmp_path):
    from her2core.slide import write_pyramid

    he = synth_he(640, 640, seed=8, tissue=0.7)
    write_pyramid(tmp_path / "he.ome.tif", he, mpp=0.5, tile=128, min_size=128)
    from test_inference_support import ConvNet

    write_pyramid(tmp_path / "her2.ome.tif", ConvNet().one_piece(he), mpp=0.5, tile=128, min_size=128)

    def argv(out):
        return [sys.executable, "-m", "her2core", "tile", "--he", str(tmp_path / "he.ome.tif"),
                "--her2-registered", str(tmp_path / "her2.ome.tif"), "--split", "train", "--score", "2+", "--out", str(out),
                "--tile-px", "64", "--source-mpp", "0.5", "--out-px", "64", "--out-mpp", "0.5",
                "--min-coverage", "0.2", "--max-shift-um", "0", "--max-dark", "1", "--max-ink", "1"]

    t = _run(argv(tmp_path / "ref"))
    want = _files(tmp_path / "ref")
    assert sum(k.endswith(".png") for k in want) >= 20
    for seed in SEEDS:
        out = tmp_path / f"k{seed}"
        _kill_then_resume(lambda: argv(out), t, seed)  # noqa: B023
        assert _files(out) == want


# ----------------------------------------------------------------------------- train

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from her2core.sample import write_tile_dataset

    return write_tile_dataset(tmp_path_factory.mktemp("ds") / "ds", cases=4, tile=64, tiles_per_case=4,
                              seed=0)


def _weights(run: Path) -> bytes:
    name = json.loads((run / "checkpoints" / "latest.json").read_text())["name"]
    return (run / "checkpoints" / f"{name}.safetensors").read_bytes()


def _log(run: Path) -> list[dict]:
    """log.jsonl without its timings (images per second differ between runs)."""
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("per_s")} for r in rows]


def test_train_killed_resumes_to_the_same_weights(data, tmp_path):
    def argv(out, resume=False):
        return [sys.executable, "-m", "her2core", "train", "--model", "pyramid_pix2pix", "--data", str(data),
                "--out", str(out), "--max-steps", "6", "--checkpoint-every", "2", "--log-every", "1", "--batch-size", "2",
                "--device", "cpu", "--seed", "0", "--no-progress"] + (["--resume"] if resume else [])

    t = _run(argv(tmp_path / "ref"))
    want = _weights(tmp_path / "ref")
    for seed in SEEDS:
        out = tmp_path / f"k{seed}"
        # rerun: --resume once run.json exists (also before the first checkpoint), else afresh
        _kill_then_resume(lambda: argv(out), t, seed,  # noqa: B023
                          resume_argv=lambda: argv(out, resume=(out / "run.json").exists()))  # noqa: B023
        assert _weights(out) == want
        assert _log(out) == _log(tmp_path / "ref")


def test_run_killed_before_its_first_checkpoint_restarts_cleanly(data, tmp_path, stop_at):
    cfg = TrainConfig(max_steps=3, batch_size=2, checkpoint_every=10, log_every=1, seed=1, device="cpu")
    train("pyramid_pix2pix", data, tmp_path / "full", train_config=cfg)
    with pytest.raises(Cancelled):
        train("pyramid_pix2pix", data, tmp_path / "cut", train_config=cfg, progress=stop_at(2))
    assert (tmp_path / "cut" / "run.json").exists() and not (tmp_path / "cut" / "checkpoints").exists()
    train("pyramid_pix2pix", None, tmp_path / "cut", train_config=None, resume=True)
    assert _weights(tmp_path / "cut") == _weights(tmp_path / "full")
    rows = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "G_GAN" in r or "G" in r] == [1, 2, 3]


def test_run_killed_while_writing_run_json_starts_afresh(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".run.k2j4x8.part.json").write_text('{"format": "her2-r')  # SIGKILL mid-write
    cfg = TrainConfig(max_steps=1, batch_size=2, device="cpu")
    train("pyramid_pix2pix", data, out, train_config=cfg)
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 1


def test_torn_last_log_line_does_not_block_resume(data, tmp_path, stop_at):
    cfg = TrainConfig(max_steps=4, batch_size=2, checkpoint_every=2, log_every=1, seed=2, device="cpu")
    full = train("pyramid_pix2pix", data, tmp_path / "full", train_config=cfg)
    with pytest.raises(Cancelled):
        train("pyramid_pix2pix", data, tmp_path / "cut", train_config=cfg, progress=stop_at(3))
    with (tmp_path / "cut" / "log.jsonl").open("a") as fh:
        fh.write('{"step": 4, "G_GA')  # a kill in the middle of a write
    train("pyramid_pix2pix", None, tmp_path / "cut", resume=True)
    assert _weights(tmp_path / "cut") == _weights(full)
    assert _log(tmp_path / "cut") == _log(full)


# ----------------------------------------------------------------------------- qupath project

def _normalised_project(proj: Path) -> dict:
    """What must match between runs: entries (not the timestamps or random names) and sidecars."""
    data = json.loads((proj / "project.qpproj").read_text())
    entries = [{k: v for k, v in e.items() if k != "randomizedName"} for e in data["images"]]
    side = {p.name: p.read_bytes() for p in sorted((proj / "her2" / "annotations").glob("*.geojson"))}
    return {"entries": entries, "lastID": data["lastID"], "sidecars": side}


def test_qupath_project_killed_leaves_old_or_resumable_state(tmp_path):
    from her2core.slide import write_pyramid

    rgb = np.full((96, 128, 3), 235, np.uint8)
    rgb[20:70, 30:100] = (180, 90, 160)
    a = write_pyramid(tmp_path / "a.ome.tif", rgb, mpp=0.5, tile=64, min_size=64)
    b = write_pyramid(tmp_path / "b.ome.tif", rgb, mpp=0.5, tile=64, min_size=64)
    rois = TESTS / "fixtures" / "qupath" / "qupath_v06_collection.geojson"

    def argv(proj, img):
        return [sys.executable, "-m", "her2core", "qupath", "project", "--out", str(proj), "--image", str(img),
                "--rois", str(rois)]

    _run(argv(tmp_path / "ref", a))
    t = _run(argv(tmp_path / "ref", b))
    want = _normalised_project(tmp_path / "ref")
    for seed in SEEDS:
        proj = tmp_path / f"k{seed}"
        _run(argv(proj, a))
        old = _normalised_project(proj)
        _kill_at(argv(proj, b), random.Random(seed).uniform(0.3, 0.95) * t)
        now = _normalised_project(proj)  # readable: the old project or the new one, never torn
        assert now in (old, want)
        assert all(p.stat().st_size > 0 for p in proj.rglob("*her2-backup*"))
        _run(argv(proj, b))
        assert _normalised_project(proj) == want


def test_torch_is_deterministic_here():
    """The byte-identity checks above assume one CPU thread gives one result."""
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x @ x, x @ x)
