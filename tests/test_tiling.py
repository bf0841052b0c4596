"""Tissue, ROIs, tile QC, splits, dataset layout, manifest and resume on embedded cases."""

import csv
import json

import numpy as np
import pytest
from test_registration_data import registered_same, sample_dir

from her2core.errors import UserError
from her2core.sample.truth import her2_to_he_xy, load_truth
from her2core.slide import open_slide, write_pyramid
from her2core.tiling import (
    Case,
    TileConfig,
    assign_splits,
    build_dataset,
    detect_tissue,
    load_splits,
)
from her2core.util.progress import Cancelled, Progress


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


# ----------------------------------------------------------------------------- splits


def test_splits_stratified_deterministic_and_clear_error():
    scores = {f"c{i:02d}": ["0", "1+", "2+", "3+"][i % 4] for i in range(14)}
    a = assign_splits(scores, seed=5)
    assert a == assign_splits(dict(reversed(list(scores.items()))), seed=5)  # order does not matter
    for s in ("0", "1+", "2+", "3+"):
        assert {a[c] for c, v in scores.items() if v == s} == {"train", "val", "test"}
    assert a != assign_splits(scores, seed=6)
    with pytest.raises(UserError, match=r"HER2 1\+ \(2 cases\), HER2 3\+ \(1 case\)"):
        assign_splits({"a": "0", "b": "0", "c": "0", "d": "1+", "e": "1+", "f": "3+"})


# ----------------------------------------------------------------------------- tissue and ROIs


def test_tissue_mask_saved_and_empty_slide_refused(base, tmp_path):
    from her2core.qupath.geojson import read_features
    from her2core.tiling.dataset import save_tissue_geojson

    case = sample_dir(base) / "case00_same"
    with open_slide(case / "he.ome.tif") as s:
        tm = detect_tissue(s)
    assert 0.2 < tm.fraction < 0.98
    tm.save_png(tmp_path / "t.png")
    save_tissue_geojson(tm, tmp_path / "t.geojson")
    geom = read_features(tmp_path / "t.geojson")[0].geometry
    w, h = tm.mask.shape[1] * tm.step, tm.mask.shape[0] * tm.step
    assert geom.area / (w * h) == pytest.approx(tm.fraction, abs=0.05)
    write_pyramid(tmp_path / "blank.ome.tif", np.full((600, 600, 3), 245, np.uint8), mpp=0.25)
    with open_slide(tmp_path / "blank.ome.tif") as s, pytest.raises(UserError, match="no tissue"):
        detect_tissue(s)


def test_rois_restrict_tiles_and_outside_roi_is_refused(base, tmp_path):
    from shapely.geometry import box

    from her2core.qupath.geojson import Feature, write_features

    case, reg = registered_same(base)
    cfg = TileConfig(tile_px=256, out_px=128, min_coverage=0.5)
    write_features(tmp_path / "roi.geojson", [Feature(geometry=box(0, 0, 1024, 1024), name="tumour")])
    c = Case(case="c0", he=case / "he.ome.tif", her2_score="2+", her2_registered=reg / "her2_registered.ome.tif",
             rois=tmp_path / "roi.geojson")
    s = build_dataset([c], tmp_path / "ds", cfg, splits={"c0": "test"})
    rows = list(csv.DictReader((tmp_path / "ds" / "manifest.csv").open()))
    assert rows and all(int(r["x"]) + 256 <= 1024 + 128 and int(r["y"]) + 256 <= 1024 + 128 for r in rows)
    assert s["per_split"]["test"] == s["kept"] > 0
    write_features(tmp_path / "out.geojson", [Feature(geometry=box(5000, 5000, 6000, 6000))])
    c.rois = tmp_path / "out.geojson"
    with pytest.raises(UserError, match="outside the slide"):
        build_dataset([c], tmp_path / "ds2", cfg, splits={"c0": "test"})


# ----------------------------------------------------------------------------- QC acceptance


def artefact_boxes_in_he(truth):
    boxes = []
    for a in truth["artefacts"]:
        x0, y0, x1, y1 = a["box_xy"]
        if a["slide"] == "her2":
            pts = her2_to_he_xy(truth, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], float))
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        boxes.append((x0, y0, x1, y1))
    return boxes


@pytest.mark.slow
def test_tile_qc_drops_artefacts_keeps_clean_tissue_and_resumes(base, tmp_path):
    case, reg = registered_same(base)
    truth = load_truth(case / "truth.json")
    # 64 µm tiles every 32 µm, so artefact boxes cover whole tiles and there are enough of each kind
    cfg = TileConfig(tile_px=256, out_px=128, stride_px=128)
    c = Case(case="c0", he=case / "he.ome.tif", her2_score="2+", her2_registered=reg / "her2_registered.ome.tif")
    out = tmp_path / "ds"
    summary = build_dataset([c], out, cfg, splits={"c0": "train"})
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == summary["candidates"] > 100
    art, clean = [], []
    boxes = artefact_boxes_in_he(truth)
    for r in rows:
        x, y, n = int(r["x"]), int(r["y"]), int(r["size_px"])
        cover = max(max(0, min(x + n, x1) - max(x, x0)) * max(0, min(y + n, y1) - max(y, y0)) / n / n
                    for x0, y0, x1, y1 in boxes)
        if cover >= 0.25:
            art.append(r)
        elif cover == 0:
            clean.append(r)
    recall = np.mean([r["kept"] == "0" for r in art])
    keep = np.mean([r["kept"] == "1" for r in clean])
    assert len(art) >= 20 and len(clean) >= 40
    assert recall >= 0.9, recall
    assert keep >= 0.9, keep
    assert all(r["reason"] for r in rows if r["kept"] == "0")
    assert {w for r in art for w in r["reason"].split(";") if w} >= {"blur", "dark", "ink"}
    # layout: every kept tile is a PNG pair at the working scale
    kept = [r for r in rows if r["kept"] == "1"]
    from PIL import Image

    for r in kept[:3]:
        a, b = Image.open(out / r["he_path"]), Image.open(out / r["ihc_path"])
        assert a.size == b.size == (128, 128) and r["he_path"].startswith("HE_20x/train/")
        assert r["ihc_path"] == r["he_path"].replace("HE_20x", "IHC_20x")
    # resume: a killed run (progress half written, case not done) finishes with the same manifest
    before = (out / "manifest.csv").read_bytes()
    (out / ".progress" / "c0.done").unlink()
    prog = out / ".progress" / "c0.csv"
    lines = prog.read_text().splitlines(keepends=True)
    prog.write_text("".join(lines[: len(lines) // 2]) + lines[len(lines) // 2][:10])  # cut mid-row
    build_dataset([c], out, cfg, splits={"c0": "train"})
    assert (out / "manifest.csv").read_bytes() == before
    # cancel: a stop asked through the progress protocol ends the case between tiles; it resumes
    (out / ".progress" / "c0.done").unlink()
    prog.write_text("".join(lines[: len(lines) // 4]))
    resumed_from, seen = len(lines) // 4 - 1, []  # rows kept (the header is a line)
    progress = Progress(lambda stage, done, total: (seen.append((stage, done)),
                                                    progress.stop() if done >= resumed_from + 3 else None))
    with pytest.raises(Cancelled):
        build_dataset([c], out, cfg, splits={"c0": "train"}, progress=progress)
    assert seen == [("c0: tile", resumed_from + k) for k in range(4)]
    assert not (out / ".progress" / "c0.done").exists()
    build_dataset([c], out, cfg, splits={"c0": "train"})
    assert (out / "manifest.csv").read_bytes() == before
    with pytest.raises(UserError, match="other settings"):
        build_dataset([c], out, TileConfig(tile_px=512, out_px=256), splits={"c0": "train"})


@pytest.mark.slow
def test_cli_tile_from_cases_csv_with_transform_and_shared_splits(base, tmp_path):
    """her2 + transform (warped on the fly) gives the same tiles as the registered slide; splits reused."""
    from her2core.cli import main

    case, reg = registered_same(base)
    rows = [("case", "he", "her2", "transform", "her2_score")]
    for i, score in enumerate(["0", "0", "0"]):
        rows.append((f"p{i}", str(case / "he.ome.tif"), str(case / "her2.ome.tif"), str(reg / "transform.json"),
                     score))
    with open(tmp_path / "cases.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    args = ["--tile-px", "512", "--min-coverage", "0.8", "--max-dark", "1", "--max-blur", "1", "--max-ink", "1"]
    assert main(["tile", "--cases", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "a"), "--seed", "2",
                 *args]) == 0
    splits = load_splits(tmp_path / "a" / "splits.json")
    assert sorted(splits.values()) == ["test", "train", "val"]
    assert main(["tile", "--cases", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "b"), "--splits",
                 str(tmp_path / "a" / "splits.json"), *args]) == 0
    assert load_splits(tmp_path / "b" / "splits.json") == splits
    man = list(csv.DictReader((tmp_path / "a" / "manifest.csv").open()))
    r = next(r for r in man if r["kept"] == "1")
    from PIL import Image

    ihc = np.asarray(Image.open(tmp_path / "a" / r["ihc_path"])).astype(float)
    with open_slide(reg / "her2_registered.ome.tif") as s:
        ref = s.read_at_mpp((int(r["x"]), int(r["y"])), (128.0, 128.0), 0.5).astype(float)
    assert np.abs(ihc - ref).mean() < 6.0
    assert json.loads((tmp_path / "a" / "tile_config.json").read_text())["out_px"] == 256
    # one case without a split, and a missing score, are one-line errors (exit 2)
    assert main(["tile", "--he", str(case / "he.ome.tif"), "--her2-registered",
                 str(reg / "her2_registered.ome.tif"), "--score", "2+", "--out", str(tmp_path / "c")]) == 2


def test_require_review_refuses_unaccepted_registrations_before_writing(base, tmp_path, capsys):
    """`her2 tile --require-review`: a case whose registration no person accepted is refused in
    one line and nothing is written; the napari widget's decision (written through
    registration.decision) lets it through; dataset.json records the tiles' scale."""
    import shutil

    from her2core.cli import main
    from her2core.registration.decision import write_decision
    from her2core.util.dataset_meta import read_dataset_meta

    case, reg = registered_same(base)
    mine = tmp_path / "reg"
    shutil.copytree(reg, mine)
    (mine / "review_decision.json").unlink(missing_ok=True)
    argv = ["tile", "--he", str(case / "he.ome.tif"), "--her2-registered",
            str(mine / "her2_registered.ome.tif"), "--score", "2+", "--split", "train",
            "--tile-px", "512", "--max-dark", "1", "--max-blur", "1", "--max-ink", "1",
            "--require-review", "--out", str(tmp_path / "ds")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not reviewed" in err[0] and "review_decision.json" in err[0]
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())
    review = json.loads((mine / "review.json").read_text())
    write_decision(mine, review, note="checked")
    assert main(argv) == 0
    meta = read_dataset_meta(tmp_path / "ds")
    assert meta["mpp"] == 0.5 and meta["tile_px"] == 256
