"""Screenshots of the napari plugin's widgets on the sample data, for the README.

    xvfb-run -a .venv/bin/python scripts/screenshots.py [--run RUN_DIR] [--out docs/images]

Writes registration.png, model.png and compare.png (full-window screenshots).
Without --run it trains a tiny pyramid_pix2pix for a few steps on sample tiles first.
Everything is computed by her2core; this script only drives the widgets.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path


def _prefer_qt6() -> None:
    """Run on Qt 6 (napari 0.9 deprecates PyQt5 and says so in every window) when it is
    installed, even beside PyQt5; an explicit QT_API wins."""
    for api, module in (("pyqt6", "PyQt6"), ("pyside6", "PySide6")):
        if "QT_API" not in os.environ and importlib.util.find_spec(module) is not None:
            os.environ["QT_API"] = api


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a `her2 train` run folder (default: train a tiny one)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    ap.add_argument("--steps", type=int, default=60, help="training steps of the tiny model")
    args = ap.parse_args(argv)

    _prefer_qt6()
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from her2core.sample import synthetic_case, write_tile_dataset
    from napari_her2stain import _jobs
    from napari_her2stain import _layers as L
    from napari_her2stain._compare_widget import CompareWidget
    from napari_her2stain._model_widget import ModelWidget
    from napari_her2stain._registration_widget import RegistrationWidget

    _jobs.set_threaded(False)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="her2-shots-"))
    case = synthetic_case(work / "case00", "case00", her2_score=3, size=1024, mpp=0.5)
    run = args.run
    if run is None:
        from her2core.training import TrainConfig, train

        data = write_tile_dataset(work / "tiles", cases=3, tile=64, tiles_per_case=6, scores=(3,))
        run = train("pyramid_pix2pix", data, work / "run", preset="tiny",
                    train_config=TrainConfig(max_steps=args.steps, batch_size=4))

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)

    def shot(name):
        for _ in range(5):
            QApplication.processEvents()
        viewer.screenshot(str(args.out / name), canvas_only=False, flash=False)
        print("wrote", args.out / name)

    reg = RegistrationWidget(viewer)
    viewer.window.add_dock_widget(reg, name="Registration review")
    reg.he_file.value = case / "he.ome.tif"
    reg.her2_file.value = case / "her2.ome.tif"
    reg.out_dir.value = work / "reg"
    reg.region_px.value = 256
    reg.run_registration()
    reg.square_um.value = 64
    reg.checker.value = True
    viewer.reset_view()
    shot("registration.png")
    reg.checker.value = False
    reg.residuals.value = False

    mw = ModelWidget(viewer)
    viewer.window.add_dock_widget(mw, name="ROIs and model")
    rois = mw.new_roi_layer()
    rois.add_rectangles(np.array([[300, 300], [700, 760]], float))
    rois.features.loc[0, "name"] = "tumour"
    rois.mode = "pan_zoom"
    mw.run_dir.value = run
    mw.out_dir.value = work / "virtual"
    mw.run()
    L.first_with_role(viewer, "her2").visible = False
    viewer.reset_view()
    shot("model.png")

    cw = CompareWidget(viewer)
    viewer.window.add_dock_widget(cw, name="Compare")
    cw.compare()
    cw.mode.value = "side by side"
    L.first_with_role(viewer, "dab_diff").visible = False
    viewer.reset_view()
    shot("compare.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
