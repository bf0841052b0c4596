"""The three widgets driven end to end on sample data, under Xvfb with napari's make_napari_viewer:
register and review a synthetic slide pair, draw an ROI, run a tiny trained model on it, compare
virtual against real HER2, export the ROIs as GeoJSON; and a canvas screenshot shows HER2 brown
inside the ROI and H&E outside it."""

import json

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_her2stain import _jobs
from napari_her2stain import _layers as L

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _inline_jobs():
    _jobs.set_threaded(False)  # deterministic: jobs run in the test's thread
    yield
    _jobs.set_threaded(None)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A `her2 sample` case: 1024² same-section H&E / HER2 pair at 0.5 µm/px, HER2 score 3."""
    from her2core.sample import synthetic_case

    return synthetic_case(tmp_path_factory.mktemp("sample") / "case00", "case00", her2_score=3,
                          size=1024, mpp=0.5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """pyramid_pix2pix, tiny preset, trained for a few steps on score-3 synthetic tiles."""
    from her2core.sample import write_tile_dataset
    from her2core.training import TrainConfig, train

    root = tmp_path_factory.mktemp("train")
    data = write_tile_dataset(root / "data", cases=3, tile=64, tiles_per_case=4, seed=0, scores=(3,))
    return train("pyramid_pix2pix", data, root / "run", preset="tiny",
                 train_config=TrainConfig(max_steps=30, batch_size=4, device="cpu"))


@pytest.fixture(scope="module")
def registered(case, tmp_path_factory):
    """The case registered through the registration widget's own job (no viewer needed)."""
    from her2core.registration import RegistrationConfig, register

    out = tmp_path_factory.mktemp("reg")
    register(case / "he.ome.tif", case / "her2.ome.tif", out,
             config=RegistrationConfig(review_region=256))
    return out


def _dab_mean(rgb):
    from her2core.stain import dab_od

    return float(dab_od(rgb[..., :3]).mean())


# --------------------------------------------------------------------------- registration
def test_registration_widget_runs_reviews_and_accepts(make_napari_viewer, case, tmp_path):
    from her2core.registration.decision import DECISION_FILE
    from napari_her2stain._registration_widget import RegistrationWidget

    viewer = make_napari_viewer()
    w = RegistrationWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.he_file.value = case / "he.ome.tif"
    w.her2_file.value = case / "her2.ome.tif"
    w.out_dir.value = tmp_path / "reg"
    w.region_px.value = 256
    w.run_registration()
    assert "error" not in w.status.value, w.status.value
    assert (tmp_path / "reg" / "transform.json").exists()
    # layers: H&E, registered HER2 at the slider's opacity, residual map, on one pixel grid
    he, her2 = L.first_with_role(viewer, "he"), L.first_with_role(viewer, "her2")
    assert her2.name == "HER2 (registered)" and her2.opacity == pytest.approx(0.5)
    assert he.data[0].shape == her2.data[0].shape
    np.testing.assert_allclose(he.scale, her2.scale)
    w.opacity.value = 0.8
    assert her2.opacity == pytest.approx(0.8)
    review = w.review
    assert review["summary"]["regions"] >= 8
    # same-section pair: the registration is good, residuals small
    assert review["summary"]["median_shift_um"] < 2.0
    residual = L.first_with_role(viewer, "residual")
    assert residual is not None
    # one residual cell per 256-px region, each cell 128 µm wide
    assert residual.data.shape[:2] == (4, 4)
    np.testing.assert_allclose(residual.scale, [128.0, 128.0])
    reviewed = residual.data[..., 3] > 0
    assert reviewed.sum() == review["summary"]["regions"]
    # small shifts are green (G > R) in the colour code
    cells = residual.data[reviewed]
    assert (cells[:, 1] > cells[:, 0]).all()

    # checkerboard: alternating squares of H&E and registered HER2, lazily composed
    w.square_um.value = 64  # 128 px squares
    w.checker.value = True
    board = L.first_with_role(viewer, "checkerboard")
    assert board is not None and not her2.visible
    full = np.asarray(board.data[0][:256, :256])
    he0 = np.asarray(he.data[0][:256, :256])
    her20 = np.asarray(her2.data[0][:256, :256])
    np.testing.assert_array_equal(full[:128, :128], he0[:128, :128])
    np.testing.assert_array_equal(full[:128, 128:], her20[:128, 128:])
    np.testing.assert_array_equal(full[128:, :128], her20[128:, :128])
    w.checker.value = False
    assert L.first_with_role(viewer, "checkerboard") is None and her2.visible

    w.note.value = "looks right"
    path = w.accept()
    decision = json.loads(path.read_text())
    assert path.name == DECISION_FILE and decision["accepted"] and decision["note"] == "looks right"
    assert decision["regions"] == review["summary"]["regions"]


def test_flagged_region_list_centres_the_view(make_napari_viewer, registered, tmp_path):
    import shutil

    from napari_her2stain._registration_widget import RegistrationWidget

    folder = tmp_path / "reg"
    shutil.copytree(registered, folder)
    review = json.loads((folder / "review.json").read_text())
    # flag one region the way review() does when a region moved too far
    target = review["regions"][-1]
    target.update(flagged=True, reasons=["shift 9.0 µm > 5"], shift_um=9.0)
    review["summary"]["flagged"] = 1
    (folder / "review.json").write_text(json.dumps(review))

    viewer = make_napari_viewer()
    w = RegistrationWidget(viewer)
    w.load(folder)
    assert len(w.flagged.choices) == 1
    flagged_layer = L.first_with_role(viewer, "flagged")
    assert len(flagged_layer.data) == 1
    # the flagged cell is red in the residual map
    res = L.first_with_role(viewer, "residual").data
    cell = res[target["y"] // 256, target["x"] // 256]
    assert cell[0] > 150 and cell[1] < 100
    w.flagged.value = w.flagged.choices[0]
    he = L.first_with_role(viewer, "he")
    centre = np.asarray(viewer.camera.center[-2:])
    expect = (np.array([target["y"] + target["h"] / 2, target["x"] + target["w"] / 2])
              * he.scale[-2:] + he.translate[-2:])
    np.testing.assert_allclose(centre, expect, atol=1.0)


# --------------------------------------------------------------------------- model + compare + export
def _viewer_with_case(make_napari_viewer, registered, **kw):
    from napari_her2stain._registration_widget import RegistrationWidget

    viewer = make_napari_viewer(**kw)
    reg = RegistrationWidget(viewer)
    reg.load(registered)
    reg.residuals.value = False
    return viewer


def _run_model_on_roi(viewer, tiny_run, tmp_path, box_rc=((300, 340), (620, 700))):
    from napari_her2stain._model_widget import ModelWidget

    mw = ModelWidget(viewer)
    viewer.window.add_dock_widget(mw)
    rois = mw.new_roi_layer()
    assert L.role_of(rois) == "rois"
    rois.add_rectangles(np.array(box_rc, float))
    rois.features.loc[0, "name"] = "tumour"
    mw.run_dir.value = tiny_run
    assert mw.model_info.value.startswith("pyramid_pix2pix")
    assert not mw.steps.enabled  # a GAN: no sampling steps
    mw.out_dir.value = tmp_path / "virtual"
    mw.run()
    assert mw.status.value.startswith("done"), mw.status.value
    return mw, rois


def test_model_widget_puts_virtual_her2_in_the_roi(make_napari_viewer, registered, tiny_run, tmp_path):
    viewer = _viewer_with_case(make_napari_viewer, registered)
    mw, rois = _run_model_on_roi(viewer, tiny_run, tmp_path)
    (virtual,) = L.layers_with_role(viewer, "virtual")
    he = L.first_with_role(viewer, "he")
    assert (tmp_path / "virtual" / "virtual_her2_tumour_0.ome.tif").exists()
    assert mw.progress.value == mw.progress.max
    # at the ROI's place and scale: same world box as the rectangle
    (y0, x0), (y1, x1) = (300, 340), (620, 700)
    np.testing.assert_allclose(virtual.scale, he.scale)
    v0 = np.asarray(L.level0(virtual))
    assert v0.shape == (y1 - y0, x1 - x0, 4)
    np.testing.assert_allclose(virtual.translate, np.array([y0, x0]) * he.scale + he.translate)
    assert (v0[..., 3] == 255).mean() > 0.5  # opaque where the model painted tissue
    # the model trained (briefly) on HER2 3+ tiles paints brown (DAB) where the H&E has none
    he_roi = np.asarray(he.data[0][y0:y1, x0:x1])
    assert _dab_mean(v0) > 4 * _dab_mean(he_roi) and _dab_mean(v0) > 0.015

    # compare against the real (registered) HER2 in the ROI
    from her2core.evaluation import pathology, pixel
    from napari_her2stain._compare_widget import CompareWidget

    cw = CompareWidget(viewer)
    viewer.window.add_dock_widget(cw)
    assert cw.virtual_combo.value is virtual
    metrics = cw.compare()
    real = np.asarray(L.first_with_role(viewer, "her2").data[0][y0:y1, x0:x1])
    vrgb = np.ascontiguousarray(v0[..., :3])
    assert metrics["SSIM"] == pytest.approx(pixel.ssim(vrgb, real), abs=1e-6)
    assert metrics["PSNR (dB)"] == pytest.approx(pixel.psnr(vrgb, real), abs=1e-4)
    expected = pathology.dab_metrics(vrgb, real, 0.5)
    assert metrics["her2_proxy_real"] == expected["her2_proxy_real"]
    assert metrics["dab_od_mae"] == pytest.approx(expected["dab_od_mae"])
    # the same columns as `her2 evaluate` (evaluation.tile_metrics), under their display names
    assert list(cw.table.row_headers)[:4] == ["PSNR (dB)", "SSIM", "SSIM (Gaussian)", "MS-SSIM"]
    assert float(cw.table.data.to_list()[1][0]) == pytest.approx(metrics['SSIM'], abs=1e-3)
    diff = L.first_with_role(viewer, "dab_diff")
    assert diff.data.shape == v0.shape[:2]
    np.testing.assert_allclose(diff.translate, virtual.translate)
    from her2core.stain import dab_od

    np.testing.assert_allclose(diff.data, dab_od(vrgb) - dab_od(real), atol=1e-5)
    cw.mode.value = "side by side"
    side = L.first_with_role(viewer, "compare_view")
    assert side.translate[1] > virtual.translate[1] + v0.shape[1] * 0.5
    np.testing.assert_array_equal(side.data[..., :3], real)
    cw.mode.value = "checkerboard"
    board = L.first_with_role(viewer, "compare_view")
    np.testing.assert_array_equal(board.data[:64, :64, :3], vrgb[:64, :64])
    np.testing.assert_array_equal(board.data[:64, 64:128, :3], real[:64, 64:128])

    # export the ROI to QuPath GeoJSON: (x, y) level-0 pixels, name kept
    from her2core.qupath.geojson import read_features

    out = tmp_path / "rois.geojson"
    rois.save(str(out), plugin="napari-her2stain")
    (feat,) = read_features(out)
    assert feat.name == "tumour"
    assert feat.geometry.bounds == (x0, y0, x1, y1)


def test_cancel_stops_a_threaded_run(make_napari_viewer, registered, tiny_run, tmp_path, qtbot):
    viewer = _viewer_with_case(make_napari_viewer, registered)
    from napari_her2stain._model_widget import ModelWidget

    mw = ModelWidget(viewer)
    rois = mw.new_roi_layer()
    rois.add_rectangles(np.array([[0, 0], [1024, 1024]], float))
    mw.run_dir.value = tiny_run
    mw.tile.value = 64
    mw.out_dir.value = tmp_path / "virtual"
    _jobs.set_threaded(True)
    try:
        seen = []
        job = mw.run()
        # reports reach the GUI thread through the job's listeners; the first one cancels
        job.listeners.append(lambda stage, done, total: (seen.append((done, total)), job.cancel()))
        qtbot.waitUntil(lambda: not job.running, timeout=120_000)
    finally:
        _jobs.set_threaded(False)
    assert job.cancelled and seen
    assert seen[0][1] > 1 and seen[-1][0] < seen[0][1]  # stopped before the end
    assert L.layers_with_role(viewer, "virtual") == []
    assert not list((tmp_path / "virtual").glob("*.ome.tif"))
    assert mw.run_btn.enabled and not mw.cancel_btn.enabled


def test_screenshot_shows_brown_inside_roi_only(make_napari_viewer, registered, tiny_run, tmp_path):
    """Rendered canvas: DAB (brown) inside the ROI, H&E colours around it."""
    from her2core.stain import dab_od

    viewer = _viewer_with_case(make_napari_viewer, registered, show=True)
    L.first_with_role(viewer, "her2").visible = False  # only H&E + virtual remain
    box = ((256, 256), (768, 768))
    _mw, rois = _run_model_on_roi(viewer, tiny_run, tmp_path, box_rc=box)
    rois.visible = False
    he = L.first_with_role(viewer, "he")
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    h, w = shot.shape[:2]
    zoom = viewer.camera.zoom
    centre = np.asarray(viewer.camera.center[-2:])

    def to_canvas(rc_px):
        world = np.asarray(rc_px, float) * he.scale[-2:] + he.translate[-2:]
        return ((world - centre) * zoom + np.array([h, w]) / 2).astype(int)

    (r0, c0), (r1, c1) = to_canvas(box[0]), to_canvas(box[1])
    pad = max(4, (r1 - r0) // 10)
    inside = shot[r0 + pad:r1 - pad, c0 + pad:c1 - pad]
    (t0, l0), (t1, l1) = to_canvas((64, 64)), to_canvas((960, 960))
    ring = np.zeros(shot.shape[:2], bool)
    ring[t0:t1, l0:l1] = True
    ring[r0 - pad:r1 + pad, c0 - pad:c1 + pad] = False
    outside = shot[ring]
    dab_in = float(dab_od(inside).mean())
    dab_out = float(dab_od(outside).mean())
    assert inside.size and outside.size
    assert dab_in > 4 * dab_out and dab_in - dab_out > 0.015, (dab_in, dab_out)
