"""Regions of interest from QuPath GeoJSON, checked against the slide, rasterised onto the tissue mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2core.errors import UserError


def load_rois(path: str | Path, slide_size: tuple[int, int], *, classes: list[str] | None = None):
    """Union of the polygonal ROIs in `path` (level-0 (x, y)), clipped to the slide.

    `classes`: keep only features of these QuPath classes (None = all). An ROI file with
    no polygon, or whose ROIs lie entirely outside the slide, is a UserError.
    """
    import shapely
    from shapely.geometry import box

    from her2core.qupath.geojson import read_features

    feats = read_features(path)
    geoms = [f.geometry for f in feats
             if f.geometry.geom_type in ("Polygon", "MultiPolygon")
             and (classes is None or f.class_name in classes)]
    if not geoms:
        raise UserError(f"{path}: no polygon ROI found" + (f" of class {', '.join(classes)}" if classes else ""))
    roi = shapely.union_all(geoms)
    w, h = slide_size
    clipped = roi.intersection(box(0, 0, w, h))
    if clipped.is_empty or clipped.area <= 0:
        x0, y0, x1, y1 = roi.bounds
        raise UserError(f"{path}: ROIs (x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}) lie outside the slide "
                        f"({w} x {h} px); export them from the H&E image in level-0 pixels")
    return clipped


def rasterize(geom, shape: tuple[int, int], step: float) -> np.ndarray:
    """Boolean (rows, cols) mask of mask pixels whose centre lies in `geom` (pixel = step level-0 px)."""
    import shapely

    rows, cols = shape
    xs = (np.arange(cols) + 0.5) * step
    ys = (np.arange(rows) + 0.5) * step
    gx, gy = np.meshgrid(xs, ys)
    shapely.prepare(geom)
    return shapely.contains_xy(geom, gx.ravel(), gy.ravel()).reshape(rows, cols)
