"""`her2 batch --confidence`: the confidence pyramid of every case, resumable like the slide.

A tiny pix2pix trained for two steps (a real run folder, dihedral TTA + dropout); two small
slides, one with an ROI. Pinned: a batch killed inside a case's confidence resumes without
redoing what was finished, the confidence is added to cases finished without it (their virtual
slide kept), DONE cases are skipped, and every output equals what `her2 translate --slide
--confidence` writes for the same case; under torchrun the ranks give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_inference_support import one_and_two_ranks, synth_he

from her2core.cli import main as her2
from her2core.errors import UserError
from her2core.inference.confidence import ConfidenceSettings
from her2core.inference.options import InferenceOptions
from her2core.pipelines.batch import run_batch
from her2core.slide import write_pyramid
from her2core.util.progress import Progress

TESTS = Path(__file__).parent
GRID = ["--work-mpp", "0.5", "--tile", "64", "--overlap", "16"]
OPTS = InferenceOptions(work_mpp=0.5, tile=64, overlap=16)
CONF = ["--confidence", "--confidence-samples", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from her2core.sample import write_tile_dataset
    from her2core.training import TrainConfig, train

    root = tmp_path_factory.mktemp("batch_conf_run")
    data = write_tile_dataset(root / "ds", cases=3, tile=64, mpp=0.5, tiles_per_case=4, seed=0,
                              mode="same")
    return train("pyramid_pix2pix", data, root / "run", preset="tiny",
                 train_config=TrainConfig(max_steps=2, seed=0, checkpoint_every=10**9,
                                          sample_count=1))


@pytest.fixture(scope="module")
def cases_csv(tmp_path_factory):
    """A: a slide with a polygon ROI; B: a whole small slide."""
    d = tmp_path_factory.mktemp("batch_conf_cases")
    write_pyramid(d / "A.ome.tif", synth_he(220, 300, seed=5), mpp=0.5, tile=128, min_size=128)
    write_pyramid(d / "B.ome.tif", synth_he(180, 200, seed=6), mpp=0.5, tile=128, min_size=128)
    (d / "A_roi.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"objectType": "annotation", "name": "tumour"},
        "geometry": {"type": "Polygon", "coordinates": [[[20, 20], [280, 30], [260, 200],
                                                          [30, 190], [20, 20]]]}}]}))
    csv = d / "cases.csv"
    csv.write_text("case,he,rois\nA,A.ome.tif,A_roi.geojson\nB,B.ome.tif,\n")
    return csv


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _batch(run, cases_csv, out, *extra) -> int:
    return her2(["batch", str(cases_csv), "--run", str(run), "--out", str(out), "--no-progress",
                 *GRID, *extra])


def test_batch_confidence_resumes_skips_and_equals_translate(run, cases_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert _batch(run, cases_csv, out) == 0  # a batch without confidence first
    plain = _files(out)
    virtual_ns = {c: (out / c / "virtual_her2.ome.tif").stat().st_mtime_ns for c in "AB"}

    class Killed(Exception):
        pass

    def kill_in_b_confidence(stage, done, total):
        if stage.startswith("B: confidence") and done >= 6:
            raise Killed

    # --confidence on those cases: A gets its map, the batch is killed inside B's
    with pytest.raises(Killed):
        run_batch(run, cases_csv, out, OPTS, confidence=ConfidenceSettings(samples=2),
                  progress=Progress(kill_in_b_confidence))
    assert "confidence" in json.loads((out / "A" / "DONE").read_text())["job"]
    assert (out / "A" / "virtual_her2.confidence.ome.tif").exists()
    b = out / "B"
    assert not (b / "DONE").exists() and not (b / "virtual_her2.confidence.ome.tif").exists()
    assert (b / ".virtual.json").exists() and (b / ".confidence.json").exists()
    assert list(b.glob(".*.rgb.ome.tif.work"))  # the carrier's journal: the kill resumes from it
    for c in "AB":  # the virtual slides finished before were kept, not redone
        assert (out / c / "virtual_her2.ome.tif").stat().st_mtime_ns == virtual_ns[c]

    capsys.readouterr()
    assert _batch(run, cases_csv, out, *CONF) == 0
    assert "A: done before, skipped" in capsys.readouterr().out
    done = json.loads((b / "DONE").read_text())
    assert done["job"]["confidence"]["confidence"]["samples"] == 2
    assert "virtual_her2.confidence.ome.tif" in done["outputs"]
    assert (b / "virtual_her2.ome.tif").stat().st_mtime_ns == virtual_ns["B"]
    assert sorted(p.name for p in b.iterdir()) == [  # no marker, carrier or journal left
        "DONE", "rois.geojson", "virtual_her2.confidence.ome.tif",
        "virtual_her2.confidence_rois.json", "virtual_her2.ome.tif"]
    for name, data in plain.items():
        if not name.endswith("DONE"):
            assert _files(out)[name] == data, name

    finished = _files(out)
    assert _batch(run, cases_csv, out, *CONF) == 0 and _files(out) == finished  # DONE: skipped
    assert _batch(run, cases_csv, out) == 0 and _files(out) == finished  # has more than asked
    assert "B: done before, skipped" in capsys.readouterr().out
    with pytest.raises(UserError, match="--overwrite"):  # other confidence settings: refused
        run_batch(run, cases_csv, out, OPTS, confidence=ConfidenceSettings(samples=3))
    assert _files(out) == finished

    # the same case through `her2 translate --slide --confidence`: the same bytes
    src = cases_csv.parent
    for case, roi in (("A", ["--roi", str(src / "A_roi.geojson")]), ("B", [])):
        alone = tmp_path / f"alone_{case}" / "virtual_her2.ome.tif"
        assert her2(["translate", "--run", str(run), "--slide", str(src / f"{case}.ome.tif"),
                     "--out", str(alone), *roi, *GRID, *CONF]) == 0
        for name in ("virtual_her2.ome.tif", "virtual_her2.confidence.ome.tif",
                     "virtual_her2.confidence_rois.json"):
            assert (alone.parent / name).read_bytes() == finished[f"{case}/{name}"], (case, name)
    assert (tmp_path / "alone_A" / "virtual_her2.confidence_rois.geojson").exists()
    assert "virtual_her2.confidence_rois.geojson" in json.loads(finished["A/DONE"])["outputs"]

    # redone by other settings without --confidence: no confidence of the old slides is left
    run_batch(run, cases_csv, out, OPTS.replace(seed=1), overwrite=True)
    assert not list(out.rglob("*confidence*")) and not list(out.rglob(".*"))


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from her2core.inference.confidence import ConfidenceSettings
from her2core.inference.options import InferenceOptions
from her2core.pipelines.batch import run_batch
run_batch({run!r}, {csv!r}, sys.argv[1], InferenceOptions(work_mpp=0.5, tile=64, overlap=16),
          confidence=ConfidenceSettings(samples=2))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_torchrun_ranks_give_the_confidence_of_one_process(run, cases_csv, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(TESTS), run=str(run), csv=str(cases_csv)))
    one, two, stdout = one_and_two_ranks(driver, tmp_path)
    assert "A: wrote" in stdout and "B: wrote" in stdout
    a, b = _files(one), _files(two)
    assert "B/virtual_her2.confidence.ome.tif" in a and sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], name
