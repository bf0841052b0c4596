"""`her2 batch`: per-case outputs, metrics against a real HER2 slide, skip on re-run, and two
torchrun ranks (gloo, CPU) giving byte-identical outputs to one process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_inference_support import ConvNet, one_and_two_ranks, synth_he

from her2core.errors import UserError
from her2core.inference.options import InferenceOptions
from her2core.pipelines.batch import read_cases, run_batch
from her2core.slide import open_slide, write_pyramid

TESTS = Path(__file__).parent
KW = {"options": InferenceOptions(work_mpp=0.5, tile=64, overlap=16), "metric_tile": 64}


@pytest.fixture(scope="module")
def cases_csv(tmp_path_factory):
    """Two cases: A with an ROI and a registered 'real HER2' slide, B a whole small slide."""
    d = tmp_path_factory.mktemp("cases")
    he_a = synth_he(300, 420, seed=5)
    write_pyramid(d / "A.ome.tif", he_a, mpp=0.5, tile=128, min_size=128)
    # the 'real' HER2: what the network gives on the whole slide, so metrics must be high
    write_pyramid(d / "A_her2.ome.tif", ConvNet().one_piece(he_a), mpp=0.5, tile=128, min_size=128)
    write_pyramid(d / "B.ome.tif", synth_he(180, 200, seed=6), mpp=0.5, tile=128, min_size=128)
    (d / "A_roi.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"objectType": "annotation", "name": "tumour"},
        "geometry": {"type": "Polygon", "coordinates": [[[30, 20], [400, 40], [380, 280], [20, 260],
                                                          [30, 20]]]}}]}))
    csv = d / "cases.csv"
    csv.write_text("case,he,rois,her2_registered\nA,A.ome.tif,A_roi.geojson,A_her2.ome.tif\nB,B.ome.tif,,\n")
    return csv


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_batch_outputs_metrics_and_skip_on_rerun(tmp_path, cases_csv):
    net = ConvNet()
    out = tmp_path / "out"
    summary = run_batch(net, cases_csv, out, **KW)
    assert [s["case"] for s in summary] == ["A", "B"]
    for case in ("A", "B"):
        files = sorted(p.name for p in (out / case).iterdir())
        want = ["DONE", "rois.geojson", "virtual_her2.ome.tif"] + (["metrics.json"] if case == "A" else [])
        assert files == sorted(want)
    with open_slide(out / "A" / "virtual_her2.ome.tif") as s:
        assert s.origin_xy == (20.0, 20.0) and s.mpp == pytest.approx(0.5)
    m = json.loads((out / "A" / "metrics.json").read_text())
    assert m["tiles"] >= 4 and m["mean"]["psnr"] > 25 and m["mean"]["ssim"] > 0.8
    assert m["mean"]["dab_od_mae"] < 0.01 and len(m["per_tile"]) == m["tiles"]
    assert {"ssim_gaussian", "dab_grid_r", "her2_proxy_real"} <= set(m["per_tile"][0])
    rois = json.loads((out / "A" / "rois.geojson").read_text())
    assert rois["features"][0]["properties"]["name"] == "tumour"
    b_rois = json.loads((out / "B" / "rois.geojson").read_text())["features"][0]["geometry"]
    assert np.ptp(np.array(b_rois["coordinates"][0]), axis=0).tolist() == [200, 180]

    seen = net.tiles_seen
    again = run_batch(net, cases_csv, out, **KW)
    assert net.tiles_seen == seen and all("skipped" in s["status"] for s in again)
    # a case whose DONE is gone is done again, to the same bytes
    before = _files(out / "B")
    (out / "B" / "DONE").unlink()
    run_batch(net, cases_csv, out, **KW)
    assert net.tiles_seen > seen and _files(out / "B") == before


def test_bad_case_is_reported_and_the_batch_goes_on(tmp_path, cases_csv, capsys):
    import tifffile

    d = cases_csv.parent
    tifffile.imwrite(tmp_path / "nompp.tif", synth_he(64, 64), photometric="rgb")
    csv = tmp_path / "c.csv"
    csv.write_text(f"slide,case\n{tmp_path / 'nompp.tif'},bad\n{d / 'B.ome.tif'},B\n")
    summary = run_batch(ConvNet(), csv, tmp_path / "out", **KW)
    status = {s["case"]: s["status"] for s in summary}
    assert status["B"] == "translated" and "microns per pixel" in status["bad"]
    assert (tmp_path / "out" / "B" / "DONE").exists() and not (tmp_path / "out" / "bad" / "DONE").exists()
    assert "bad: error:" in capsys.readouterr().err


def test_cases_csv_errors(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("path\nx.tif\n")
    with pytest.raises(UserError, match="missing column.*he"):
        read_cases(bad)
    bad.write_text("he\nmissing.tif\n")
    with pytest.raises(UserError, match="not found"):
        read_cases(bad)
    (tmp_path / "s.tif").write_bytes(b"")
    bad.write_text("he,case\ns.tif,X\ns.tif,X\n")
    with pytest.raises(UserError, match="repeats"):
        read_cases(bad)


def test_one_cases_schema_for_tile_and_batch(tmp_path, capsys):
    """`her2 tile` and `her2 batch` read the same file; BOM and old batch columns are accepted."""
    from her2core.tiling.cases import read_cases_csv, write_cases_csv

    for name in ("he.tif", "reg.tif", "r.geojson"):
        (tmp_path / name).write_bytes(b"")
    csv = write_cases_csv(tmp_path / "cases.csv", [
        {"case": "c1", "he": tmp_path / "he.tif", "her2_registered": tmp_path / "reg.tif",
         "her2_score": "2+", "rois": tmp_path / "r.geojson", "mode": "same"}])
    assert csv.read_text().splitlines()[1] == "c1,he.tif,2+,reg.tif,r.geojson,same"
    (tiled,) = read_cases_csv(csv)
    (batched,) = read_cases(csv)
    assert tiled == batched and tiled.her2_registered == tmp_path / "reg.tif"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # Excel's UTF-8 BOM
    assert read_cases_csv(csv) == [tiled]
    old = tmp_path / "old.csv"
    old.write_text("case,slide,roi,her2\nc1,he.tif,r.geojson,reg.tif\n")
    (c,) = read_cases(old)
    assert (c.he, c.rois, c.her2_registered) == (tiled.he, tiled.rois, tiled.her2_registered)
    assert "old `her2 batch` columns" in capsys.readouterr().err
    unpaired = write_cases_csv(tmp_path / "x.csv", [{"case": "x", "he": tmp_path / "he.tif", "her2_score": "0"}])
    assert read_cases(unpaired)[0].her2_registered is None  # batch: translate only
    with pytest.raises(UserError, match="needs her2_registered"):
        read_cases_csv(unpaired)  # tile: a pair is needed


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import os
from test_inference_support import ConvNet
from her2core.inference.options import InferenceOptions
from her2core.pipelines.batch import run_batch
net = ConvNet()
run_batch(net, {csv!r}, sys.argv[1], InferenceOptions(work_mpp=0.5, tile=64, overlap=16),
          metric_tile=64)
print(f"RANK{{os.environ.get('RANK', '0')}} tiles={{net.tiles_seen}}", flush=True)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_torchrun_ranks_equal_one_process(tmp_path, cases_csv):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(TESTS), csv=str(cases_csv)))
    one, two, stdout = one_and_two_ranks(driver, tmp_path, timeout=300)
    # the two ranks' lines can interleave on the shared stdout: match, don't split lines
    shares = {f"RANK{k}": int(n) for k, n in re.findall(r"RANK(\d+) tiles=(\d+)", stdout)}
    assert set(shares) == {"RANK0", "RANK1"} and min(shares.values()) > 0  # both ranks worked
    a, b = _files(one), _files(two)
    assert sorted(a) == sorted(b) and "A/metrics.json" in a
    for name in a:
        assert a[name] == b[name], name
