"""How close a virtual HER2 slide is to the real one, on tiles of the ROI (a batch's metrics.json).

Tiles: a grid of `tile`-pixel squares over the virtual slide (working mpp). A
tile is scored when at least 90 % of it lies inside the ROI polygons (all of
the translated region without ROI) and the real HER2 tile holds tissue (its few pixels outside the ROI are set white, as the
virtual slide's are). The
real HER2 slide must be registered onto the H&E (`her2 register`): its level-0
frame is the H&E's, scaled by the ratio of their microns per pixel, so H&E
level-0 (x, y) reads HER2 level-0 (x, y) · mpp_he / mpp_her2.
Metrics come from `evaluation.tile_metrics` (the same columns as `her2 evaluate`), per tile,
then the mean over tiles (non-finite values, e.g. PSNR of identical tiles, left out of the mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.evaluation.tile_metrics import tile_metrics
from her2core.qupath.rois import as_roi, rasterize
from her2core.slide.tissue import is_empty_tile

INSIDE_MIN = 0.9


def slide_metrics(virtual_path: str | Path, her2_path: str | Path, roi=None, *, tile: int = 256,
                  batch: int = 16) -> dict:
    """Per-tile and mean metrics of the virtual slide against the registered real HER2 slide."""
    from shapely.geometry import box

    from her2core.slide import open_slide

    roi_geom, _ = as_roi(roi)
    with open_slide(virtual_path) as v, open_slide(her2_path) as real:
        props = v.properties
        x0, y0 = v.origin_xy
        mpp_he = float(props["slide_mpp"])
        work = v.require_mpp()
        f = work / mpp_he  # H&E level-0 px per virtual px
        mpp_real = real.require_mpp()
        k = mpp_he / mpp_real
        w, h = v.dimensions
        region = box(x0, y0, x0 + w * f, y0 + h * f)
        if not region.intersects(box(0, 0, real.dimensions[0] / k, real.dimensions[1] / k)):
            raise UserError(f"{her2_path}: HER2 slide does not cover the translated region; "
                            "is it registered onto this H&E slide?")
        preds, targets, where = [], [], []
        rows: list[dict] = []

        def flush():
            if preds:
                for (c, r), m in zip(where, tile_metrics(np.stack(preds), np.stack(targets), work)):
                    rows.append({"col": c, "row": r, **m})
            preds.clear()
            targets.clear()
            where.clear()

        for r in range(0, h - tile + 1, tile):
            for c in range(0, w - tile + 1, tile):
                lx, ly = x0 + c * f, y0 + r * f
                if roi_geom is not None:
                    cell = box(lx, ly, lx + tile * f, ly + tile * f)
                    if roi_geom.intersection(cell).area < INSIDE_MIN * cell.area:
                        continue
                target = real.read_at_mpp((lx * k, ly * k), (tile * work, tile * work), work)
                if target.shape[:2] != (tile, tile) or is_empty_tile(target):
                    continue
                if roi_geom is not None:  # the virtual slide is white outside the ROI: so is this
                    inside = rasterize(roi_geom, (r, r + tile), (c, c + tile), origin=(x0, y0), scale=f)
                    target = np.where(inside[..., None], target, np.uint8(255))
                preds.append(v.read_region((c, r), 0, (tile, tile)))
                targets.append(target)
                where.append((c, r))
                if len(preds) == batch:
                    flush()
        flush()
    names = [k for k in (rows[0] if rows else {}) if k not in ("col", "row")]
    mean = {n: _finite_mean([row[n] for row in rows]) for n in names}
    return {"tile": tile, "mpp": work, "tiles": len(rows), "mean": mean, "per_tile": rows,
            "her2_slide": Path(her2_path).name,
            "note": "tiles of the ROI at the working mpp; see her2core.evaluation.slide_metrics"}


def _finite_mean(values) -> float | None:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None
