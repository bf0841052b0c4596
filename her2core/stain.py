"""Colour deconvolution (Ruifrok & Johnston) into hematoxylin, eosin and DAB optical density.

One place for the stain vectors, so that the sample generator, registration
(hematoxylin is the signal shared by H&E and HER2 IHC), tile QC and the DAB
metrics all agree. Values are optical densities (OD = -log10(I / I0)), >= 0.
"""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

#: skimage's H, E, DAB stain vectors (rows), the standard Ruifrok & Johnston values.
RGB_FROM_HED = rgb_from_hed
HED_FROM_RGB = hed_from_rgb
_LOG_ADJUST = np.log(1e-6)  # skimage's convention: I0 = 1, intensities clipped at 1e-6


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) -> stain concentrations (..., 3) as H, E, DAB optical density (>= 0).

    Same as skimage.color.rgb2hed, but float32 and clipped at 0, so background
    (white) is exactly 0 and values are comparable across images.
    """
    rgb = np.asarray(rgb)
    x = np.maximum(rgb.astype(np.float32) / 255.0, 1e-6)
    stains = (np.log(x) / _LOG_ADJUST) @ HED_FROM_RGB.astype(np.float32)
    return np.maximum(stains, 0.0)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Stain concentrations (..., 3) -> RGB uint8 (inverse of `rgb_to_hed`)."""
    hed = np.asarray(hed, dtype=np.float32)
    log_rgb = -(hed * -_LOG_ADJUST) @ RGB_FROM_HED.astype(np.float32)
    rgb = np.exp(log_rgb)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def hematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density (H, W): the signal H&E and HER2 IHC share (nuclei)."""
    return rgb_to_hed(rgb)[..., 0]


def dab_od(rgb: np.ndarray) -> np.ndarray:
    """DAB optical density (H, W): the brown HER2 membrane stain."""
    return rgb_to_hed(rgb)[..., 2]


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Total optical density (H, W), summed over RGB: 0 on white background."""
    x = np.maximum(np.asarray(rgb, dtype=np.float32) / 255.0, 1e-6)
    return -np.log10(x).sum(axis=-1)
