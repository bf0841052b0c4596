"""Tissue mask of a slide: Otsu on a low-resolution level, morphology, minimum area.

Why these choices (ecosystem notes §4): Otsu on saturation or optical density is cheap and
works on a thumbnail; closing joins fragmented tissue, opening and a minimum area remove
dust and specks; every threshold is exposed so a user can fix pale tissue, and ROIs can
override the mask. `her2 tile` saves the mask as a PNG and as QuPath GeoJSON (level-0 (x, y)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from her2core.errors import UserError

#: The one glass rule (tile QC, the inference's skip of empty tiles, the low-resolution tissue
#: index): a pixel is glass when it is both grey and bright, HSV saturation below
#: GLASS_MAX_SATURATION and value above GLASS_MIN_VALUE. Tissue is every other pixel.
GLASS_MAX_SATURATION = 0.08
GLASS_MIN_VALUE = 0.82
#: A tile whose tissue pixels are fewer than this share is empty glass (inference skips it).
EMPTY_MAX_TISSUE = 0.002


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value in [0, 1] of an RGB uint8 image, without computing hue (cheap)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b).astype(np.float32)   # faster than max(axis=-1)
    mn = np.minimum(np.minimum(r, g), b).astype(np.float32)
    return (mx - mn) / np.maximum(mx, 1.0), mx * np.float32(1 / 255.0)


def glass_pixels(rgb: np.ndarray, *, max_saturation: float = GLASS_MAX_SATURATION,
                 min_value: float = GLASS_MIN_VALUE) -> np.ndarray:
    """Boolean mask of the glass (background) pixels of an RGB uint8 image: saturation below
    `max_saturation` and value above `min_value` (as `saturation_value` defines them), compared
    without a division (value > v <=> max > 255 v; saturation < s <=> max - min < s max), which
    keeps it cheap on every tile of a slide translation."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    return (mx > np.float32(255.0 * min_value)) & ((mx - mn) < np.float32(max_saturation) * mx)


def is_empty_tile(rgb: np.ndarray, max_tissue: float = EMPTY_MAX_TISSUE) -> bool:
    """True when (almost) no pixel of an RGB uint8 tile is tissue by the glass rule.

    The top eighth of the tile is looked at first: when it alone holds enough tissue, the
    whole tile does (tissue only adds up), so most tissue tiles of a slide cost an eighth
    of the rule; otherwise the rest is counted and added. The answer is the same as the
    rule's on the whole tile, bit for bit (glass counted exactly, one division).
    """
    n = rgb.shape[0] * rgb.shape[1] if rgb.ndim == 3 else 0
    if not n:
        return float(1.0 - glass_pixels(rgb).mean()) < max_tissue  # nan < x: False, as before
    split = rgb.shape[0] // 8 if rgb.shape[0] >= 64 else 0
    glass = 0
    if split:
        head = rgb[:split]
        glass = int(np.count_nonzero(glass_pixels(head)))
        if float(1.0 - (glass + n - head.shape[0] * head.shape[1]) / n) >= max_tissue:
            return False  # even if every other pixel were glass
    glass += int(np.count_nonzero(glass_pixels(rgb[split:])))
    return float(1.0 - glass / n) < max_tissue


@dataclass
class TissueConfig:
    """Tissue detection settings (microns, so they mean the same at any scan resolution)."""

    mask_mpp: float = 8.0          # resolution of the mask
    channel: str = "saturation"    # "saturation" or "od" (total optical density)
    threshold: float | None = None  # fixed threshold on the channel; None = Otsu
    min_threshold: float = 0.04    # Otsu is never allowed below this (empty glass has noise)
    smooth_um: float = 8.0         # Gaussian blur before thresholding
    closing_um: float = 24.0
    opening_um: float = 16.0
    min_area_um2: float = 4000.0   # smaller connected components are dropped
    fill_holes_um2: float = 2000.0  # holes smaller than this are filled


@dataclass
class TissueMask:
    """Boolean mask; mask pixel (r, c) covers level-0 x in [c*step, (c+1)*step), same for y."""

    mask: np.ndarray
    step: float          # level-0 pixels per mask pixel
    mpp: float           # microns per mask pixel
    threshold: float
    channel: str

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def coverage(self, x0: float, y0: float, w: float, h: float) -> float:
        """Fraction of the level-0 box covered by tissue (area-weighted on the mask grid)."""
        return box_coverage(self.mask, self.step, x0, y0, w, h)

    def contains_xy(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        c = np.floor(xy[:, 0] / self.step).astype(int)
        r = np.floor(xy[:, 1] / self.step).astype(int)
        ok = (r >= 0) & (c >= 0) & (r < self.mask.shape[0]) & (c < self.mask.shape[1])
        out = np.zeros(len(xy), dtype=bool)
        out[ok] = self.mask[r[ok], c[ok]]
        return out

    def to_geometry(self):
        """Tissue as a shapely (Multi)Polygon in level-0 (x, y)."""
        return mask_to_geometry(self.mask, self.step)

    def save_png(self, path: str | Path) -> None:
        from her2core.util.atomic import write_png

        g = (self.mask.astype(np.uint8) * 255)
        write_png(path, np.repeat(g[..., None], 3, axis=2))


def box_coverage(mask: np.ndarray, step: float, x0: float, y0: float, w: float, h: float) -> float:
    """Area fraction of the level-0 box [x0, x0+w) x [y0, y0+h) that lies on True mask pixels."""
    c0, c1 = x0 / step, (x0 + w) / step
    r0, r1 = y0 / step, (y0 + h) / step
    ci0, ci1 = int(np.floor(c0)), int(np.ceil(c1))
    ri0, ri1 = int(np.floor(r0)), int(np.ceil(r1))
    H, W = mask.shape
    cs = np.arange(ci0, ci1)
    rs = np.arange(ri0, ri1)
    wc = np.clip(np.minimum(cs + 1, c1) - np.maximum(cs, c0), 0, None)
    wr = np.clip(np.minimum(rs + 1, r1) - np.maximum(rs, r0), 0, None)
    okc = (cs >= 0) & (cs < W)
    okr = (rs >= 0) & (rs < H)
    if not okc.any() or not okr.any():
        return 0.0
    sub = mask[np.ix_(rs[okr], cs[okc])].astype(np.float64)
    covered = wr[okr] @ sub @ wc[okc]
    return float(covered / ((r1 - r0) * (c1 - c0)))


def mask_to_geometry(mask: np.ndarray, step: float):
    """Polygons (with holes) tracing the True pixels of `mask`, scaled to level-0 (x, y)."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon, box
    from skimage.measure import find_contours, label

    polys = []
    lab = label(mask, connectivity=2)
    for k in range(1, lab.max() + 1):
        comp = np.pad(lab == k, 1)
        for cont in find_contours(comp.astype(np.float32), 0.5):
            if len(cont) < 4:
                continue
            # contour (row, col) on the padded mask -> level-0 (x, y) of pixel edges
            xy = np.stack([(cont[:, 1] - 1 + 0.5) * step, (cont[:, 0] - 1 + 0.5) * step], axis=1)
            p = Polygon(xy)
            if p.is_valid and p.area > 0:
                polys.append(p)
            elif p.area > 0:
                polys.append(shapely.make_valid(p))
    if not polys:
        return MultiPolygon()
    # outer contours and hole contours: symmetric difference rebuilds the holes
    geom = polys[0]
    for p in polys[1:]:
        geom = geom.symmetric_difference(p)
    h, w = mask.shape
    return geom.intersection(box(0, 0, w * step, h * step))


def tissue_signal(rgb: np.ndarray, channel: str) -> np.ndarray:
    if channel == "saturation":
        from skimage.color import rgb2hsv

        return rgb2hsv(rgb)[..., 1].astype(np.float32)
    if channel == "od":
        from her2core.stain import optical_density

        return optical_density(rgb)
    raise UserError(f"tissue channel must be 'saturation' or 'od', got {channel!r}")


def detect_tissue(slide, config: TissueConfig | None = None, *, require: bool = True) -> TissueMask:
    """Tissue mask of `slide` at `config.mask_mpp`; raises UserError when none is found (if `require`)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_holes, remove_small_objects

    from her2core.slide.sampling import grid_xy, sample_rgb

    cfg = config or TissueConfig()
    mpp0 = slide.require_mpp()
    mpp = max(cfg.mask_mpp, mpp0)
    step = mpp / mpp0
    w, h = slide.dimensions
    mw, mh = max(1, int(np.ceil(w / step))), max(1, int(np.ceil(h / step)))
    off = (step - 1) / 2
    rgb = sample_rgb(slide, grid_xy(off, off, mw, mh, step), mpp)
    sig = tissue_signal(rgb, cfg.channel)
    if cfg.smooth_um > 0:
        sig = ndi.gaussian_filter(sig, cfg.smooth_um / mpp / 2)
    if cfg.threshold is not None:
        thr = float(cfg.threshold)
    else:
        thr = float(threshold_otsu(sig)) if float(sig.max()) > float(sig.min()) else float(sig.max())
        thr = max(thr, cfg.min_threshold)
    mask = sig > thr
    if cfg.closing_um > 0:
        mask = ndi.binary_closing(mask, disk(max(1, round(cfg.closing_um / mpp / 2))), border_value=0)
    if cfg.opening_um > 0:
        mask = ndi.binary_opening(mask, disk(max(1, round(cfg.opening_um / mpp / 2))))
    px_area = mpp * mpp
    if cfg.min_area_um2 > 0:
        mask = remove_small_objects(mask, max_size=max(1, int(cfg.min_area_um2 / px_area)))
    if cfg.fill_holes_um2 > 0:
        mask = remove_small_holes(mask, max_size=max(1, int(cfg.fill_holes_um2 / px_area)))
    tm = TissueMask(mask=mask.astype(bool), step=step, mpp=mpp, threshold=thr, channel=cfg.channel)
    if require and not tm.mask.any():
        raise UserError(f"{slide.path}: no tissue found (threshold {thr:.3f} on {cfg.channel} at "
                        f"{mpp:g} µm/px); lower --tissue-threshold or check the slide")
    return tm
