"""Slide artefacts at known places (blur, dark shade, folded/doubled strip, pen mark) for tile-QC tests.

Each artefact changes an RGB image in place inside a level-0 box and is recorded as
{"kind", "slide", "box_xy": [x0, y0, x1, y1]} (x1, y1 exclusive) in truth.json.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from her2core.stain import hed_to_rgb, optical_density, rgb_to_hed

KINDS = ("blur", "shade", "fold", "pen")


def place_boxes(rng: np.random.Generator, size_xy: tuple[int, int], n: int, box_px: int,
                tissue: np.ndarray | None = None) -> list[list[int]]:
    """`n` non-overlapping boxes, one per cell of a grid, each put where it covers most tissue.

    `tissue`: optional boolean mask of the image at any coarser scale (artefacts on
    glass would be invisible to QC and useless for testing it).
    """
    w, h = size_xy
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    cw, ch = w // cols, h // rows
    bw, bh = min(box_px, cw - 8), min(box_px, ch - 8)
    boxes = []
    for k in range(n):
        r, c = divmod(k, cols)
        best, best_cover = None, -1.0
        for _ in range(12 if tissue is not None else 1):
            x0 = c * cw + int(rng.integers(4, max(5, cw - bw - 4)))
            y0 = r * ch + int(rng.integers(4, max(5, ch - bh - 4)))
            cover = 0.0
            if tissue is not None:
                fy, fx = tissue.shape[0] / h, tissue.shape[1] / w
                sub = tissue[int(y0 * fy):max(int(y0 * fy) + 1, int((y0 + bh) * fy)),
                             int(x0 * fx):max(int(x0 * fx) + 1, int((x0 + bw) * fx))]
                cover = float(sub.mean()) if sub.size else 0.0
            if cover > best_cover:
                best, best_cover = [x0, y0, x0 + bw, y0 + bh], cover
        boxes.append(best)
    return boxes


def apply(rgb: np.ndarray, kind: str, box: list[int], mpp: float, rng: np.random.Generator) -> None:
    """Apply one artefact of `kind` to `rgb` (H, W, 3) uint8 inside `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    region = rgb[y0:y1, x0:x1]
    if kind == "blur":
        sigma = 3.0 / mpp  # out of focus by several microns
        out = np.stack([ndi.gaussian_filter(region[..., c].astype(np.float32), sigma) for c in range(3)], -1)
    elif kind == "shade":
        yy, xx = np.mgrid[0:region.shape[0], 0:region.shape[1]]
        edge = np.minimum.reduce([xx, yy, region.shape[1] - 1 - xx, region.shape[0] - 1 - yy]).astype(np.float32)
        ramp = np.clip(edge / max(1.0, 0.1 * min(region.shape[:2])), 0, 1)
        out = region.astype(np.float32) * (1.0 - 0.55 * ramp)[..., None]
    elif kind == "fold":
        # tissue folded over itself: the OD of a shifted copy adds to the strip
        od = rgb_to_hed(region)
        shift = round(25.0 / mpp)
        doubled = od + np.roll(od, shift, axis=1) + np.roll(od, shift // 2, axis=0) * 0.5
        out = hed_to_rgb(doubled).astype(np.float32)
    elif kind == "pen":
        hgt, wid = region.shape[:2]
        yy, xx = np.mgrid[0:hgt, 0:wid]
        phase = rng.uniform(0, 2 * np.pi)
        centre = hgt / 2 + 0.3 * hgt * np.sin(2 * np.pi * xx / max(wid, 1) + phase)
        half = max(2.0, 0.08 * hgt)
        ink = np.clip(half - np.abs(yy - centre), 0, 1)[..., None]
        colour = np.array([20, 120, 60], np.float32)  # green marker, nearly opaque
        out = region.astype(np.float32) * (1 - 0.95 * ink) + colour * 0.95 * ink
    else:
        raise ValueError(f"unknown artefact kind {kind!r}; use one of {KINDS}")
    rgb[y0:y1, x0:x1] = np.clip(np.rint(out), 0, 255).astype(np.uint8)


def tissue_mask(rgb: np.ndarray, step: int = 8) -> np.ndarray:
    """Coarse tissue mask (every `step`-th pixel): optical density above faint glass."""
    return optical_density(rgb[::step, ::step]) > 0.25
