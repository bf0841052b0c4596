"""Tile QC: a value and a reason for every tile pair, so a curated dataset can be audited.

HER2match removed tiles with artefacts by hand; these measures make that rule-based:

* background fraction — glass (low saturation, bright) in the H&E tile;
* blur fraction — the tile is cut in blocks of `block_um`; a textured tissue block whose
  var(Laplacian)/var(grey) is low is out of focus (scale-free: stain strength and
  brightness cancel; flat blocks are not judged); share of judged blocks, worse tile of two;
* dark fraction — share of blocks whose bright pixels (95th percentile of max(R, G, B)) are
  not bright: shadows, folds (doubled tissue), black ink; worse tile of two. Clean tissue
  always has some bright cytoplasm, stroma or glass in a 16 µm block;
* ink fraction — saturated pixels whose brightest channel is green (hue 60-180°: green and
  cyan pen marks), which no H&E or DAB stain has, in either tile;
* residual shift — phase correlation of the hematoxylin of the two tiles, in microns; it
  counts only when the shift clearly improves the correlation (periodic stroma fibres and
  empty tiles give meaningless peaks). `shift_smooth_um` blurs hematoxylin first, which
  measures tissue-level misalignment of consecutive sections instead of cell-level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from her2core.registration.match import patch_shift
from her2core.slide.tissue import (
    GLASS_MAX_SATURATION,
    GLASS_MIN_VALUE,
    glass_pixels,
    saturation_value,
)
from her2core.stain import hematoxylin_od


@dataclass
class QCConfig:
    max_background: float = 0.5    # drop when more of the tile is glass
    block_um: float = 16.0         # side of the blocks blur and darkness are judged on
    min_sharpness: float = 0.05    # a judged block with lower var(Laplacian)/var(grey) is blurred
    min_block_std: float = 0.01    # blocks flatter than this (grey std) are not judged for blur
    max_blur: float = 0.1          # drop when a larger share of judged blocks is blurred
    dark_value: float = 0.80       # a block whose 95th-percentile max(R, G, B)/255 is lower is dark
    max_dark: float = 0.05         # drop when a larger share of blocks is dark
    max_ink: float = 0.003         # drop when a larger share of pixels is pen ink
    max_shift_um: float = 5.0      # drop when the residual registration shift is larger (0 = off)
    min_shift_gain: float = 0.15   # ... and shifting raises the correlation by at least this much
    shift_smooth_um: float = 0.0   # blur hematoxylin before measuring the shift (consecutive: ~6)
    min_correlation: float = 0.0   # drop when the aligned hematoxylin correlation is lower (0 = off)
    background_saturation: float = GLASS_MAX_SATURATION  # glass: grey and bright (slide.tissue)
    background_value: float = GLASS_MIN_VALUE


def background_mask(rgb: np.ndarray, cfg: QCConfig) -> np.ndarray:
    """Glass pixels by the one glass rule, with this QC's (overridable) thresholds."""
    return glass_pixels(rgb, max_saturation=cfg.background_saturation,
                        min_value=cfg.background_value)


def _blocks4(a: np.ndarray, b: int) -> np.ndarray:
    """(rows, b, cols, b) view of the full b x b blocks of a 2-D array."""
    nr, nc = a.shape[0] // b, a.shape[1] // b
    return a[:nr * b, :nc * b].reshape(nr, b, nc, b)


def block_measures(rgb: np.ndarray, background: np.ndarray, mpp: float,
                   cfg: QCConfig) -> tuple[float, float, float]:
    """(blur fraction, dark fraction, median block sharpness) of one tile."""
    from scipy.ndimage import laplace

    b = max(8, round(cfg.block_um / mpp))
    if min(rgb.shape[:2]) < b:
        return 0.0, 0.0, float("nan")
    r, g, bl = (rgb[..., k].astype(np.float32) for k in range(3))
    grey = (r + g + bl) * np.float32(1 / 765.0)
    # dark block: its 95th percentile of max(R, G, B) is below dark_value, i.e. < 5 % bright pixels
    mx = np.maximum(np.maximum(r, g), bl)
    bright = _blocks4(mx >= cfg.dark_value * 255.0, b).mean(axis=(1, 3))
    dark = bright < 0.05
    g = _blocks4(grey, b)
    sd = g.std(axis=(1, 3))
    tissue = _blocks4(background, b).mean(axis=(1, 3)) <= 0.5
    # Laplacian inside each block only (one pixel in from its edges)
    lap = _blocks4(laplace(grey), b)[:, 1:-1, :, 1:-1]
    lap_var = lap.var(axis=(1, 3))
    judged = tissue & (sd >= cfg.min_block_std)
    sharp = lap_var[judged] / np.maximum(sd[judged] ** 2, 1e-12)
    n_j = int(judged.sum())
    blurred = int((sharp < cfg.min_sharpness).sum())
    return (blurred / n_j if n_j else 0.0, float(dark.mean()),
            float(np.median(sharp)) if n_j else float("nan"))


def _shrink(rgb: np.ndarray, f: int) -> np.ndarray:
    """Integer-factor area mean of an RGB uint8 tile."""
    if f == 1:
        return rgb
    h, w = (rgb.shape[0] // f) * f, (rgb.shape[1] // f) * f
    a = rgb[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
    return np.rint(a).astype(np.uint8)


def ink_fraction(rgb: np.ndarray, sat: np.ndarray) -> float:
    """Saturated pixels whose brightest channel is green (hue 60-180°): no H&E or DAB stain is."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float(((g > r) & (g >= b) & (sat > 0.25)).mean())


def tile_qc(he: np.ndarray, ihc: np.ndarray, mpp: float, cfg: QCConfig) -> tuple[dict, list[str]]:
    """QC values (a dict of floats) and the reasons to drop the pair (empty list = keep)."""
    from scipy.ndimage import gaussian_filter

    from her2core.registration.match import ncc

    sat_a, _ = saturation_value(he)
    sat_b, _ = saturation_value(ihc)
    bg_a = background_mask(he, cfg)
    bg_b = background_mask(ihc, cfg)
    vals = {"background_frac": float(bg_a.mean())}
    blur_a, dark_a, sharp_a = block_measures(he, bg_a, mpp, cfg)
    blur_b, dark_b, sharp_b = block_measures(ihc, bg_b, mpp, cfg)
    vals["blur_frac"] = max(blur_a, blur_b)
    finite = [v for v in (sharp_a, sharp_b) if np.isfinite(v)]
    vals["sharpness"] = float(min(finite)) if finite else float("nan")
    vals["dark_frac"] = max(dark_a, dark_b)
    vals["ink_frac"] = max(ink_fraction(he, sat_a), ink_fraction(ihc, sat_b))
    # the shift is measured at <= 256 px (1 µm/px for default tiles): precise enough for a
    # micron threshold, 4x cheaper than full size
    f = max(1, min(he.shape[:2]) // 256)
    smpp = mpp * f
    ha, hb = hematoxylin_od(_shrink(he, f)), hematoxylin_od(_shrink(ihc, f))
    if cfg.shift_smooth_um > 0:
        ha = gaussian_filter(ha, cfg.shift_smooth_um / smpp)
        hb = gaussian_filter(hb, cfg.shift_smooth_um / smpp)
    n = min(ha.shape)
    shift, corr = patch_shift(ha[:n, :n], hb[:n, :n], upsample=2)
    vals["shift_um"] = float(np.hypot(*shift) * smpp)
    vals["correlation"] = float(corr)
    vals["correlation_unshifted"] = ncc(ha[:n, :n], hb[:n, :n])

    reasons = []
    if vals["background_frac"] > cfg.max_background:
        reasons.append("background")
    if vals["dark_frac"] > cfg.max_dark:
        reasons.append("dark")
    if vals["ink_frac"] > cfg.max_ink:
        reasons.append("ink")
    if vals["blur_frac"] > cfg.max_blur:
        reasons.append("blur")
    gain = vals["correlation"] - vals["correlation_unshifted"]
    if cfg.max_shift_um > 0 and vals["shift_um"] > cfg.max_shift_um and gain >= cfg.min_shift_gain:
        reasons.append("misaligned")
    if cfg.min_correlation > 0 and vals["correlation"] < cfg.min_correlation:
        reasons.append("low_correlation")
    return vals, reasons
