"""QuPath GeoJSON <-> napari Shapes, names and classes kept.

The geometry work (dialects, (x, y) <-> (row, col), holes, repair) is
her2core.qupath.geojson's; this module only maps its PolygonRC records onto a
Shapes layer's data, shape types and features table, and back. An ROI Shapes
layer lives in the H&E layer's level-0 pixel frame (same scale and translate),
so GeoJSON coordinates need no rescaling either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_her2stain import _layers as L

FEATURE_COLUMNS = ("name", "class", "object_type", "feature_index", "is_hole")
DEFAULT_EDGE = (1.0, 0.85, 0.0, 1.0)  # yellow: visible on H&E and on HER2


def feature_defaults() -> dict:
    return {"name": "", "class": "", "object_type": "annotation", "feature_index": -1,
            "is_hole": False}


def rois_layer_kwargs(frame_layer=None, name: str = "ROIs") -> dict:
    """Shapes-layer kwargs in the pixel frame of `frame_layer` (the H&E), or in µm-less pixels."""
    kw = {
        "name": name,
        "edge_width": 4,
        "edge_color": [DEFAULT_EDGE],
        "face_color": [(1.0, 1.0, 1.0, 0.0)],
        "metadata": L.meta(L.ROLE_ROIS, None),
    }
    if frame_layer is not None:
        kw["scale"] = tuple(frame_layer.scale[-2:])
        kw["translate"] = tuple(frame_layer.translate[-2:])
        kw["units"] = L.UNITS
        kw["metadata"] = L.meta(L.ROLE_ROIS, L.info(frame_layer).get("mpp"),
                                frame=frame_layer.name)
    return kw


def shapes_from_features(features, frame_layer=None, name: str = "ROIs") -> tuple:
    """LayerDataTuple ('shapes') of QuPath features (polygons and lines; points are not ROIs)."""
    from her2core.qupath.geojson import features_to_polygons_rc

    polys = [p for p in features_to_polygons_rc(features) if p.shape_type in ("polygon", "path")]
    data = [np.asarray(p.vertices, dtype=float) for p in polys]
    table = {
        "name": [p.name or "" for p in polys],
        "class": [p.class_name or "" for p in polys],
        "object_type": [p.object_type or "annotation" for p in polys],
        "feature_index": [-1 if p.feature_index is None else int(p.feature_index) for p in polys],
        "is_hole": [bool(p.is_hole) for p in polys],
    }
    edge = [_rgba(p.color) for p in polys]
    kw = rois_layer_kwargs(frame_layer, name)
    kw.update({
        "shape_type": [p.shape_type for p in polys],
        "features": table,
        "feature_defaults": feature_defaults(),
        "edge_color": edge if edge else kw["edge_color"],
        "face_color": [(1.0, 1.0, 1.0, 0.0)] * max(len(polys), 1),
    })
    kw["features"] = _typed_table(table)
    if not polys:
        kw.pop("shape_type")
    return (data, kw, "shapes")


def _typed_table(table: dict):
    """Features table with fixed dtypes, so an empty layer still takes string defaults."""
    import pandas as pd

    dtypes = {"name": object, "class": object, "object_type": object, "feature_index": "int64",
              "is_hole": bool}
    return pd.DataFrame({k: pd.Series(table[k], dtype=dtypes[k]) for k in FEATURE_COLUMNS})


def _rgba(color) -> tuple:
    if color is None:
        return DEFAULT_EDGE
    r, g, b = (float(c) / 255.0 for c in list(color)[:3])
    return (r, g, b, 1.0)


def features_from_shapes(data, shape_types, table=None) -> list:
    """QuPath Features from Shapes data in level-0 (row, col), using its features table.

    Rectangles and ellipses become polygons; shapes imported from one multi-part
    feature (same `feature_index`) are merged back, holes included.
    """
    from her2core.qupath.geojson import PolygonRC, polygons_rc_to_features

    n = len(data)
    cols = _columns(table, n)
    items = []
    for i, (verts, kind) in enumerate(zip(data, shape_types)):
        verts = np.asarray(verts, dtype=float)[:, -2:]
        if kind == "ellipse":
            verts, kind = ellipse_polygon(verts), "polygon"
        elif kind == "rectangle":
            kind = "polygon"
        elif kind == "line":
            kind = "path"
        fi = cols["feature_index"][i]
        fi = None if fi is None or (isinstance(fi, float) and np.isnan(fi)) or int(fi) < 0 else int(fi)
        items.append(PolygonRC(
            vertices=verts, shape_type=kind,
            name=cols["name"][i] or None, class_name=cols["class"][i] or None,
            color=None, feature_index=fi, is_hole=bool(cols["is_hole"][i]),
            object_type=cols["object_type"][i] or "annotation"))
    return polygons_rc_to_features(items)


def _columns(table, n: int) -> dict:
    defaults = feature_defaults()
    out = {}
    for col in FEATURE_COLUMNS:
        if table is not None and col in table:
            vals = list(table[col])
        else:
            vals = [defaults[col]] * n
        out[col] = [defaults[col] if _missing(v) else v for v in vals]
    return out


def _missing(v) -> bool:
    try:
        return v is None or (isinstance(v, float) and np.isnan(v))
    except TypeError:  # pragma: no cover
        return False


def ellipse_polygon(corners: np.ndarray, n: int = 64) -> np.ndarray:
    """napari stores an ellipse as its 4 bounding-box corners; sample its outline."""
    c = np.asarray(corners, dtype=float)
    centre = c.mean(axis=0)
    a = (c[1] - c[0]) / 2.0  # half of one side
    b = (c[3] - c[0]) / 2.0  # half of the other
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


# -- npe2 reader / writer ---------------------------------------------------------
def napari_get_geojson_reader(path):
    if isinstance(path, (list, tuple)):
        return None
    p = Path(path)
    name = p.name.lower()
    if not p.is_file() or not name.endswith((".geojson", ".json")):
        return None
    if name.endswith(".json") and not _looks_like_geojson(p):
        return None  # transform.json, review.json, ... are not ROIs
    return read_geojson


def _looks_like_geojson(path: Path) -> bool:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return False
    if isinstance(doc, list):
        return all(isinstance(f, dict) and f.get("type") == "Feature" for f in doc)
    return isinstance(doc, dict) and doc.get("type") in ("FeatureCollection", "Feature")


def read_geojson(path) -> list[tuple]:
    """QuPath GeoJSON as an ROI Shapes layer in the frame of the viewer's H&E layer, if any."""
    from her2core.qupath.geojson import read_features

    features = read_features(path)
    frame = None
    try:
        import napari

        viewer = napari.current_viewer()
        frame = L.first_with_role(viewer, L.ROLE_HE) if viewer is not None else None
    except Exception:  # noqa: BLE001 - no viewer: pixel frame
        frame = None
    return [shapes_from_features(features, frame, name=Path(path).stem)]


def write_geojson(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer: a Shapes layer (level-0 (row, col)) as QuPath GeoJSON."""
    from her2core.qupath.geojson import write_features

    feats = features_from_shapes(data, attributes.get("shape_type", ["polygon"] * len(data)),
                                 attributes.get("features"))
    if not str(path).lower().endswith((".geojson", ".json")):
        path = str(path) + ".geojson"
    return [str(write_features(path, feats))]


def export_layer(layer, path) -> Path:
    """Write an ROI Shapes layer to `path` as QuPath GeoJSON."""
    from her2core.qupath.geojson import write_features

    feats = features_from_shapes(layer.data, layer.shape_type, layer.features)
    return write_features(path, feats)
