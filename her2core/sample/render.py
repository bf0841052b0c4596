"""Optical-density layers -> RGB for the two stains (colour deconvolution run backwards).

H&E shows hematoxylin + eosin; HER2 IHC shows a lighter hematoxylin counterstain of
the same nuclei + brown DAB on tumour-cell membranes. Both go through
`her2core.stain.hed_to_rgb`, so `her2core.stain.hematoxylin_od` recovers the
shared nuclear signal from either image (what registration and the tests use).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from her2core.stain import RGB_FROM_HED

_LN_1E6 = float(np.log(1e6))  # her2core.stain / skimage convention

#: faint optical density of the glass and mounting medium (slides are never pure white)
GLASS_OD = np.array([0.004, 0.006, 0.002], np.float32)


@dataclass(frozen=True)
class StainStyle:
    """Per-slide stain amounts: consecutive sections differ in staining and scanning."""

    h_gain: float = 1.0
    e_gain: float = 1.0
    dab_gain: float = 1.0
    counterstain: float = 0.55   # HER2 counterstain relative to the H&E hematoxylin
    brightness: float = 1.0      # multiplies transmitted light (scanner exposure)

    @staticmethod
    def shifted(rng: np.random.Generator) -> StainStyle:
        """A random but plausible stain / brightness shift (consecutive-section HER2)."""
        return StainStyle(h_gain=float(rng.uniform(0.8, 1.2)), e_gain=1.0,
                          dab_gain=float(rng.uniform(0.8, 1.2)),
                          counterstain=float(rng.uniform(0.45, 0.7)),
                          brightness=float(rng.uniform(0.9, 1.04)))


def he_rgb(h: np.ndarray, e: np.ndarray, style: StainStyle = StainStyle()) -> np.ndarray:
    """H&E RGB uint8 from hematoxylin and eosin OD layers."""
    return _compose(h * style.h_gain + GLASS_OD[0], e * style.e_gain + GLASS_OD[1], GLASS_OD[2],
                    style.brightness)


def her2_rgb(h: np.ndarray, dab: np.ndarray, style: StainStyle = StainStyle()) -> np.ndarray:
    """HER2 IHC RGB uint8: hematoxylin counterstain of the nuclei plus membrane DAB."""
    return _compose(h * (style.h_gain * style.counterstain) + GLASS_OD[0], GLASS_OD[1] * 0.5,
                    dab * style.dab_gain + GLASS_OD[2], style.brightness)


def _compose(h, e, d, brightness: float = 1.0, band: int = 512) -> np.ndarray:
    """her2core.stain.hed_to_rgb (same formula) per channel and in row bands: fast and lean."""
    shape = np.broadcast_shapes(np.shape(h), np.shape(e), np.shape(d))
    h, e, d = (np.broadcast_to(np.asarray(v, np.float32), shape) for v in (h, e, d))
    m = (RGB_FROM_HED * -_LN_1E6).astype(np.float32)
    out = np.empty(shape + (3,), np.uint8)
    scale = np.float32(255.0 * brightness)
    for r0 in range(0, shape[0], band):
        sl = slice(r0, r0 + band)
        for c in range(3):
            v = h[sl] * m[0, c] + e[sl] * m[1, c] + d[sl] * m[2, c]
            np.exp(v, out=v)
            v *= scale
            np.rint(v, out=v)
            np.clip(v, 0, 255, out=v)
            out[sl, ..., c] = v
    return out
