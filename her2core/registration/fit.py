"""From noisy point matches to a transform: a robust affine, then a smooth, outlier-free field."""

from __future__ import annotations

import numpy as np


def affine_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 affine mapping src (N, 2) -> dst (N, 2) in the least-squares sense."""
    a = np.hstack([src, np.ones((len(src), 1))])
    sol, *_ = np.linalg.lstsq(a, dst, rcond=None)
    m = np.eye(3)
    m[:2, :] = sol.T
    return m


def ransac_affine(src: np.ndarray, dst: np.ndarray, threshold: float, *, trials: int = 400,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Robust affine src -> dst: RANSAC on 3-point samples, then least squares on the inliers.

    Returns (matrix, inlier mask). Deterministic for a given seed.
    """
    n = len(src)
    if n < 3:
        raise ValueError("need at least 3 matches")
    rng = np.random.default_rng(seed)
    best = np.zeros(n, dtype=bool)
    best_err = np.inf
    for _ in range(trials):
        idx = rng.choice(n, 3, replace=False)
        a = np.hstack([src[idx], np.ones((3, 1))])
        if abs(np.linalg.det(a)) < 1e-6 * max(1.0, np.abs(src).max()) ** 2:
            continue
        m = affine_lstsq(src[idx], dst[idx])
        err = np.linalg.norm(src @ m[:2, :2].T + m[:2, 2] - dst, axis=1)
        inl = err < threshold
        score = np.minimum(err, threshold).sum()
        if inl.sum() > best.sum() or (inl.sum() == best.sum() and score < best_err):
            best, best_err = inl, score
    if best.sum() < 3:
        best = np.ones(n, dtype=bool)
    m = affine_lstsq(src[best], dst[best])
    for _ in range(2):  # re-select inliers with the refined model
        err = np.linalg.norm(src @ m[:2, :2].T + m[:2, 2] - dst, axis=1)
        inl = err < threshold
        if inl.sum() < 3:
            break
        best = inl
        m = affine_lstsq(src[best], dst[best])
    return m, best


def reject_local_outliers(values: np.ndarray, valid: np.ndarray, tol: float, radius: int = 2) -> np.ndarray:
    """Drop grid values (ny, nx, 2) that differ from the median of their valid neighbours by > tol."""
    ny, nx = valid.shape
    keep = valid.copy()
    for i, j in zip(*np.nonzero(valid)):
        i0, i1, j0, j1 = max(0, i - radius), min(ny, i + radius + 1), max(0, j - radius), min(nx, j + radius + 1)
        nb = valid[i0:i1, j0:j1].copy()
        nb[i - i0, j - j0] = False
        if nb.sum() < 2:
            # an isolated match is trusted only for a small correction
            if np.linalg.norm(values[i, j]) > tol:
                keep[i, j] = False
            continue
        med = np.median(values[i0:i1, j0:j1][nb], axis=0)
        if np.linalg.norm(values[i, j] - med) > tol:
            keep[i, j] = False
    return keep


def smooth_field(values: np.ndarray, weights: np.ndarray, sigma: float, prior: float = 0.02) -> np.ndarray:
    """Normalised convolution of a sparse grid field (ny, nx, 2): smooth, filled, -> 0 far from data."""
    from scipy.ndimage import gaussian_filter

    w = weights.astype(np.float64)
    den = gaussian_filter(w, sigma, mode="nearest")
    out = np.empty(values.shape, dtype=np.float64)
    for k in range(values.shape[-1]):
        num = gaussian_filter(w * values[..., k], sigma, mode="nearest")
        out[..., k] = num / (den + prior)
    return out
