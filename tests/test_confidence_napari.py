"""The confidence map in napari: the model widget writes it beside the ROI's virtual HER2 and
shows it over it (same grid, a colormap and contrast limits with a stated meaning); the compare
widget reports its mean in the ROI."""

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_her2stain import _jobs
from napari_her2stain import _layers as L

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _inline_jobs():
    _jobs.set_threaded(False)
    yield
    _jobs.set_threaded(None)


@pytest.fixture(scope="module")
def case_and_run(tmp_path_factory):
    from her2core.sample import synthetic_case, write_tile_dataset
    from her2core.training import TrainConfig, train

    root = tmp_path_factory.mktemp("conf_napari")
    case = synthetic_case(root / "case00", "case00", her2_score=3, size=512, mpp=0.5)
    data = write_tile_dataset(root / "data", cases=3, tile=64, tiles_per_case=4, seed=0, scores=(3,))
    run = train("pyramid_pix2pix", data, root / "run", preset="tiny",
                train_config=TrainConfig(max_steps=30, batch_size=4, device="cpu"))
    return case, run


def test_model_widget_shows_confidence_over_the_virtual_and_compare_reports_it(
        make_napari_viewer, case_and_run, tmp_path):
    from her2core.slide import open_slide
    from napari_her2stain._compare_widget import CompareWidget
    from napari_her2stain._confidence import CONTRAST_LIMITS
    from napari_her2stain._model_widget import ModelWidget

    case, run = case_and_run
    viewer = make_napari_viewer()
    viewer.open(str(case / "he.ome.tif"), plugin="napari-her2stain")
    viewer.open(str(case / "her2.ome.tif"), plugin="napari-her2stain")
    mw = ModelWidget(viewer)
    rois = mw.new_roi_layer()
    rois.add_rectangles(np.array([[100, 120], [300, 360]], float))
    mw.run_dir.value = run
    mw.tile.value = 128
    mw.confidence.value = True
    mw.out_dir.value = tmp_path
    mw.run()
    assert mw.status.value.startswith("done"), mw.status.value
    (virtual,) = L.layers_with_role(viewer, L.ROLE_VIRTUAL)
    (conf,) = L.layers_with_role(viewer, L.ROLE_CONFIDENCE)
    assert conf is mw.confidence_layers[0]
    path = L.info(conf)["path"]
    assert path.endswith(".confidence.ome.tif")
    # one channel on the virtual layer's grid: same shape, scale and place in the world
    c0 = np.asarray(L.level0(conf))
    assert c0.ndim == 2 and c0.shape == L.layer_shape_rc(virtual)
    np.testing.assert_allclose(conf.scale, virtual.scale)
    np.testing.assert_allclose(conf.translate, virtual.translate)
    assert conf.colormap.name == "inferno" and tuple(conf.contrast_limits) == CONTRAST_LIMITS
    assert "std" in L.info(conf)["meaning"]
    with open_slide(path) as s:
        np.testing.assert_array_equal(c0, np.asarray(s.level_array(0)[:]))
    assert c0.min() < 255

    cw = CompareWidget(viewer)
    cw.virtual_combo.value = virtual
    metrics = cw.compare()
    from napari_her2stain._compare_widget import virtual_rgb_and_mask

    _, mask = virtual_rgb_and_mask(virtual)
    assert metrics["mean confidence"] == pytest.approx(c0[mask].mean() / 255.0)
    assert len(L.layers_with_role(viewer, L.ROLE_CONFIDENCE)) == 1  # not added twice
