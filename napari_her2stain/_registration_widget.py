"""Registration review: run or load a registration, look at it, accept it.

Runs `her2core.registration.register` (transform.json, her2_registered.ome.tif,
review.json) in a background job, or loads such a folder; shows the registered
HER2 over the H&E with an opacity slider or as a checkerboard, the per-region
residual shift as a colour-coded overlay with the flagged regions outlined,
and lists the flagged regions (a click centres the view there). "Accept and
save" records the decision in `review_decision.json` next to the review.
"""

from __future__ import annotations

import json
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)

from napari_her2stain import _jobs, _overlays
from napari_her2stain import _layers as L
from napari_her2stain._reader import read_folder


class RegistrationWidget(Container):
    """Dock widget: register / load, overlay or checkerboard, residuals, flagged list, accept."""

    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821
        super().__init__(labels=True)
        self.viewer = viewer
        self.folder: Path | None = None
        self.review: dict | None = None
        self.job = None
        # run
        self.he_file = FileEdit(label="H&E slide", mode="r")
        self.her2_file = FileEdit(label="HER2 slide", mode="r")
        self.out_dir = FileEdit(label="output folder", mode="d")
        self.region_px = SpinBox(label="review region (px)", min=64, max=16384, value=1024, step=64)
        self.run_btn = PushButton(text="Register")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        # load
        self.load_dir = FileEdit(label="registration folder", mode="d")
        self.load_btn = PushButton(text="Load registration")
        # view
        self.opacity = FloatSlider(label="HER2 opacity", min=0.0, max=1.0, value=0.5, step=0.05)
        self.checker = CheckBox(text="checkerboard", value=False)
        self.square_um = SpinBox(label="square (µm)", min=10, max=100000, value=200, step=10)
        self.residuals = CheckBox(text="residual shift overlay", value=True)
        self.flagged = Select(label="flagged regions", choices=[], allow_multiple=False)
        self.summary = Label(label="review", value="no registration loaded")
        self.note = LineEdit(label="note")
        self.accept_btn = PushButton(text="Accept and save", enabled=False)
        self.status = Label(label="status", value="")
        self.extend([self.he_file, self.her2_file, self.out_dir, self.region_px, self.run_btn, self.cancel_btn,
                     self.progress, self.load_dir, self.load_btn, self.opacity, self.checker,
                     self.square_um, self.residuals, self.summary, self.flagged, self.note,
                     self.accept_btn, self.status])
        self.run_btn.changed.connect(self.run_registration)
        self.cancel_btn.changed.connect(self.cancel)
        self.load_btn.changed.connect(lambda: self.load(self.load_dir.value))
        self.opacity.changed.connect(self._apply_opacity)
        self.checker.changed.connect(self._apply_checkerboard)
        self.square_um.changed.connect(self._apply_checkerboard)
        self.residuals.changed.connect(self._apply_residuals)
        self.flagged.changed.connect(self._centre_on_selection)
        self.accept_btn.changed.connect(self.accept)

    # -- layers ---------------------------------------------------------------
    @property
    def he_layer(self):
        return L.first_with_role(self.viewer, L.ROLE_HE)

    @property
    def her2_layer(self):
        return L.first_with_role(self.viewer, L.ROLE_HER2)

    def _apply_opacity(self, *_):
        if self.her2_layer is not None:
            self.her2_layer.opacity = float(self.opacity.value)

    def _remove_role(self, role: str):
        for ly in L.layers_with_role(self.viewer, role):
            self.viewer.layers.remove(ly)

    def _apply_checkerboard(self, *_):
        self._remove_role("checkerboard")
        he, her2 = self.he_layer, self.her2_layer
        if her2 is not None:
            her2.visible = not self.checker.value
        if not self.checker.value or he is None or her2 is None:
            return
        square_px = max(1, round(self.square_um.value / float(he.scale[-1])))
        try:
            levels = _overlays.checkerboard_levels(he, her2, square_px)
        except ValueError as exc:
            self.status.value = f"checkerboard: {exc}"
            self.checker.value = False
            return
        data = levels if len(levels) > 1 else levels[0]
        self.viewer.add_image(data, rgb=True, multiscale=len(levels) > 1, name="checkerboard H&E / HER2",
                              scale=tuple(he.scale[-2:]), translate=tuple(he.translate[-2:]),
                              contrast_limits=(0, 255), units=L.UNITS, metadata=L.meta("checkerboard", L.info(he).get("mpp")))

    def _apply_residuals(self, *_):
        self._remove_role("residual")
        self._remove_role("flagged")
        he = self.he_layer
        if not self.residuals.value or self.review is None or he is None:
            return
        for data, kw, kind in (_overlays.residual_layer(he, self.review),
                               _overlays.flagged_boxes_layer(he, self.review)):
            if kind == "shapes" and not data:
                continue
            getattr(self.viewer, f"add_{kind}")(data, **kw)

    # -- run / load -------------------------------------------------------------
    def run_registration(self, *_):
        from her2core.registration import RegistrationConfig, register

        he, her2, out = Path(self.he_file.value), Path(self.her2_file.value), Path(self.out_dir.value)
        for p, what in ((he, "H&E slide"), (her2, "HER2 slide")):
            if not p.is_file():
                self.status.value = f"{what}: choose a file"
                return
        self.run_btn.enabled, self.cancel_btn.enabled = False, True
        self.status.value = "registering…"

        config = RegistrationConfig(review_region=int(self.region_px.value))

        self.job = _jobs.start(register, he, her2, out, config=config, on_progress=self._on_progress,
                               on_done=lambda res: self.load(out),
                               on_error=self._on_error, on_finish=self._on_finish)

    def cancel(self, *_):
        if self.job is not None:
            self.job.cancel()
            self.status.value = "cancelled"

    def _on_progress(self, stage: str, done: int, total: int):
        self.progress.max = max(1, total)
        self.progress.value = min(done, self.progress.max)
        self.progress.label = f"register: {stage}" if stage else "register"

    def _on_error(self, exc):
        self.status.value = f"error: {exc}"

    def _on_finish(self):
        self.run_btn.enabled, self.cancel_btn.enabled = True, False

    def load(self, folder):
        """Open a `her2 register` folder: layers, review, residuals, flagged list."""
        folder = Path(folder)
        if not (folder / "transform.json").exists():
            self.status.value = f"{folder}: no transform.json; run `her2 register` first"
            return
        self.folder = folder
        he_existing = self.he_layer
        for data, kw, kind in read_folder(folder):
            role = kw["metadata"][L.KEY]["role"]
            if role == L.ROLE_HE and he_existing is not None and \
                    L.info(he_existing).get("path") == kw["metadata"][L.KEY]["path"]:
                continue  # this H&E is open already
            if role == L.ROLE_HER2:
                self._remove_role(L.ROLE_HER2)
                kw["opacity"] = float(self.opacity.value)
                kw["name"] = "HER2 (registered)"
            self.viewer.add_image(data, **kw)
        review_path = folder / "review.json"
        self.review = json.loads(review_path.read_text()) if review_path.exists() else None
        self._show_review()
        self._apply_checkerboard()
        self._apply_residuals()
        self.accept_btn.enabled = self.review is not None
        self.status.value = f"loaded {folder.name}"

    def _show_review(self):
        if self.review is None:
            self.summary.value = "no review.json in this folder"
            self.flagged.choices = []
            return
        s = self.review["summary"]
        warn = "; ".join(self.review.get("warnings", []))
        med = s.get("median_shift_um")
        self.summary.value = (f"{s['flagged']}/{s['regions']} regions flagged · median shift "
                              f"{'–' if med is None else f'{med:.1f}'} µm" + (f" · {warn}" if warn else ""))
        self.flagged.choices = [(self._region_label(r), i)
                                for i, r in enumerate(self.review["regions"]) if r["flagged"]]

    @staticmethod
    def _region_label(r: dict) -> str:
        return f"x={r['x']} y={r['y']}: {r['shift_um']:.1f} µm ({'; '.join(r['reasons'])})"

    def flagged_regions(self) -> list[dict]:
        return [] if self.review is None else [r for r in self.review["regions"] if r["flagged"]]

    def centre_on(self, region: dict):
        """Centre the view on a review region and zoom so it fills most of the canvas."""
        he = self.he_layer
        if he is None:
            return
        centre_rc = (region["y"] + region["h"] / 2.0, region["x"] + region["w"] / 2.0)
        world = L.data_to_world_rc(he, centre_rc)[0]
        cam = self.viewer.camera
        cam.center = (*cam.center[:-2], float(world[0]), float(world[1]))
        size_um = max(region["w"], region["h"]) * float(he.scale[-1])
        canvas = getattr(self.viewer.window, "_qt_viewer", None)
        px = min(canvas.canvas.size) if canvas is not None else 600
        cam.zoom = 0.8 * px / size_um

    def _centre_on_selection(self, value):
        if self.review is None or not value:
            return
        idx = value[0] if isinstance(value, (list, tuple)) else value
        self.centre_on(self.review["regions"][int(idx)])

    # -- decision -------------------------------------------------------------------
    def accept(self, *_):
        """Record that a person looked at this registration and accepted it."""
        from her2core.registration.decision import write_decision

        if self.folder is None or self.review is None:
            self.status.value = "load a registration with a review first"
            return None
        path = write_decision(self.folder, self.review, note=self.note.value)
        self.status.value = f"accepted: {path.name} written"
        return path
