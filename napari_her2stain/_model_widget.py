"""ROIs and model: draw ROIs on the H&E, run a trained run on them, see the virtual HER2 in place.

Each ROI is translated by `her2core.inference.slide.translate_slide` (overlapping
tiles, feathered blend, white outside the polygon) into an OME-TIFF in the
output folder; the result opens as a layer at the ROI's place and at the run's
working scale, transparent outside the ROI so the H&E shows around it. An H&E
layer held only in memory (sample data) is first written once as an OME-TIFF,
so the one slide-translation path serves every case.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from her2core.util.progress import Progress, ensure
from napari_her2stain import _jobs, _qupath
from napari_her2stain import _layers as L


def run_summary(run_dir) -> dict:
    """Framework name and family of a `her2 train` run folder (reads run.json, no weights)."""
    from her2core.models import registry
    from her2core.training import read_run

    run = read_run(run_dir)
    name = run.get("framework", "?")
    return {"framework": name, "preset": run.get("preset"), "diffusion": registry.family(name) == "dm"}


def roi_features(vertices_rc: np.ndarray, shape_type: str, name: str | None = None):
    """One ROI (level-0 (row, col) of the H&E) as QuPath features for translate_slide."""
    return _qupath.features_from_shapes([vertices_rc], [shape_type],
                                        {"name": [name or ""], "class": [""],
                                         "object_type": ["annotation"], "feature_index": [-1],
                                         "is_hole": [False]})


def translate_rois(run_dir, he_path, rois: list[dict], out_dir, options, *,
                   confidence: bool = False, progress: Progress | None = None):
    """Translate each ROI with `options` (an InferenceOptions); returns [(path, roi), ...] (with
    `confidence`: [(path, roi, confidence path), ...]). `progress` hears `("ROI k/n", tiles
    done, tiles)`; a stop raises `Cancelled` (the slide writer removes its half-written file)."""
    from her2core.inference.slide import translate_slide
    p = ensure(progress)
    out_dir = Path(out_dir)
    results = []
    for k, roi in enumerate(rois):
        out = out_dir / f"virtual_her2_{roi['slug']}.ome.tif"
        path = translate_slide(
            run_dir, he_path, out, options,
            roi=roi_features(roi["vertices"], roi["shape_type"], roi["name"]),
            overwrite=True, progress=p.within(f"ROI {k + 1}/{len(rois)}"))
        if confidence:
            from her2core.inference.confidence_out import translate_slide_confidence

            conf = translate_slide_confidence(
                run_dir, he_path, out, options,
                roi=roi_features(roi["vertices"], roi["shape_type"], roi["name"]),
                overwrite=True, progress=p.within(f"ROI {k + 1}/{len(rois)} confidence"))
            results.append((Path(path), roi, Path(conf)))
            continue
        results.append((Path(path), roi))
    return results


class ModelWidget(Container):
    """Dock widget: ROI layer, trained run, steps, run on ROIs with progress and cancel."""

    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821
        super().__init__(labels=True)
        self.viewer = viewer
        self.job = None
        self._tmp = tempfile.TemporaryDirectory(prefix="her2stain-")
        self._written: dict[int, Path] = {}
        self.he_combo = ComboBox(label="H&E layer", choices=self._image_layers)
        self.rois_combo = ComboBox(label="ROI layer", choices=self._shapes_layers)
        self.new_rois_btn = PushButton(text="New ROI layer (draw rectangles / polygons)")
        self.selected_only = CheckBox(text="selected ROIs only", value=False)
        self.run_dir = FileEdit(label="trained run", mode="d")
        self.model_info = Label(label="model", value="choose a `her2 train` run folder")
        self.steps = SpinBox(label="sampling steps", min=1, max=1000, value=10, enabled=False)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.work_mpp = FloatSpinBox(label="working µm/px (0: run's)", min=0.0, max=64.0, value=0.0,
                                     step=0.05)
        self.tile = SpinBox(label="tile (px)", min=32, max=4096, value=256, step=32)
        self.confidence = CheckBox(text="confidence map (K predictions per tile: slower)",
                                   value=False)
        self.out_dir = FileEdit(label="output folder", mode="d", value=self._tmp.name)
        self.run_btn = PushButton(text="Run on ROIs")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(label="status", value="")
        self.extend([self.he_combo, self.rois_combo, self.new_rois_btn, self.selected_only,
                     self.run_dir, self.model_info, self.steps, self.seed, self.work_mpp, self.tile,
                     self.confidence, self.out_dir, self.run_btn, self.cancel_btn, self.progress,
                     self.status])
        self.new_rois_btn.changed.connect(self.new_roi_layer)
        self.run_dir.changed.connect(self._on_run_dir)
        self.run_btn.changed.connect(self.run)
        self.cancel_btn.changed.connect(self.cancel)
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    # -- choices -------------------------------------------------------------------
    def _image_layers(self, *_):
        from napari.layers import Image

        layers = [ly for ly in self.viewer.layers if isinstance(ly, Image)]
        he = [ly for ly in layers if L.role_of(ly) == L.ROLE_HE]
        return [(ly.name, ly) for ly in he + [ly for ly in layers if ly not in he]]

    def _shapes_layers(self, *_):
        from napari.layers import Shapes

        layers = [ly for ly in self.viewer.layers if isinstance(ly, Shapes)]
        rois = [ly for ly in layers if L.role_of(ly) == L.ROLE_ROIS]
        return [(ly.name, ly) for ly in rois + [ly for ly in layers if ly not in rois]]

    def _refresh(self, *_):
        self.he_combo.reset_choices()
        self.rois_combo.reset_choices()

    def new_roi_layer(self, *_):
        """An empty ROI Shapes layer in the H&E's pixel frame, ready to draw rectangles."""
        he = self.he_combo.value
        data, kw, _ = _qupath.shapes_from_features([], he, name="ROIs")
        layer = self.viewer.add_shapes(data, **kw)
        layer.mode = "add_rectangle"
        self.rois_combo.value = layer
        return layer

    def _on_run_dir(self, value):
        try:
            info = run_summary(value)
        except Exception as exc:  # noqa: BLE001 - shown to the user, not raised in the GUI
            self.model_info.value = f"not a run: {exc}"
            self.steps.enabled = False
            return
        self.model_info.value = f"{info['framework']} ({info['preset']})"
        self.steps.enabled = info["diffusion"]

    # -- ROIs ------------------------------------------------------------------------
    def rois(self) -> list[dict]:
        """The ROIs to run: vertices in H&E level-0 (row, col), shape type, name, slug."""
        layer, he = self.rois_combo.value, self.he_combo.value
        if layer is None or he is None:
            return []
        idx = sorted(layer.selected_data) if self.selected_only.value else range(len(layer.data))
        names = list(layer.features["name"]) if "name" in layer.features else [""] * len(layer.data)
        out = []
        for i in idx:
            verts = np.asarray(layer.data[i], float)[:, -2:]
            world = L.data_to_world_rc(layer, verts)
            he_rc = L.world_to_data_rc(he, world)
            name = str(names[i]) if i < len(names) and isinstance(names[i], str) and names[i] else f"roi{i}"
            slug = "".join(ch if ch.isalnum() else "_" for ch in name)[:40] + f"_{i}"
            out.append({"index": int(i), "vertices": he_rc, "shape_type": layer.shape_type[i],
                        "name": name, "slug": slug})
        return out

    def he_path(self, he) -> Path:
        """The H&E as a slide file: its own, or (for in-memory layers) one written once here."""
        p = L.info(he).get("path")
        if p and Path(p).is_file():
            return Path(p)
        key = id(he.data)
        if key not in self._written:
            from her2core.slide import write_pyramid

            mpp = L.info(he).get("mpp") or float(he.scale[-1])
            path = Path(self._tmp.name) / f"he_layer_{len(self._written)}.ome.tif"
            write_pyramid(path, np.asarray(L.level0(he))[..., :3], mpp=mpp)
            self._written[key] = path
        return self._written[key]

    # -- run -----------------------------------------------------------------------------
    def run(self, *_):
        he = self.he_combo.value
        rois = self.rois()
        if he is None or not rois:
            self.status.value = "need an H&E layer and at least one ROI"
            return None
        run_dir = Path(self.run_dir.value)
        try:
            info = run_summary(run_dir)
        except Exception as exc:  # noqa: BLE001
            self.status.value = f"error: {exc}"
            return None
        work_mpp = float(self.work_mpp.value) or None
        if work_mpp is None:
            from her2core.training.runs import read_run, working_mpp

            work_mpp = working_mpp(read_run(run_dir)) or L.info(he).get("mpp") or float(he.scale[-1])
        self.run_btn.enabled, self.cancel_btn.enabled = False, True
        self.status.value = f"running {info['framework']} on {len(rois)} ROI(s)…"
        self.progress.value = 0
        from her2core.inference.options import InferenceOptions

        options = InferenceOptions(
            steps=int(self.steps.value) if info["diffusion"] else None, seed=int(self.seed.value),
            work_mpp=work_mpp, tile=int(self.tile.value), overlap=max(8, int(self.tile.value) // 8))
        self.job = _jobs.start(
            translate_rois, run_dir, self.he_path(he), rois, Path(self.out_dir.value), options,
            confidence=bool(self.confidence.value),
            on_progress=self._on_progress, on_done=lambda res: self._add_results(res, he, info),
            on_error=lambda exc: setattr(self.status, "value", f"error: {exc}"),
            on_finish=self._on_finish)
        return self.job

    def cancel(self, *_):
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.value = "cancelled"

    def _on_progress(self, stage: str, done: int, total: int):
        self.progress.max = max(1, total)
        self.progress.value = min(done, self.progress.max)
        self.progress.label = stage or "progress"

    def _on_finish(self):
        self.run_btn.enabled, self.cancel_btn.enabled = True, False

    def _add_results(self, results, he, info):
        from napari_her2stain._confidence import add_confidence_over
        from napari_her2stain._overlays import transparent_white
        from napari_her2stain._reader import slide_layer

        added = []
        self.confidence_layers = []
        for path, roi, *conf in results:
            data, kw, _ = slide_layer(path, role=L.ROLE_VIRTUAL,
                                      name=f"HER2 virtual: {roi['name']} ({info['framework']})")
            levels = data if kw["multiscale"] else [data]
            data = transparent_white(levels)
            # the virtual layer lives where the H&E is: same world frame (µm), offset by origin
            he_t = np.asarray(he.translate[-2:], float)
            kw["translate"] = tuple(np.asarray(kw["translate"], float) + he_t)
            kw["metadata"][L.KEY].update(roi_vertices_rc=roi["vertices"].tolist(), roi_name=roi["name"],
                                         he_layer=he.name, run=str(self.run_dir.value),
                                         framework=info["framework"])
            added.append(self.viewer.add_image(data if kw["multiscale"] else data[0], **kw))
            if conf:
                self.confidence_layers.append(add_confidence_over(self.viewer, added[-1], conf[0]))
        self.status.value = f"done: {len(added)} virtual HER2 layer(s)"
        self.results = added
        return added
