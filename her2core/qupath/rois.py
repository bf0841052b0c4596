"""Regions of interest: polygonal QuPath annotations in level-0 (x, y), and their raster masks.

One loader and one rasteriser for every step that honours ROIs (`her2 tile`, `her2 translate`,
the slide metrics of `her2 batch`, the napari widgets), so an ROI covers the same pixels
everywhere: a pixel is inside when its centre is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from her2core.errors import UserError


def roi_union(features, source: str = "ROI", *, classes: list[str] | None = None) -> BaseGeometry:
    """Union of the polygonal features (of `classes`, None = all); a UserError if there are none."""
    polys = [f.geometry for f in features
             if isinstance(f.geometry, (Polygon, MultiPolygon)) and not f.geometry.is_empty
             and (classes is None or f.class_name in classes)]
    if not polys:
        kind = f" of class {', '.join(classes)}" if classes else ""
        raise UserError(f"{source}: no polygon annotations{kind} found; draw the ROI as an area "
                        "annotation in QuPath and export it as GeoJSON")
    return unary_union(polys)


def load_rois(path: str | Path, slide_size: tuple[int, int] | None = None, *,
              classes: list[str] | None = None) -> BaseGeometry:
    """The ROI of a GeoJSON file, clipped to the slide (`slide_size` = level-0 (w, h)) if given;
    ROIs entirely outside the slide are a UserError."""
    from her2core.qupath.geojson import read_features

    roi = roi_union(read_features(path), str(path), classes=classes)
    if slide_size is None:
        return roi
    w, h = slide_size
    clipped = roi.intersection(box(0, 0, w, h))
    if clipped.is_empty or clipped.area <= 0:
        x0, y0, x1, y1 = roi.bounds
        raise UserError(f"{path}: ROIs (x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}) lie outside the "
                        f"slide ({w} x {h} px); export them from the H&E image in level-0 pixels")
    return clipped


def as_roi(roi) -> tuple[BaseGeometry | None, str]:
    """(geometry, its source for messages) from None, a geometry, a GeoJSON path or features."""
    if roi is None:
        return None, "ROI"
    if isinstance(roi, BaseGeometry):
        return roi, "ROI"
    if isinstance(roi, (str, Path)):
        return load_rois(roi), str(roi)
    return roi_union(list(roi)), "ROI"


def rasterize(geom: BaseGeometry, rows: tuple[int, int], cols: tuple[int, int], *,
              origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> np.ndarray:
    """Mask of the pixels [r0, r1) × [c0, c1) of a grid whose pixel (0, 0) starts at level-0
    `origin` and spans `scale` level-0 px, True where the pixel centre lies inside `geom`."""
    from skimage.draw import polygon as fill_polygon

    (r0, r1), (c0, c1) = rows, cols
    mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    parts = geom.geoms if hasattr(geom, "geoms") else [geom]

    def to_px(coords):
        a = np.asarray(coords, dtype=np.float64)
        return ((a[:, 1] - origin[1]) / scale - 0.5 - r0,
                (a[:, 0] - origin[0]) / scale - 0.5 - c0)

    for p in parts:
        if not isinstance(p, Polygon) or p.is_empty:
            continue
        rr, cc = fill_polygon(*to_px(p.exterior.coords), shape=mask.shape)
        part = np.zeros_like(mask)
        part[rr, cc] = True
        for hole in p.interiors:
            rr, cc = fill_polygon(*to_px(hole.coords), shape=mask.shape)
            part[rr, cc] = False
        mask |= part
    return mask
