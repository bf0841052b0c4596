"""What part of a slide to translate, at which scale, and how its tiles are read.

A region is a level-0 rectangle (x, y, w, h) of the H&E slide: the whole slide,
a `--region`, or the bounding box of the ROI polygons. It is translated at the
model's working microns per pixel (`work_mpp`); output pixel (row, col) covers
level-0 [x0 + col·f, x0 + (col+1)·f) with f = work_mpp / slide_mpp. Tiles are
read with `Slide.read_at_mpp`, which resamples from the cheapest fine-enough
level; tile margins beyond the region read real slide pixels (context), and
beyond the slide white.

ROI polygons: the bounding box of their union is translated; tiles that do not
touch the polygons are not run through the model, and output pixels whose
centre lies outside every polygon are set to white.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from her2core.errors import UserError
from her2core.inference.blend import AxisGrid
from her2core.qupath.rois import rasterize
from her2core.slide.base import MAX_SLIDE_PIXELS
from her2core.slide.mpp import MPP_RANGE, plausible_mpp
from her2core.slide.tissue import GLASS_MAX_SATURATION, glass_pixels

#: The low-resolution tissue index calls a pixel glass only when it is greyer and brighter than
#: the glass rule of `slide.tissue` asks (and dilates the rest): it must never skip a tile that
#: `is_empty_tile` would run at full resolution.
INDEX_GLASS_MAX_SATURATION = GLASS_MAX_SATURATION / 2
INDEX_GLASS_MIN_VALUE = 0.88


@dataclass(frozen=True)
class RegionPlan:
    """Geometry of one slide translation: region, scale, tile grid, optional ROI."""

    x0: int
    y0: int
    w0: int
    h0: int
    slide_mpp: float
    work_mpp: float
    tile: int
    overlap: int
    roi_wkb: bytes | None = None  # ROI union in level-0 (x, y), as WKB (hashable, exact)

    @property
    def scale(self) -> float:
        """Level-0 pixels per output pixel."""
        return self.work_mpp / self.slide_mpp

    @property
    def out_size(self) -> tuple[int, int]:
        """Output (width, height) in pixels at work_mpp."""
        return (max(1, round(self.w0 / self.scale)), max(1, round(self.h0 / self.scale)))

    @cached_property
    def rows(self) -> AxisGrid:
        return AxisGrid(self.out_size[1], self.tile, self.overlap)

    @cached_property
    def cols(self) -> AxisGrid:
        return AxisGrid(self.out_size[0], self.tile, self.overlap)

    @cached_property
    def roi(self) -> BaseGeometry | None:
        if self.roi_wkb is None:
            return None
        import shapely

        g = shapely.from_wkb(self.roi_wkb)
        shapely.prepare(g)
        return g

    @property
    def n_tiles(self) -> int:
        return self.rows.count * self.cols.count

    def tile_origin(self, k: int, j: int) -> tuple[float, float]:
        """Level-0 (x, y) of tile (row k, column j)'s top-left corner."""
        f = self.scale
        return (self.x0 + self.cols.position(j) * f, self.y0 + self.rows.position(k) * f)

    def tile_touches_roi(self, k: int, j: int) -> bool:
        if self.roi is None:
            return True
        x, y = self.tile_origin(k, j)
        s = self.tile * self.scale
        return bool(self.roi.intersects(box(x, y, x + s, y + s)))

    def read_tile(self, slide, k: int, j: int) -> np.ndarray:
        """H&E tile (T, T, 3) uint8 at work_mpp."""
        size_um = self.tile * self.work_mpp
        img = slide.read_at_mpp(self.tile_origin(k, j), (size_um, size_um), self.work_mpp)
        if img.shape[:2] != (self.tile, self.tile):  # rounding guard; read_at_mpp rounds sizes
            from her2core.slide.reader import resize_rgb

            img = resize_rgb(img, (self.tile, self.tile))
        return img

    def roi_mask(self, r: tuple[int, int], c: tuple[int, int]) -> np.ndarray | None:
        """Boolean (rows, cols) mask of output pixels inside the ROI; None without ROI."""
        if self.roi is None:
            return None
        return rasterize(self.roi, r, c, origin=(self.x0, self.y0), scale=self.scale)

    def describe(self) -> dict:
        """JSON-able identity of the plan (for the resume journal and output properties)."""
        return {
            "region_xywh": [self.x0, self.y0, self.w0, self.h0],
            "slide_mpp": self.slide_mpp,
            "work_mpp": self.work_mpp,
            "tile": self.tile,
            "overlap": self.overlap,
            "out_wh": list(self.out_size),
            "roi_sha256": None if self.roi_wkb is None else hashlib.sha256(self.roi_wkb).hexdigest(),
        }


class TissueIndex:
    """Where a slide may hold tissue, from a low-resolution level: lets glass tiles be skipped
    without reading them at full resolution (most of a whole slide is glass).

    Conservative: thresholds are looser than `is_empty_tile`'s and the mask is dilated, so a
    tile it calls glass has no tissue a full-resolution read would find. Slides without a
    level at least 8x smaller than level 0 get no index (everything "may hold tissue").
    """

    MAX_SIDE = 2048

    def __init__(self, slide):
        self.mask = None
        self.ds = 1.0
        w0, h0 = slide.dimensions
        if max(slide.level_downsamples) < 8 or max(w0, h0) <= 4 * self.MAX_SIDE:
            return
        thumb, ds = slide.thumbnail(self.MAX_SIDE)
        mask = ~glass_pixels(thumb, max_saturation=INDEX_GLASS_MAX_SATURATION,
                             min_value=INDEX_GLASS_MIN_VALUE)
        from scipy import ndimage as ndi

        self.mask = ndi.binary_dilation(mask, iterations=2)
        self.ds = float(ds)

    def may_hold_tissue(self, x: float, y: float, size: float) -> bool:
        """Level-0 square (x, y, size) overlaps possible tissue."""
        if self.mask is None:
            return True
        h, w = self.mask.shape
        c0, r0 = max(0, int(x / self.ds) - 1), max(0, int(y / self.ds) - 1)
        c1, r1 = min(w, int((x + size) / self.ds) + 2), min(h, int((y + size) / self.ds) + 2)
        if c1 <= c0 or r1 <= r0:
            return False
        return bool(self.mask[r0:r1, c0:c1].any())


def parse_region(text: str) -> tuple[int, int, int, int]:
    """'x,y,w,h' (level-0 pixels) -> ints; a UserError when malformed."""
    try:
        x, y, w, h = (round(float(v)) for v in text.split(","))
    except ValueError:
        raise UserError(f"--region {text!r}: give four numbers x,y,w,h in level-0 pixels") from None
    if w <= 0 or h <= 0:
        raise UserError(f"--region {text!r}: width and height must be positive")
    return x, y, w, h


def plan_region(slide, *, work_mpp: float, tile: int, overlap: int,
                region: tuple[int, int, int, int] | None = None,
                roi: BaseGeometry | None = None, roi_source: str = "ROI") -> RegionPlan:
    """Check the region/ROI against the slide and build the plan (clipped to the slide)."""
    mpp = slide.require_mpp()
    sw, sh = slide.dimensions
    if tile < 16 or tile % 8:
        raise UserError(f"--tile {tile}: give a multiple of 8, at least 16")
    if not (0 <= overlap <= tile // 2):
        raise UserError(f"--overlap {overlap}: must be between 0 and tile/2 ({tile // 2})")
    slide_box = box(0, 0, sw, sh)
    roi_wkb = None
    if roi is not None:
        if region is not None:
            raise UserError("give either --roi or --region, not both")
        if not roi.intersects(slide_box) or roi.intersection(slide_box).area <= 0:
            bx = [round(v) for v in roi.bounds]
            raise UserError(f"{roi_source}: ROI (bounds x {bx[0]}..{bx[2]}, y {bx[1]}..{bx[3]}) lies "
                            f"outside the slide ({sw} x {sh} px); was it drawn on another image?")
        roi = roi.intersection(slide_box)
        minx, miny, maxx, maxy = roi.bounds
        region = (int(np.floor(minx)), int(np.floor(miny)),
                  int(np.ceil(maxx)) - int(np.floor(minx)), int(np.ceil(maxy)) - int(np.floor(miny)))
        roi_wkb = roi.wkb
    if region is None:
        region = (0, 0, sw, sh)
    x, y, w, h = region
    x1, y1 = min(x + w, sw), min(y + h, sh)
    x, y = max(x, 0), max(y, 0)
    if x1 <= x or y1 <= y:
        raise UserError(f"region {list(region)} lies outside the slide ({sw} x {sh} px)")
    if not plausible_mpp(float(work_mpp)):
        raise UserError(f"--work-mpp {work_mpp:g}: microns per pixel must be within "
                        f"{MPP_RANGE[0]:g}..{MPP_RANGE[1]:g}")
    plan = RegionPlan(x, y, x1 - x, y1 - y, float(mpp), float(work_mpp), int(tile), int(overlap),
                      roi_wkb)
    ow, oh = plan.out_size
    if ow * oh > MAX_SLIDE_PIXELS:  # what an absurd --work-mpp against the slide's µm/px asks for
        raise UserError(f"--work-mpp {work_mpp:g} on a {mpp:g} µm/px slide makes a {ow} x {oh} px "
                        f"output, larger than any slide ({MAX_SLIDE_PIXELS:.3g} px); check "
                        "--work-mpp and the slide's --mpp")
    return plan


