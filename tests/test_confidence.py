"""Confidence maps on embedded data: where the virtual HER2 can be trusted.

A tiny GAN (pyramid pix2pix, dihedral test-time augmentation) and a tiny diffusion model
(BBDM, K seeds) trained briefly on embedded same-section 64-px tiles at 0.5 µm/px; an
embedded artefact slide (`her2 sample --artefacts`: blur, dark shade, fold, pen at known
boxes, listed in truth.json) is cut into 64-px tiles: tiles where a planted artefact changed
the tissue (against the same case rendered without artefacts) against clean tissue tiles,
scored by mean uncertainty (AUROC). On the held-out test split the per-tile uncertainty is
rank-correlated with the real error, and removing the most uncertain pixels lowers the error
of the rest faster than removing pixels at random. The slide output (one-channel pyramid on
the virtual slide's grid), the tile output, `her2 evaluate --confidence` and the QuPath entry
run through the CLI.
"""

import json

import numpy as np
import pytest

from her2core.cli import main
from her2core.evaluation.calibration import auroc, calibrate, sparsification
from her2core.inference import confidence as C
from her2core.sample.artefacts import KINDS
from her2core.training import TrainConfig, load_run, train

pytestmark = pytest.mark.slow

TILE = 64
STEPS = {"pyramid_pix2pix": 300, "bbdm": 150}
N_CLEAN = 60  # clean tissue tiles scored against the artefact tiles (fixed-seed subset)
#: a tile carries a planted artefact when this share of its pixels changed by more than
#: CHANGED_LEVELS grey levels (any channel); the pen stroke, a thin snaking band, misses most of
#: the tiles of its box, which show clean tissue and are left out of both classes
CHANGED_SHARE, CHANGED_LEVELS = 0.1, 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from her2core.sample import write_tile_dataset

    return write_tile_dataset(tmp_path_factory.mktemp("conf_tiles") / "ds", cases=4, tile=TILE,
                              mpp=0.5, tiles_per_case=24, seed=0, mode="same")


@pytest.fixture(scope="module")
def artefact_case(tmp_path_factory):
    from her2core.sample.slides import synthetic_case

    return synthetic_case(tmp_path_factory.mktemp("conf_case") / "case00", "case00",
                          her2_score=2, seed=1, size=2048, mpp=0.5, artefacts=True)


@pytest.fixture(scope="module")
def clean_case(tmp_path_factory):
    """The artefact case rendered without its artefacts (same seed: the same tissue)."""
    from her2core.sample.slides import synthetic_case

    return synthetic_case(tmp_path_factory.mktemp("conf_clean") / "case00", "case00",
                          her2_score=2, seed=1, size=2048, mpp=0.5, artefacts=False)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("conf_runs")
    out = {}
    for name, steps in STEPS.items():
        out[name] = train(name, data, root / name, preset="tiny",
                          train_config=TrainConfig(max_steps=steps, seed=0,
                                                   checkpoint_every=10**9, sample_count=1))
    return out


def artefact_tiles(case, clean_case):
    """64-px tiles fully inside a planted H&E artefact box whose pixels the artefact changed
    (label 1, see CHANGED_SHARE), or clear of all boxes and mostly tissue (label 0, a fixed
    subset of N_CLEAN); returns (tiles, labels, kinds)."""
    from her2core.slide import open_slide
    from her2core.stain import optical_density

    truth = json.loads((case / "truth.json").read_text())
    arts = [a for a in truth["artefacts"] if a["slide"] == "he"]
    with open_slide(case / "he.ome.tif") as s, open_slide(clean_case / "he.ome.tif") as s0:
        he, he0 = s.read_level(0), s0.read_level(0)
    outside = np.ones(he.shape[:2], bool)
    for a in arts:
        x0, y0, x1, y1 = a["box_xy"]
        outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(he[outside], he0[outside])  # the same tissue but the boxes
    tiles, labels, kinds = [], [], []
    for y in range(0, he.shape[0] - TILE + 1, TILE):
        for x in range(0, he.shape[1] - TILE + 1, TILE):
            inside = [a["kind"] for a in arts if x >= a["box_xy"][0] and y >= a["box_xy"][1]
                      and x + TILE <= a["box_xy"][2] and y + TILE <= a["box_xy"][3]]
            touch = any(x < x1 and x + TILE > x0 and y < y1 and y + TILE > y0
                        for x0, y0, x1, y1 in (a["box_xy"] for a in arts))
            t, t0 = he[y:y + TILE, x:x + TILE], he0[y:y + TILE, x:x + TILE]
            changed = (np.abs(t.astype(np.int16) - t0).max(axis=-1) > CHANGED_LEVELS).mean()
            if ((touch and not inside) or (inside and changed < CHANGED_SHARE)
                    or (optical_density(t) > 0.25).mean() < 0.5):
                continue
            tiles.append(t)
            labels.append(int(bool(inside)))
            kinds.append(inside[0] if inside else "")
    labels = np.array(labels)
    clean = np.random.default_rng(0).permutation(np.flatnonzero(labels == 0))[:N_CLEAN]
    keep = np.sort(np.r_[np.flatnonzero(labels == 1), clean])
    return np.stack(tiles)[keep], labels[keep], np.array(kinds)[keep]


def mean_uncertainty(estimator, tiles, batch=16):
    return np.concatenate([estimator.uncertainty(tiles[i:i + batch], seed=i)[1].mean(axis=(1, 2))
                           for i in range(0, len(tiles), batch)])


# --------------------------------------------------------------------------- the estimator

def test_dihedral_ops_are_inverted_and_spread():
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    images = set()
    for op in range(8):
        y = C.dihedral(x, op)
        np.testing.assert_array_equal(C.dihedral_inverse(y, op), x)
        images.add(y.tobytes())
    assert len(images) == 8  # the eight ops are distinct
    assert C.dihedral_ops(4, square=True) == [0, 4, 2, 6]
    assert C.dihedral_ops(8, square=False) == [0, 4, 2, 6]  # shape-keeping ops only


def test_uncertainty_and_confidence_scale():
    k = np.stack([np.full((1, 2, 2, 3), v, np.uint8) for v in (0, 51)])  # std 25.5/255 = 0.1
    u = C.pixel_uncertainty(k)
    np.testing.assert_allclose(u, 0.1, atol=1e-6)
    c = C.confidence_to_uint8(C.uncertainty_to_confidence(u))
    assert (c == 153).all()  # 1 - 0.1 / 0.25 = 0.6
    np.testing.assert_allclose(C.uint8_to_uncertainty(c), 0.1, atol=1e-6)
    assert C.confidence_to_uint8(C.uncertainty_to_confidence(np.array([0.0, 0.3])))[1] == 0


def test_family_from_registry_sample_zero_is_the_translation_and_dropout_is_live(runs, data):
    import torch

    from her2core.datasets.paired import open_paired, read_rgb
    from her2core.inference.tiles import translate_batch
    from her2core.models.pyramid_pix2pix import PyramidPix2Pix

    gan, dm = load_run(runs["pyramid_pix2pix"]), load_run(runs["bbdm"])
    assert C.resolve_method(gan) == "tta" and C.resolve_method(dm) == "seeds"
    he = np.stack([read_rgb(a) for a, _, _ in open_paired(data, "test").pairs[:4]])
    for fw in (gan, dm):
        est = C.ConfidenceEstimator(fw, C.ConfidenceSettings(samples=3))
        preds = list(est.predictions(he, seed=5))
        np.testing.assert_array_equal(preds[0], translate_batch(fw, he, seed=5))
        first, u = est.uncertainty(he, seed=5)
        np.testing.assert_array_equal(first, preds[0])
        np.testing.assert_allclose(u, C.pixel_uncertainty(np.stack(preds)), atol=1e-5)
        assert u.mean() > 0
    with pytest.raises(Exception, match="no dropout"):
        C.resolve_method(gan, "dropout")
    # a pix2pix with dropout: auto adds dropout samples; the masks change the output, eval
    # mode (BatchNorm running statistics) is kept and restored
    cfg = PyramidPix2Pix.presets()["tiny"]
    cfg.use_dropout = True
    p2p = PyramidPix2Pix(cfg).eval()
    assert C.resolve_method(p2p) == "tta+dropout"
    buffers = {k: v.clone() for k, v in p2p.G.state_dict().items() if "running" in k}
    est = C.ConfidenceEstimator(p2p, C.ConfidenceSettings(method="dropout", samples=3))
    _, u = est.uncertainty(he, seed=0)
    assert u.mean() > 0
    assert all(not m.training for m in C.dropout_layers(p2p))
    for k, v in p2p.G.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k])
    np.testing.assert_array_equal(translate_batch(p2p, he), translate_batch(p2p, he))


# --------------------------------------------------------------------------- acceptance

#: The issue's acceptance, for one GAN and one diffusion model. Measured (CPU, these presets,
#: steps and K = 4): AUROC pix2pix (TTA) 0.918 here, 0.847 / 0.879 with training seeds 1 / 2;
#: BBDM (seeds) 0.842 here, 0.906 / 0.904 with seeds 1 / 2; Spearman >= 0.84 with both errors,
#: below random everywhere, for every seed. The GAN's AUROC depends on its training length
#: (200 or 400 steps: 0.50 to 0.85 over seeds; README "Confidence maps").
AUROC_MIN = 0.8
SPEARMAN_MIN = 0.4


@pytest.mark.parametrize("name", sorted(STEPS))
def test_artefact_tiles_have_lower_confidence(name, runs, artefact_case, clean_case):
    tiles, labels, kinds = artefact_tiles(artefact_case, clean_case)
    # every planted kind holds several tiles (the pen stroke only a few of its box's tiles)
    assert all((kinds == k).sum() >= 3 for k in KINDS)
    est = C.ConfidenceEstimator(load_run(runs[name]))
    u = mean_uncertainty(est, tiles)
    score = auroc(labels, u)
    per_kind = {k: round(auroc(labels[(kinds == k) | (labels == 0)],
                               u[(kinds == k) | (labels == 0)]), 2) for k in KINDS}
    print(f"{name} ({est.method}, K={est.samples}): AUROC artefact vs clean {score:.3f} "
          f"({labels.sum()} artefact, {(labels == 0).sum()} clean tiles), per kind {per_kind}")
    assert score >= AUROC_MIN


@pytest.mark.parametrize("name", sorted(STEPS))
def test_uncertainty_predicts_the_real_error(name, runs, data):
    from her2core.datasets.paired import open_paired, read_rgb

    pairs = open_paired(data, "test").pairs
    he = np.stack([read_rgb(a) for a, _, _ in pairs])
    ihc = np.stack([read_rgb(b) for _, b, _ in pairs])
    est = C.ConfidenceEstimator(load_run(runs[name]))
    pred, u = est.uncertainty(he, seed=0)
    summary, rows = calibrate(zip(map(str, range(len(he))), u, pred, ihc), n_tiles=len(he))
    sp = summary["sparsification"]
    rho = summary["spearman_uncertainty_vs_one_minus_ssim"]
    rho_dab = summary["spearman_uncertainty_vs_dab_od_mae"]
    print(f"{name}: Spearman 1-SSIM {rho:.3f}, DAB OD {rho_dab:.3f}, AUSE {sp['ause']:.4f}")
    assert rho >= SPEARMAN_MIN and rho_dab >= SPEARMAN_MIN
    assert sp["below_random_everywhere"]
    assert sp["ause"] >= 0 and sp["aurg"] > 0
    assert len(rows) == len(he)


def test_sparsification_oracle_random_and_a_useless_map():
    rng = np.random.default_rng(0)
    e = rng.random(10_000)
    perfect = sparsification(e, e)
    assert perfect["ause"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["below_random_everywhere"]
    useless = sparsification(rng.random(10_000), e)  # uncertainty unrelated to the error
    assert not useless["below_random_everywhere"] or useless["aurg"] < 0.01
    inverted = sparsification(-e, e)
    assert inverted["aurg"] < 0 and not inverted["below_random_everywhere"]


# --------------------------------------------------------------------------- outputs

def test_slide_confidence_pyramid_summaries_resume_and_qupath(runs, artefact_case, tmp_path):
    import tifffile

    from her2core.slide import open_slide

    rois = tmp_path / "rois.geojson"
    rois.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": name, "properties": {"objectType": "annotation", "name": name},
         "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 300, y], [x + 300, y + 200],
                                                          [x, y + 200], [x, y]]]}}
        for name, x, y in (("a", 200, 260), ("b", 700, 900))]}))
    out = tmp_path / "v.ome.tif"
    args = ["translate", "--run", str(runs["pyramid_pix2pix"]), "--slide",
            str(artefact_case / "he.ome.tif"), "--out", str(out), "--roi", str(rois),
            "--tile", "128", "--overlap", "32", "--confidence", "--confidence-samples", "2"]
    assert main(args) == 0
    conf = tmp_path / "v.confidence.ome.tif"
    with open_slide(out) as v, open_slide(conf) as c:
        assert c.dimensions == v.dimensions and c.level_count == v.level_count
        assert c.mpp == v.mpp == 0.5 and c.origin_xy == v.origin_xy == (200.0, 260.0)
        assert c.properties["kind"] == "confidence"
        assert c.properties["confidence"]["method"] == "tta"
        assert c.properties["confidence"]["samples"] == 2
        level0 = np.asarray(c.level_array(0)[:])
    with tifffile.TiffFile(conf) as t:
        assert t.is_ome and t.series[0].axes == "YX" and t.series[0].dtype == np.uint8
        assert t.series[0].shape == level0.shape == (v.dimensions[1], v.dimensions[0])
        assert "PhysicalSizeX=\"0.5\"" in t.ome_metadata
    assert level0.min() < 255 and (level0 == 255).any()  # tissue maps, outside the ROIs white
    summary = json.loads((tmp_path / "v.confidence_rois.json").read_text())
    assert [r["name"] for r in summary["rois"]] == ["a", "b"]
    for r in summary["rois"]:
        assert 0 < r["mean_confidence"] < 1 and r["tissue_pixels"] > 0
    from her2core.qupath.geojson import read_features

    feats = read_features(tmp_path / "v.confidence_rois.geojson")
    assert feats[0].measurements["her2 confidence mean"] == pytest.approx(
        summary["rois"][0]["mean_confidence"])
    # a rerun keeps both outputs unless --overwrite (exit 2 for the existing confidence map)
    assert main(args) == 2
    # without the map, a rerun keeps the finished virtual slide and makes the map again
    mtime = out.stat().st_mtime_ns
    conf.unlink()
    assert main(args) == 0 and out.stat().st_mtime_ns == mtime and conf.is_file()
    assert not list(tmp_path.glob(".*"))  # no carrier, journal or temporary files left

    proj = tmp_path / "proj"
    assert main(["qupath", "project", "--out", str(proj), "--image",
                 str(artefact_case / "he.ome.tif"), "--virtual", str(out),
                 "--confidence", str(conf)]) == 0
    entry = json.loads((proj / "project.qpproj").read_text())["images"][-1]
    assert entry["metadata"]["her2.role"] == "confidence"
    assert "std" in entry["metadata"]["her2.confidence.meaning"]
    inner = entry["serverBuilder"]["builder"]["metadata"]
    assert inner["isRGB"] is False and len(inner["channels"]) == 1
    t = entry["serverBuilder"]["transform"]
    assert (t["m02"], t["m12"]) == (200.0, 260.0)
    assert main(["qupath", "project", "--out", str(proj), "--image",
                 str(artefact_case / "he.ome.tif"), "--confidence", str(out)]) == 2


def test_tiles_confidence_then_evaluate_and_report(runs, data, tmp_path):
    from her2core.datasets.paired import open_paired

    pairs = open_paired(data, "test").pairs[:8]
    he_dir, ihc_dir = tmp_path / "he", tmp_path / "ihc"
    he_dir.mkdir()
    ihc_dir.mkdir()
    for a, b, _ in pairs:
        (he_dir / a.name).symlink_to(a)
        (ihc_dir / a.name).symlink_to(b)
    out = tmp_path / "virtual"
    assert main(["translate", "--run", str(runs["bbdm"]), "--tiles", str(he_dir),
                 "--out", str(out), "--confidence", "--confidence-samples", "3"]) == 0
    maps = sorted((out / "confidence").glob("*.png"))
    assert [m.name for m in maps] == sorted(a.with_suffix(".png").name for a, _, _ in pairs)
    rows = (out / "confidence.csv").read_text().splitlines()
    assert rows[0] == "image,mean_confidence,low_fraction" and len(rows) == 9
    assert json.loads((out / "confidence.json").read_text())["method"] == "seeds"
    ev = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(out), "--target", str(ihc_dir), "--out", str(ev),
                 "--no-fid", "--quiet", "--confidence"]) == 0
    cal = json.loads((ev / "calibration.json").read_text())
    assert cal["n_tiles"] == 8 and cal["confidence"]["samples"] == 3
    assert (ev / cal["figure"]).stat().st_size > 1000
    assert main(["report", str(ev), "--out", str(ev / "report.html")]) == 0
    assert "Confidence calibration" in (ev / "report.html").read_text()


def test_a_cancelled_confidence_slide_resumes_to_the_same_bytes(runs, artefact_case, tmp_path):
    from her2core.inference.confidence import ConfidenceSettings
    from her2core.inference.confidence_out import translate_slide_confidence
    from her2core.inference.options import InferenceOptions
    from her2core.util.progress import Progress

    kw = {"options": InferenceOptions(tile=128, overlap=32),
          "settings": ConfidenceSettings(samples=2), "region": (256, 256, 640, 512)}
    he = artefact_case / "he.ome.tif"
    whole = translate_slide_confidence(runs["pyramid_pix2pix"], he, tmp_path / "a" / "v.ome.tif",
                                       **kw)

    class Stop(Exception):
        pass

    def stop_after(stage, done, total):
        if done >= 12:
            raise Stop

    with pytest.raises(Stop):
        translate_slide_confidence(runs["pyramid_pix2pix"], he, tmp_path / "b" / "v.ome.tif",
                                   progress=Progress(stop_after), **kw)
    assert not (tmp_path / "b" / "v.confidence.ome.tif").exists()
    assert list((tmp_path / "b").glob(".*.work"))  # the journal of the carrier image
    again = translate_slide_confidence(runs["pyramid_pix2pix"], he, tmp_path / "b" / "v.ome.tif",
                                       **kw)
    assert again.read_bytes() == whole.read_bytes()
    assert not list((tmp_path / "b").glob(".*"))
