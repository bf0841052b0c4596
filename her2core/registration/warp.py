"""Patches of a registered pair: H&E on its own grid, HER2 resampled into it through a Transform.

The sampling itself (`her2core.slide.sampling`) is shared with the tissue mask and the readers.
"""

from __future__ import annotations

import numpy as np

from her2core.registration.transform import Transform
from her2core.slide.sampling import grid_xy, sample_rgb


def read_he_patch(he_slide, center_xy, size_px: int, mpp: float) -> np.ndarray:
    """H&E patch of size_px^2 at `mpp`, centred on level-0 `center_xy`."""
    step = mpp / he_slide.require_mpp()
    half = (size_px - 1) / 2 * step
    xy = grid_xy(center_xy[0] - half, center_xy[1] - half, size_px, size_px, step)
    return sample_rgb(he_slide, xy, mpp)


def read_warped_patch(her2_slide, transform: Transform, he_center_xy, size_px: int, mpp: float,
                      he_mpp: float) -> np.ndarray:
    """HER2 patch resampled into the H&E grid (same pixels as `read_he_patch` would give)."""
    step = mpp / he_mpp
    half = (size_px - 1) / 2 * step
    xy = grid_xy(he_center_xy[0] - half, he_center_xy[1] - half, size_px, size_px, step)
    return sample_rgb(her2_slide, transform.he_to_her2(xy), mpp)


def warp_region(her2_slide, transform: Transform, he_xy0: tuple[float, float], size_wh: tuple[int, int],
                out_mpp: float) -> np.ndarray:
    """HER2 resampled onto an H&E region: top-left level-0 `he_xy0`, `size_wh` pixels at `out_mpp`."""
    step = out_mpp / transform.he_mpp
    # pixel centres of the output grid, in H&E level-0 coordinates
    off = (step - 1) / 2
    xy = grid_xy(he_xy0[0] + off, he_xy0[1] + off, int(size_wh[0]), int(size_wh[1]), step)
    return sample_rgb(her2_slide, transform.he_to_her2(xy), out_mpp)
