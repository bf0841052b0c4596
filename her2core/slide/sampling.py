"""Sample a slide at arbitrary level-0 coordinates, reading only the pyramid level and box needed.

One sampler serves registration (patches of both slides at the matching scale), the tissue
mask, the registered-slide writer and on-the-fly warped tile reads, so every step uses the
same pixel convention: integer level-0 coordinates are pixel centres.
"""

from __future__ import annotations

import numpy as np

from her2core.slide.base import SHRINK_ABOVE_PIXELS


def level_coords(xy0: np.ndarray, downsample: float) -> np.ndarray:
    """Level-0 pixel-centre coordinates -> coordinates in a level downsampled by `downsample`."""
    return (xy0 + 0.5) / downsample - 0.5


def sample_rgb(slide, xy: np.ndarray, out_mpp: float, *, cval: int = 255) -> np.ndarray:
    """RGB uint8 (H, W, 3) sampled bilinearly at level-0 points `xy` (H, W, 2) of `slide`.

    Reads the coarsest pyramid level that is still at least as fine as `out_mpp`
    (a light Gaussian prefilter covers the remaining factor <= 2); points outside the
    slide are white.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    xy = np.asarray(xy, dtype=float)
    out_shape = xy.shape[:-1]
    mpp0 = slide.require_mpp()
    level = slide.best_level_for_downsample(max(out_mpp / mpp0, 1.0))
    ds = slide.level_downsamples[level]
    lc = level_coords(xy, ds)
    lw, lh = slide.level_dimensions[level]
    finite = np.isfinite(lc).all(axis=-1)
    out = np.full(out_shape + (3,), cval, dtype=np.uint8)
    if not finite.any():
        return out
    x0 = int(np.floor(np.nanmin(lc[..., 0][finite]))) - 2
    y0 = int(np.floor(np.nanmin(lc[..., 1][finite]))) - 2
    x1 = int(np.ceil(np.nanmax(lc[..., 0][finite]))) + 3
    y1 = int(np.ceil(np.nanmax(lc[..., 1][finite]))) + 3
    x0, y0, x1, y1 = max(x0, -4), max(y0, -4), min(x1, lw + 4), min(y1, lh + 4)
    if x1 <= x0 or y1 <= y0:
        return out
    ratio = (out_mpp / mpp0) / ds
    factor = int(ratio) if (x1 - x0) * (y1 - y0) > SHRINK_ABOVE_PIXELS and ratio >= 2 else 1
    if factor > 1:  # a large box of a slide without a coarse enough level: shrink band by band
        block = slide.read_shrunk((x0 * ds, y0 * ds), level, (x1 - x0, y1 - y0), factor,
                                  fill=cval).astype(np.float32)
        ratio /= factor
        rows = (lc[..., 1] - y0 - (factor - 1) / 2) / factor  # block j is centred on j·f + (f-1)/2
        cols = (lc[..., 0] - x0 - (factor - 1) / 2) / factor
    else:
        block = slide.read_region((x0 * ds, y0 * ds), level, (x1 - x0, y1 - y0),
                                  fill=cval).astype(np.float32)
        rows = lc[..., 1] - y0
        cols = lc[..., 0] - x0
    if ratio > 1.2:
        sigma = 0.5 * np.sqrt(ratio ** 2 - 1.0)
        block = gaussian_filter(block, sigma=(sigma, sigma, 0), mode="nearest")
    for k in range(3):
        ch = map_coordinates(block[..., k], [rows, cols], order=1, mode="constant", cval=float(cval))
        out[..., k] = np.clip(np.rint(ch), 0, 255).astype(np.uint8)
    return out


def grid_xy(x0: float, y0: float, width: int, height: int, step: float) -> np.ndarray:
    """(height, width, 2) level-0 (x, y) of a pixel grid starting at (x0, y0), `step` level-0 px apart."""
    xs = x0 + step * np.arange(width)
    ys = y0 + step * np.arange(height)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], axis=-1)
