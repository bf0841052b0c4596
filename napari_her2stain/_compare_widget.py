"""Compare virtual and real HER2 in an ROI: overlay, checkerboard or side by side, DAB
difference map, and the ROI's metrics (SSIM, PSNR, DAB metrics, HER2 score proxy).

The real HER2 is read on the virtual layer's own pixel grid (its region of the
registered HER2, resampled to the virtual's microns per pixel), so every
number compares the same pixels. Outside the ROI polygon both images are set
to white, so only the ROI is compared.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSlider, Label, PushButton, SpinBox, Table

from napari_her2stain import _layers as L
from napari_her2stain import _overlays

MODES = ("overlay", "checkerboard", "side by side")


def real_on_virtual_grid(virtual, real) -> np.ndarray:
    """RGB uint8 of `real` resampled onto `virtual`'s level-0 pixel grid (both in world µm)."""
    from her2core.slide.reader import resize_rgb

    h, w = L.layer_shape_rc(virtual)
    vs = np.asarray(virtual.scale[-2:], float)
    vt = np.asarray(virtual.translate[-2:], float)
    rs = np.asarray(real.scale[-2:], float)
    rt = np.asarray(real.translate[-2:], float)
    if real.affine is not None and not np.allclose(real.affine.affine_matrix[-3:, -3:], np.eye(3)):
        raise ValueError(f"{real.name}: open the registered HER2 (her2_registered.ome.tif), "
                         "not one shown through an affine")
    top_left = vt - vs / 2.0                         # world µm of the virtual's outer edges
    bottom_right = vt + (np.array([h, w]) - 0.5) * vs
    e0 = (top_left - rt) / rs + 0.5                  # the real layer's pixel-edge coordinates
    e1 = (bottom_right - rt) / rs + 0.5
    r0, c0 = np.floor(e0 + 1e-6).astype(int)
    r1, c1 = np.ceil(e1 - 1e-6).astype(int)
    block = L.read_region_rc(real, int(r0), int(c0), int(r1), int(c1))
    return block if block.shape[:2] == (h, w) else resize_rgb(block, (h, w))


def virtual_rgb_and_mask(virtual) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 RGB of the virtual layer and the ROI mask (alpha > 0, or not pure white)."""
    a = np.asarray(L.level0(virtual))
    if a.shape[-1] == 4:
        return np.ascontiguousarray(a[..., :3]), a[..., 3] > 0
    return a[..., :3], ~(a[..., :3] == 255).all(axis=-1)


def roi_metrics(virtual_rgb: np.ndarray, real_rgb: np.ndarray, mask: np.ndarray, mpp: float) -> dict:
    """her2core.evaluation metrics of the ROI (white outside the mask in both images)."""
    from her2core.evaluation.tile_metrics import DISPLAY_NAMES, tile_metrics

    v = virtual_rgb.copy()
    r = real_rgb.copy()
    v[~mask] = 255
    r[~mask] = 255
    (row,) = tile_metrics(v[None], r[None], mpp)
    return {DISPLAY_NAMES.get(k, k): val for k, val in row.items()}


class CompareWidget(Container):
    """Dock widget: choose virtual + real HER2 layers; view mode; DAB difference; metrics table."""

    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821
        super().__init__(labels=True)
        self.viewer = viewer
        self.metrics: dict | None = None
        self.virtual_combo = ComboBox(label="virtual HER2", choices=self._by_role(L.ROLE_VIRTUAL))
        self.real_combo = ComboBox(label="real HER2", choices=self._by_role(L.ROLE_HER2))
        self.mode = ComboBox(label="view", choices=list(MODES), value="overlay")
        self.opacity = FloatSlider(label="virtual opacity", min=0.0, max=1.0, value=1.0, step=0.05)
        self.square = SpinBox(label="checker square (px)", min=4, max=4096, value=64)
        self.compare_btn = PushButton(text="Compare in ROI")
        self.table = Table(value={"value": []}, label="metrics")
        self.status = Label(label="status", value="")
        self.extend([self.virtual_combo, self.real_combo, self.mode, self.opacity, self.square,
                     self.compare_btn, self.table, self.status])
        self.compare_btn.changed.connect(self.compare)
        self.mode.changed.connect(self.apply_mode)
        self.square.changed.connect(self.apply_mode)
        self.opacity.changed.connect(self._apply_opacity)
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)

    def _by_role(self, role):
        def choices(*_):
            return [(ly.name, ly) for ly in L.layers_with_role(self.viewer, role)]
        return choices

    def _refresh(self, *_):
        self.virtual_combo.reset_choices()
        self.real_combo.reset_choices()

    def _apply_opacity(self, *_):
        if self.virtual_combo.value is not None:
            self.virtual_combo.value.opacity = float(self.opacity.value)

    def _remove_role(self, role):
        for ly in L.layers_with_role(self.viewer, role):
            self.viewer.layers.remove(ly)

    def _pair(self):
        virtual, real = self.virtual_combo.value, self.real_combo.value
        if virtual is None or real is None:
            raise ValueError("need a virtual HER2 layer (ROI and model) and a real HER2 layer")
        v, mask = virtual_rgb_and_mask(virtual)
        r = real_on_virtual_grid(virtual, real)
        return virtual, v, r, mask

    def compare(self, *_):
        """DAB difference map and metrics of the chosen virtual layer against the real HER2."""
        from her2core.stain import dab_od

        try:
            virtual, v, r, mask = self._pair()
        except ValueError as exc:
            self.status.value = str(exc)
            return None
        mpp = float(virtual.scale[-1])
        diff = (dab_od(v) - dab_od(r)).astype(np.float32)
        diff[~mask] = 0.0
        lim = float(max(0.05, np.percentile(np.abs(diff[mask]), 99) if mask.any() else 0.05))
        self._remove_role("dab_diff")
        self.viewer.add_image(diff, name="DAB OD difference (virtual − real)", colormap="PiYG_r"
                              if "PiYG_r" in _colormaps() else "bwr",
                              contrast_limits=(-lim, lim), scale=tuple(virtual.scale[-2:]),
                              translate=tuple(virtual.translate[-2:]), opacity=0.8, visible=False, units=L.UNITS,
                              metadata=L.meta("dab_diff", mpp))
        self.metrics = roi_metrics(v, r, mask, mpp)
        self.metrics.update(self._confidence_in_roi(virtual, mask))
        self.table.value = {"data": [[_fmt(val)] for val in self.metrics.values()],
                            "index": list(self.metrics), "columns": ["value"]}
        self.status.value = (f"ROI {int(mask.sum())} px at {mpp:g} µm/px · HER2 proxy "
                             f"virtual {self.metrics['her2_proxy_virtual']} / real "
                             f"{self.metrics['her2_proxy_real']}")
        self.apply_mode()
        return self.metrics

    def apply_mode(self, *_):
        """Overlay (opacity), checkerboard, or the real ROI side by side with the virtual."""
        self._remove_role("compare_view")
        virtual = self.virtual_combo.value
        if virtual is None or self.real_combo.value is None:
            return
        virtual.visible = True
        if self.mode.value == "overlay":
            self._apply_opacity()
            return
        _, v, r, mask = self._pair()
        mpp_t = tuple(virtual.scale[-2:])
        if self.mode.value == "checkerboard":
            board = _overlays.checkerboard_array(v, r, int(self.square.value))
            rgba = np.dstack([board, np.where(mask, 255, 0).astype(np.uint8)])
            self.viewer.add_image(rgba, rgb=True, name="checkerboard virtual / real", scale=mpp_t,
                                  translate=tuple(virtual.translate[-2:]), units=L.UNITS,
                                  metadata=L.meta("compare_view", float(virtual.scale[-1])))
            virtual.visible = False
        else:  # side by side: the real ROI just right of the virtual one
            width_um = v.shape[1] * float(virtual.scale[-1])
            t = np.asarray(virtual.translate[-2:], float) + np.array([0.0, 1.05 * width_um])
            rgba = np.dstack([r, np.where(mask, 255, 0).astype(np.uint8)])
            self.viewer.add_image(rgba, rgb=True, name="real HER2 (ROI, side by side)", scale=mpp_t,
                                  translate=tuple(t), units=L.UNITS,
                                  metadata=L.meta("compare_view", float(virtual.scale[-1])))


    def _confidence_in_roi(self, virtual, mask) -> dict:
        """The virtual slide's confidence map (if written) as a layer, and its mean in the ROI."""
        from napari_her2stain._confidence import add_confidence_over

        layer = add_confidence_over(self.viewer, virtual)
        if layer is None:
            return {}
        conf = np.asarray(L.level0(layer))
        if conf.shape != mask.shape or not mask.any():
            return {}
        return {"mean confidence": float(conf[mask].mean() / 255.0)}


def _colormaps():
    from napari.utils.colormaps import AVAILABLE_COLORMAPS

    return AVAILABLE_COLORMAPS


def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{float(v):.3f}"
