"""Map points and QuPath GeoJSON features between the two slides with a registration transform."""

from __future__ import annotations

import copy

import numpy as np

from her2core.registration.transform import Transform


def map_points(transform: Transform, xy, *, direction: str = "her2_to_he") -> np.ndarray:
    """(N, 2) level-0 (x, y) points from one slide to the other ('her2_to_he' or 'he_to_her2')."""
    if direction == "her2_to_he":
        return transform.her2_to_he(xy)
    if direction == "he_to_her2":
        return transform.he_to_her2(xy)
    raise ValueError(f"direction must be 'her2_to_he' or 'he_to_her2', got {direction!r}")


def map_features(features, transform: Transform, *, direction: str = "her2_to_he",
                 max_segment_px: float | None = None) -> list:
    """New `her2core.qupath.geojson.Feature`s with geometries mapped by the transform.

    Edges are first split into segments no longer than `max_segment_px` (default: half the
    field spacing), so that a locally deformed outline follows the field, not just its corners.
    """
    import shapely

    seg = max_segment_px or (transform.field_spacing / 2 if transform.field is not None else None)

    def fn(pts: np.ndarray) -> np.ndarray:
        return map_points(transform, pts, direction=direction)

    out = []
    for f in features:
        g = copy.copy(f)
        geom = f.geometry
        if seg and geom.geom_type not in ("Point", "MultiPoint"):
            geom = shapely.segmentize(geom, seg)
        g.geometry = shapely.transform(geom, fn)
        g.extra = copy.deepcopy(f.extra)
        g.measurements = dict(f.measurements)
        g.metadata = dict(f.metadata)
        out.append(g)
    return out
