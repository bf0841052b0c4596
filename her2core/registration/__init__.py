"""Registration: move the HER2 slide onto the H&E slide, apply the result, review it.

    from her2core.registration import register, review, load_transform
    res = register("he.ome.tif", "her2.ome.tif", "reg/")      # transform.json, her2_registered.ome.tif, review
    t = load_transform("reg/transform.json")
    he_xy = t.her2_to_he(her2_xy)                              # points, (N, 2) level-0 (x, y)
    feats = map_features(read_features("rois_her2.geojson"), t)  # QuPath GeoJSON HER2 -> H&E

See `transform.py` for the transform.json schema and the field's direction, `dense.py` for the
non-rigid stage and `review.py` for how the residual is measured.
"""

from __future__ import annotations

from her2core.registration.mapping import map_features, map_points
from her2core.registration.pipeline import RegistrationConfig, RegistrationResult, register
from her2core.registration.review import review
from her2core.registration.transform import Transform, load_transform

__all__ = ["RegistrationConfig", "RegistrationResult", "Transform", "load_transform", "map_features",
           "map_points", "register", "review"]
