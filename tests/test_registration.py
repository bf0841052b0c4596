"""Registration recovers known transforms; review flags bad regions; bad input gives one clear error."""

import json

import numpy as np
import pytest
import tifffile
from test_registration_data import registered_same, sample_dir

from her2core.errors import UserError
from her2core.registration import (
    RegistrationConfig,
    Transform,
    load_transform,
    map_features,
    register,
    review,
)
from her2core.sample.truth import he_to_her2_xy, load_truth
from her2core.slide import open_slide, write_pyramid
from her2core.slide.tissue import detect_tissue


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def tissue_points(he_path, step=64):
    with open_slide(he_path) as s:
        tm = detect_tissue(s)
        w, h = s.dimensions
    gx, gy = np.meshgrid(np.arange(64, w - 64, step), np.arange(64, h - 64, step))
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(float)
    return pts[tm.contains_xy(pts)]


def errors_um(case_dir, transform):
    """Distance (µm) between our H&E->HER2 mapping and the rendered truth at tissue points."""
    truth = load_truth(case_dir / "truth.json")
    pts = tissue_points(case_dir / "he.ome.tif")
    assert len(pts) > 200
    # truth uses pixel-corner coordinates (centre = +0.5), ours pixel-centre integers
    ref = he_to_her2_xy(truth, pts + 0.5) - 0.5
    return np.linalg.norm(ref - transform.he_to_her2(pts), axis=1) * truth["mpp"]


# ----------------------------------------------------------------------------- fast


def test_transform_file_roundtrip_and_inverse(tmp_path):
    rng = np.random.default_rng(0)
    m = np.array([[0.99, -0.05, 30.0], [0.05, 0.99, -12.0], [0, 0, 1]])
    field = rng.normal(0, 3, (2, 6, 7)).astype(np.float32)
    t = Transform(matrix=m, he_mpp=0.25, her2_mpp=0.5, he_size=(1500, 1200), her2_size=(700, 600),
                  field=field, field_origin_xy=(0.0, 0.0), field_spacing=256.0)
    t.save(tmp_path / "transform.json")
    d = json.loads((tmp_path / "transform.json").read_text())
    assert d["field"]["path"] == "transform_field.npy" and d["her2"]["mpp"] == 0.5
    t2 = load_transform(tmp_path)
    pts = rng.uniform(0, 1200, (50, 2))
    np.testing.assert_allclose(t2.he_to_her2(pts), t.he_to_her2(pts))
    np.testing.assert_allclose(t2.he_to_her2(t2.her2_to_he(pts)), pts, atol=1e-6)
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    with pytest.raises(UserError, match="not a her2core transform"):
        load_transform(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not found"):
        load_transform(tmp_path / "missing.json")


def test_plausibility_warnings_for_shear_scale_and_folding():
    ok = Transform(matrix=np.eye(3), he_mpp=0.25, her2_mpp=0.25)
    assert ok.plausibility_warnings() == []
    shear = Transform(matrix=[[1, 0.4, 0], [0, 1, 0], [0, 0, 1]], he_mpp=0.25, her2_mpp=0.25)
    assert any("shear" in w for w in shear.plausibility_warnings())
    # a 2x scale is plausible only if the mpp says so
    assert any("scale" in w for w in Transform(matrix=np.diag([2, 2, 1.0]), he_mpp=0.25,
                                               her2_mpp=0.25).plausibility_warnings())
    assert Transform(matrix=np.diag([2, 2, 1.0]), he_mpp=0.25, her2_mpp=0.5).plausibility_warnings() == []
    fold = np.zeros((2, 5, 5), np.float32)
    fold[0, :, 3] = -300.0  # node 3 jumps left past node 2: the field folds
    t = Transform(matrix=np.eye(3), he_mpp=0.25, her2_mpp=0.25, field=fold, field_spacing=100.0)
    assert any("folds" in w for w in t.plausibility_warnings())


def test_map_features_follows_points():
    from shapely.geometry import Polygon

    from her2core.qupath.geojson import Feature

    t = Transform(matrix=[[1, 0, 10], [0, 1, -5], [0, 0, 1]], he_mpp=0.25, her2_mpp=0.25)
    f = Feature(geometry=Polygon([(0, 0), (100, 0), (100, 50), (0, 50)]), name="roi")
    out = map_features([f], t)[0]
    assert out.name == "roi"
    assert out.geometry.bounds == pytest.approx((10, -5, 110, 45))


def test_slide_without_mpp_is_refused(tmp_path):
    from her2core.cli import main

    img = np.full((300, 300, 3), 255, np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img, photometric="rgb")
    tifffile.imwrite(tmp_path / "b.tif", img, photometric="rgb")
    with pytest.raises(UserError, match="microns per pixel"):
        register(tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "out")
    assert main(["register", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--out",
                 str(tmp_path / "out")]) == 2


# ----------------------------------------------------------------------------- on embedded cases


@pytest.mark.slow
def test_rotated_rescaled_pair_at_other_mpp(base, tmp_path):
    """A HER2 slide turned by 90° + 7°, shifted, and scanned at 0.5 µm/px is still recovered (affine)."""
    from skimage.transform import AffineTransform, warp

    case = sample_dir(base) / "case00_same"
    with open_slide(case / "he.ome.tif") as s:
        he = s.read_level(2)  # 1 µm/px, 512 px
    write_pyramid(tmp_path / "he.ome.tif", he, mpp=1.0)
    # HER2 frame at 2 µm/px: her2 pixel q -> H&E pixel p = A q
    theta = np.radians(97.0)
    a = AffineTransform(rotation=theta, scale=2.0, translation=(590, -5))  # HER2 frame covers the tissue
    her2 = warp(he, a, output_shape=(300, 300), order=1, cval=255, preserve_range=True).astype(np.uint8)
    write_pyramid(tmp_path / "her2.ome.tif", her2, mpp=2.0)
    cfg = RegistrationConfig(field_passes=(), dense=False, affine_min_mpp=2.0, coarse_size=128)
    res = register(tmp_path / "he.ome.tif", tmp_path / "her2.ome.tif", tmp_path / "reg", config=cfg,
                   write_image=False, run_review=False)
    q = np.array([[100.0, 100.0], [150.0, 200.0], [200.0, 120.0]])
    p_true = a(q)  # skimage: integer = pixel centre, like ours
    err = np.linalg.norm(res.transform.her2_to_he(q) - p_true, axis=1)  # H&E px = µm here
    assert err.max() < 3.0, err
    assert res.warnings == []


@pytest.mark.slow
def test_same_section_registration_recovers_truth(base):
    case, reg = registered_same(base)
    t = load_transform(reg / "transform.json")
    err = errors_um(case, t)
    assert np.median(err) <= 2.0 and np.percentile(err, 90) <= 5.0, (np.median(err), np.percentile(err, 90))
    d = json.loads((reg / "transform.json").read_text())
    assert d["he"]["mpp"] == 0.25 and d["her2"]["mpp"] == 0.25 and d["field"]["spacing_px"] > 0
    with open_slide(reg / "her2_registered.ome.tif") as r, open_slide(case / "he.ome.tif") as he:
        assert r.dimensions == he.dimensions and r.mpp == pytest.approx(he.mpp) and r.level_count > 1
    rv = json.loads((reg / "review.json").read_text())
    assert rv["summary"]["regions"] >= 2 and rv["summary"]["median_shift_um"] < 2.0
    assert rv["summary"]["flagged"] == 0 and rv["warnings"] == []
    for name in rv["previews"].values():
        assert (reg / name).stat().st_size > 1000
    assert "Registration review" in (reg / "review.html").read_text()


@pytest.mark.slow
def test_consecutive_section_registration_aligns_tissue(base, tmp_path):
    case = sample_dir(base) / "case00_consecutive"
    res = register(case / "he.ome.tif", case / "her2.ome.tif", tmp_path / "reg", write_image=False,
                   run_review=False)
    err = errors_um(case, res.transform)
    assert np.median(err) <= 20.0, np.median(err)
    # and it is a real improvement over the untouched slide (the truth moves it by tens of µm)
    ident = Transform(matrix=np.eye(3), he_mpp=0.25, her2_mpp=0.25)
    assert np.median(err) < 0.5 * np.median(errors_um(case, ident))


@pytest.mark.slow
def test_review_flags_regions_with_a_bad_transform(base, tmp_path):
    case, reg = registered_same(base)
    with open_slide(reg / "her2_registered.ome.tif") as r:
        img = r.read_level(0)
    good = review(case / "he.ome.tif", reg / "her2_registered.ome.tif", tmp_path / "good", region=1024)
    assert good["summary"]["flagged"] == 0 and good["summary"]["regions"] >= 3
    # a bad local transform in one well-matched 1024-px region: content shifted by ~29 µm
    target = max(good["regions"], key=lambda r: r["patches_matched"])
    x0, y0 = target["x"], target["y"]
    bad = img.copy()
    bad[y0:y0 + 1024, x0:x0 + 1024] = np.roll(img, (60, 100), axis=(0, 1))[y0:y0 + 1024, x0:x0 + 1024]
    write_pyramid(tmp_path / "bad.ome.tif", bad, mpp=0.25)
    rv = review(case / "he.ome.tif", tmp_path / "bad.ome.tif", tmp_path / "rev", region=1024)
    flagged = {(r["x"], r["y"]) for r in rv["regions"] if r["flagged"]}
    assert flagged == {(x0, y0)}
    row = next(r for r in rv["regions"] if (r["x"], r["y"]) == (x0, y0))
    assert row["shift_um"] == pytest.approx(np.hypot(15, 25), abs=1.0)
    assert (row["dx_um"], row["dy_um"]) == pytest.approx((25.0, 15.0), abs=1.0)


def test_cancel_through_progress_stops_at_a_stage_and_writes_no_transform(base, tmp_path):
    from her2core.util.progress import Cancelled, Progress

    case = sample_dir(base) / "case00_same"
    seen = []

    def listen(stage, done, total):
        seen.append((stage, done, total))
        if stage == "affine":
            progress.stop()

    progress = Progress(listen)
    with pytest.raises(Cancelled, match="affine"):
        register(case / "he.ome.tif", case / "her2.ome.tif", tmp_path / "reg", progress=progress)
    assert [s for s, _, _ in seen] == ["coarse", "coarse", "affine"] and seen[-1][1] == 1
    assert not (tmp_path / "reg" / "transform.json").exists()


def test_failed_registration_is_one_clear_error(base, tmp_path):
    case = sample_dir(base) / "case00_same"
    with open_slide(case / "he.ome.tif") as s:
        he = s.read_level(2)
    write_pyramid(tmp_path / "he.ome.tif", he, mpp=1.0)
    rng = np.random.default_rng(0)
    noise = np.full((512, 512, 3), 250, np.uint8)
    noise[rng.random((512, 512)) < 0.01] = (60, 40, 120)  # scattered specks, no tissue structure
    write_pyramid(tmp_path / "her2.ome.tif", noise, mpp=1.0)
    with pytest.raises(UserError, match="registration failed"):
        register(tmp_path / "he.ome.tif", tmp_path / "her2.ome.tif", tmp_path / "reg", write_image=False)
