"""Coarse rigid alignment on thumbnails: rotation by exhaustive search, translation by correlation.

Why exhaustive: a restained slide can be put back on the scanner at any angle, and a
thumbnail of a few hundred pixels makes ~100 FFT correlations cheap. Both thumbnails are
hematoxylin optical density (0 on glass), so zero padding is background and the plain
cross-correlation peak, normalised by both energies, is a fair score across angles.
Scale is taken from the slides' microns per pixel; small residual scale/shear is left
to the affine passes that follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from her2core.slide.sampling import grid_xy, sample_rgb
from her2core.stain import hematoxylin_od


@dataclass
class Thumb:
    """A slide thumbnail of hematoxylin OD; level-0 xy = step * thumb_xy + offset."""

    image: np.ndarray
    step: float
    offset: float

    def to_level0(self) -> np.ndarray:
        return np.array([[self.step, 0, self.offset], [0, self.step, self.offset], [0, 0, 1.0]])


def thumbnail(slide, mpp: float) -> Thumb:
    from scipy.ndimage import gaussian_filter

    step = mpp / slide.require_mpp()
    w, h = slide.dimensions
    tw, th = max(1, round(w / step)), max(1, round(h / step))
    off = (step - 1) / 2
    rgb = sample_rgb(slide, grid_xy(off, off, tw, th, step), mpp)
    hema = gaussian_filter(hematoxylin_od(rgb), 1.0)
    return Thumb(image=hema.astype(np.float32), step=step, offset=off)


def _rot(theta_deg: float) -> np.ndarray:
    t = np.radians(theta_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _shift(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])


def _place(img: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre `img` on an n x n zero canvas; returns canvas and the placement matrix."""
    canvas = np.zeros((n, n), dtype=np.float32)
    oy, ox = (n - img.shape[0]) // 2, (n - img.shape[1]) // 2
    canvas[oy:oy + img.shape[0], ox:ox + img.shape[1]] = img
    return canvas, _shift(ox, oy)


def _warp(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Push `img` through the xy affine `m` (output(u) = img(m^-1 u)), same canvas size."""
    from skimage.transform import AffineTransform, warp

    return warp(img, AffineTransform(matrix=np.linalg.inv(m)), order=1, mode="constant", cval=0.0, preserve_range=True).astype(np.float32)


def _xcorr_peak(fa: np.ndarray, b: np.ndarray, norm: float) -> tuple[float, float, float]:
    """Best (tx, ty) with a(u + t) ~ b(u) and its normalised score."""
    fb = np.fft.rfft2(b)
    corr = np.fft.irfft2(fa * np.conj(fb), s=b.shape)
    k = int(np.argmax(corr))
    r, c = divmod(k, corr.shape[1])
    n0, n1 = corr.shape
    score = float(corr[r, c]) / (norm * float(np.sqrt((b * b).sum())) + 1e-12)
    # sub-pixel: parabola through the neighbours
    def parab(m1, z, p1):
        d = m1 - 2 * z + p1
        return 0.5 * (m1 - p1) / d if d < 0 else 0.0
    dr = parab(corr[(r - 1) % n0, c], corr[r, c], corr[(r + 1) % n0, c])
    dc = parab(corr[r, (c - 1) % n1], corr[r, c], corr[r, (c + 1) % n1])
    ty = r + dr if r < n0 // 2 else r + dr - n0
    tx = c + dc if c < n1 // 2 else c + dc - n1
    return tx, ty, score


def coarse_rigid(he_slide, her2_slide, *, size: int = 192, angle_step: float = 4.0,
                 max_rotation: float = 180.0) -> tuple[np.ndarray, float, float]:
    """Rigid HER2 level-0 -> H&E level-0 matrix from thumbnails; returns (matrix, score, thumb mpp)."""
    ext = max(he_slide.dimensions[0] * he_slide.mpp, he_slide.dimensions[1] * he_slide.mpp,
              her2_slide.dimensions[0] * her2_slide.mpp, her2_slide.dimensions[1] * her2_slide.mpp)
    mpp = max(ext / size, he_slide.mpp, her2_slide.mpp)
    ta, tb = thumbnail(he_slide, mpp), thumbnail(her2_slide, mpp)
    n = int(2 ** np.ceil(np.log2(1.5 * max(*ta.image.shape, *tb.image.shape))))
    a, pa = _place(ta.image, n)
    b, pb = _place(tb.image, n)
    fa = np.fft.rfft2(a)
    na = float(np.sqrt((a * a).sum()))
    c = (n - 1) / 2

    def score_at(theta):
        rot = _shift(c, c) @ _rot(theta) @ _shift(-c, -c)
        tx, ty, s = _xcorr_peak(fa, _warp(b, rot), na)
        return s, _shift(tx, ty) @ rot

    if max_rotation >= 180:
        angles = np.arange(-180.0, 180.0, angle_step)
    else:
        angles = np.arange(-max_rotation, max_rotation + 1e-9, angle_step)
    results = [(score_at(t), t) for t in angles]
    (best_s, best_m), best_t = max(results, key=lambda r: r[0][0])
    for fine in np.arange(best_t - angle_step, best_t + angle_step + 1e-9, angle_step / 8):
        (s, m) = score_at(fine)
        if s > best_s:
            best_s, best_m = s, m
    # HER2 level-0 -> thumb_b -> canvas_b -> rotated/shifted canvas_a -> thumb_a -> H&E level-0
    m_thumb = np.linalg.inv(pa) @ best_m @ pb
    matrix = ta.to_level0() @ m_thumb @ np.linalg.inv(tb.to_level0())
    return matrix, best_s, mpp
