"""Local shifts between the H&E slide and the (currently warped) HER2 slide, patch by patch.

Hematoxylin optical density is the signal both stains share (nuclei), so each patch pair
is compared on it: phase correlation gives a sub-pixel shift, and the normalised
correlation after applying that shift says whether the match can be trusted (blank
glass, folds or consecutive-section cells that do not correspond give low values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from her2core.registration.transform import Transform
from her2core.registration.warp import read_he_patch, read_warped_patch
from her2core.stain import hematoxylin_od
from her2core.util.progress import Progress, ensure


@dataclass
class Matches:
    """Point correspondences: H&E level-0 `he_xy` (N, 2) <-> HER2 level-0 `her2_xy` (N, 2)."""

    he_xy: np.ndarray
    her2_xy: np.ndarray
    shift_px: np.ndarray     # (N, 2) measured residual (x, y) shift in H&E level-0 px
    ncc: np.ndarray          # (N,) correlation after the shift
    valid: np.ndarray        # (N,) bool


def hann2d(n: int) -> np.ndarray:
    w = np.hanning(n)
    return np.outer(w, w).astype(np.float32)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equally shaped arrays (0 when either is flat)."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def patch_shift(ref: np.ndarray, mov: np.ndarray, *, upsample: int = 10,
                normalization: str | None = "phase") -> tuple[np.ndarray, float]:
    """Shift (row, col) that moves `mov` onto `ref` (ref(u) ~ mov(u - shift)), and the NCC after it."""
    from scipy.ndimage import shift as nd_shift
    from skimage.registration import phase_cross_correlation

    n = ref.shape[0]
    win = hann2d(n)
    r = (ref - ref.mean()) * win
    m = (mov - mov.mean()) * win
    if r.std() < 1e-6 or m.std() < 1e-6:
        return np.zeros(2), 0.0
    shift, _, _ = phase_cross_correlation(r, m, upsample_factor=upsample, normalization=normalization)
    shift = np.asarray(shift, dtype=float)
    moved = nd_shift(mov, shift, order=1, mode="nearest")
    b = int(np.ceil(np.abs(shift).max())) + 2
    b = min(b, n // 4)
    return shift, ncc(ref[b:n - b, b:n - b], moved[b:n - b, b:n - b])


def match_points(he_slide, her2_slide, transform: Transform, points_xy: np.ndarray, *, mpp: float,
                 patch: int, min_ncc: float, max_shift_frac: float = 0.3,
                 min_signal: float = 0.05, normalization: str | None = "phase",
                 smooth_um: float = 0.0, progress: Progress | None = None) -> Matches:
    """Measure, at `mpp`, how far the warped HER2 is off at each H&E level-0 point.

    `smooth_um` blurs the hematoxylin first: at tissue scale, nuclear density (not the
    individual nuclei) is what consecutive sections share. `progress` is checked per point (cancel).
    """
    from scipy.ndimage import gaussian_filter
    pts = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    n = len(pts)
    he_mpp = he_slide.require_mpp()
    step = mpp / he_mpp
    shift_px = np.zeros((n, 2))
    scores = np.zeros(n)
    valid = np.zeros(n, dtype=bool)
    stop = ensure(progress)
    for i, p in enumerate(pts):
        stop.check("match")
        he_h = hematoxylin_od(read_he_patch(he_slide, p, patch, mpp))
        if (he_h > 0.1).mean() < min_signal:
            continue
        mv_h = hematoxylin_od(read_warped_patch(her2_slide, transform, p, patch, mpp, he_mpp))
        if (mv_h > 0.05).mean() < min_signal * 0.5:
            continue
        if smooth_um > 0:
            he_h = gaussian_filter(he_h, smooth_um / mpp)
            mv_h = gaussian_filter(mv_h, smooth_um / mpp)
        s_rc, score = patch_shift(he_h, mv_h, normalization=normalization)
        scores[i] = score
        if np.abs(s_rc).max() > max_shift_frac * patch:
            continue
        shift_px[i] = s_rc[::-1] * step
        valid[i] = score >= min_ncc
    # HE point p corresponds to warped point p - shift, i.e. HER2 point T(p - shift)
    her2_xy = transform.he_to_her2(pts - shift_px)
    return Matches(he_xy=pts, her2_xy=her2_xy, shift_px=shift_px, ncc=scores, valid=valid)
