"""The metrics of one batch of virtual/real tile pairs, one row per tile: the single assembly used
by `her2 evaluate`, the slide metrics of `her2 batch` and the napari compare widget, so the three
agree on every value and column name.

Pixel metrics (`pixel`): psnr, ssim (skimage defaults), ssim_gaussian, ms_ssim (its scales adapt to
the tile size, `pixel.ms_ssim_scales`); then the DAB-channel metrics of `pathology.dab_metrics`.
"""

from __future__ import annotations

import numpy as np

from her2core.evaluation import pathology, pixel

PIXEL_COLUMNS = ["psnr", "ssim", "ssim_gaussian", "ms_ssim"]

#: how a column is labelled for a reader (napari table, reports)
DISPLAY_NAMES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "ssim_gaussian": "SSIM (Gaussian)",
                 "ms_ssim": "MS-SSIM", "lpips": "LPIPS"}


def pixel_columns(pred: np.ndarray, target: np.ndarray, device=None) -> dict[str, np.ndarray]:
    """Per-tile pixel metrics of a batch (N, H, W, 3) uint8, column name -> (N,) values."""
    return {"psnr": pixel.psnr_batch(pred, target, device=device),
            "ssim": pixel.ssim_batch(pred, target, device=device),
            "ssim_gaussian": pixel.ssim_gaussian_batch(pred, target, device=device),
            "ms_ssim": pixel.ms_ssim_batch(pred, target, device=device)}


def tile_metrics(pred: np.ndarray, target: np.ndarray, mpp: float, *,
                 dab: pathology.DabSettings | None = None, device=None,
                 extra: dict[str, np.ndarray] | None = None) -> list[dict[str, float]]:
    """One dict per tile of a batch: the pixel columns, any `extra` per-tile columns (e.g. LPIPS),
    then the DAB metrics at `mpp` microns per pixel."""
    cols = pixel_columns(pred, target, device=device)
    cols.update(extra or {})
    rows = []
    for i in range(len(pred)):
        row = {k: float(np.asarray(v).reshape(len(pred), -1)[i, 0]) for k, v in cols.items()}
        row.update(pathology.dab_metrics(pred[i], target[i], mpp, dab or pathology.DabSettings()))
        rows.append(row)
    return rows
