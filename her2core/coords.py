"""The one place where (x, y) and (row, col) meet.

GeoJSON and QuPath speak level-0 (x, y) pixels; numpy and napari speak
(row, col). Every conversion goes through these functions.
"""

from __future__ import annotations

import numpy as np


def xy_to_rc(xy) -> np.ndarray:
    """(N, 2) array of (x, y) -> (N, 2) array of (row, col)."""
    a = np.asarray(xy, dtype=float)
    return a[..., ::-1].copy()


def rc_to_xy(rc) -> np.ndarray:
    """(N, 2) array of (row, col) -> (N, 2) array of (x, y)."""
    a = np.asarray(rc, dtype=float)
    return a[..., ::-1].copy()


def apply_affine_xy(matrix, xy) -> np.ndarray:
    """Apply a 3x3 homogeneous matrix (acting on (x, y, 1) columns) to (N, 2) points."""
    m = np.asarray(matrix, dtype=float)
    pts = np.asarray(xy, dtype=float).reshape(-1, 2)
    out = pts @ m[:2, :2].T + m[:2, 2]
    return out.reshape(np.shape(xy))
