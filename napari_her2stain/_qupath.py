"""QuPath GeoJSON <-> napari Shapes, names and classes kept.

The geometry work (dialects, (x, y) <-> (row, col), holes, repair) is
her2core.qupath.geojson's; this module only maps its PolygonRC records onto a
Shapes layer's data, shape types and features table, and back. An imported ROI
Shapes layer lives in the H&E layer's level-0 pixel frame (same scale and
translate). Export goes through world coordinates, so a layer drawn with any
scale and translate (e.g. in µm) still comes out in the H&E's level-0 pixels.
The features table keeps what QuPath needs back: object id (import_measurements
.groovy matches by it), class colour and measurements (as JSON text).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from napari_her2stain import _layers as L

FEATURE_COLUMNS = ("name", "class", "object_type", "feature_index", "is_hole", "id",
                   "class_color", "measurements")
DEFAULT_EDGE = (1.0, 0.85, 0.0, 1.0)  # yellow: visible on H&E and on HER2


def feature_defaults() -> dict:
    return {"name": "", "class": "", "object_type": "annotation", "feature_index": -1,
            "is_hole": False, "id": "", "class_color": "", "measurements": ""}


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
                                frame=frame_layer.name, **frame_of(frame_layer))
    return kw


def frame_of(layer) -> dict:
    """The level-0 pixel frame of an image layer: world (row, col) = translate + scale · pixel."""
    return {"frame_scale": [float(v) for v in layer.scale[-2:]],
            "frame_translate": [float(v) for v in layer.translate[-2:]]}


def to_level0_rc(data, scale, translate, frame: dict | None) -> list[np.ndarray]:
    """Shapes data (layer data coordinates) -> level-0 (row, col) pixels of `frame`.

    world = translate + scale · data (the layer's own transform), then
    pixel = (world - frame_translate) / frame_scale. Without a frame the layer's data
    are taken as level-0 pixels already.
    """
    if frame is None:
        return [np.asarray(v, dtype=float)[:, -2:] for v in data]
    s, t = np.asarray(scale, float)[-2:], np.asarray(translate, float)[-2:]
    fs, ft = np.asarray(frame["frame_scale"], float), np.asarray(frame["frame_translate"], float)
    return [((np.asarray(v, dtype=float)[:, -2:] * s + t) - ft) / fs for v in data]


def _frame_for(metadata, viewer=None) -> dict | None:
    """The H&E frame an ROI layer is exported in: its own record, else the viewer's H&E.

    A layer this plugin read from GeoJSON with no H&E open holds level-0 pixels as data
    (no frame); a layer the user drew is taken in the viewer's H&E frame.
    """
    info = (metadata or {}).get(L.KEY, {}) if isinstance(metadata, dict) else {}
    if info.get("frame_scale") and info.get("frame_translate"):
        return {"frame_scale": info["frame_scale"], "frame_translate": info["frame_translate"]}
    if info.get("role") == L.ROLE_ROIS:
        return None
    if viewer is None:
        try:
            import napari

            viewer = napari.current_viewer()
        except Exception:  # noqa: BLE001 - no viewer: no frame
            viewer = None
    he = L.first_with_role(viewer, L.ROLE_HE) if viewer is not None else None
    return frame_of(he) if he is not None else None


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
        "id": [p.id or "" for p in polys],
        "class_color": [_hex(p.color) if p.class_name and p.color else "" for p in polys],
        "measurements": [json.dumps(p.measurements) if p.measurements else "" for p in polys],
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
              "is_hole": bool, "id": object, "class_color": object, "measurements": object}
    return pd.DataFrame({k: pd.Series(table[k], dtype=dtypes[k]) for k in FEATURE_COLUMNS})


def _rgba(color) -> tuple:
    if color is None:
        return DEFAULT_EDGE
    r, g, b = (float(c) / 255.0 for c in list(color)[:3])
    return (r, g, b, 1.0)


def _hex(rgb) -> str:
    r, g, b = (int(c) for c in list(rgb)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _rgb(text) -> list[int] | None:
    if not isinstance(text, str) or len(text) != 7 or not text.startswith("#"):
        return None
    try:
        return [int(text[i:i + 2], 16) for i in (1, 3, 5)]
    except ValueError:
        return None


def _measurements(text, where: str) -> dict | None:
    if not text:
        return None
    from her2core.errors import UserError

    try:
        m = json.loads(text) if isinstance(text, str) else dict(text)
        return {str(k): float(v) for k, v in m.items()}
    except (TypeError, ValueError, AttributeError):
        raise UserError(f"{where}: 'measurements' must be JSON of numbers, got {text!r}") from None


def class_colors(cols: dict) -> dict[str, list[int]]:
    """Class name -> colour from the table's class_color column (first one given wins)."""
    out: dict[str, list[int]] = {}
    for name, color in zip(cols["class"], cols["class_color"]):
        rgb = _rgb(color)
        if name and rgb is not None and name not in out:
            out[name] = rgb
    return out


def features_from_shapes(data, shape_types, table=None) -> list:
    """QuPath Features from Shapes data in level-0 (row, col), using its features table.

    Rectangles and ellipses become polygons; shapes imported from one multi-part
    feature (same `feature_index`) are merged back, holes included. Ids, class colours
    (a class drawn without a colour takes that of another shape of the class) and
    measurements come from the table.
    """
    from her2core.qupath.geojson import PolygonRC, polygons_rc_to_features

    n = len(data)
    cols = _columns(table, n)
    colors = class_colors(cols)
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
        cls = cols["class"][i] or None
        items.append(PolygonRC(
            vertices=verts, shape_type=kind,
            name=cols["name"][i] or None, class_name=cls,
            color=_rgb(cols["class_color"][i]) or (colors.get(cls) if cls else None),
            feature_index=fi, is_hole=bool(cols["is_hole"][i]),
            object_type=cols["object_type"][i] or "annotation",
            id=cols["id"][i] or None,
            measurements=_measurements(cols["measurements"][i], f"shape {i}")))
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


def _with_ids(feats) -> list:
    """Every feature gets an object id (a UUID, as QuPath 0.4+ writes them) if it has none."""
    for f in feats:
        if not f.id:
            f.id = str(uuid.uuid4())
    return feats


def write_geojson(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer: a Shapes layer as QuPath GeoJSON in the H&E's level-0 pixels."""
    from her2core.qupath.geojson import write_features

    frame = _frame_for(attributes.get("metadata"))
    rc = to_level0_rc(data, attributes.get("scale", (1.0, 1.0)),
                      attributes.get("translate", (0.0, 0.0)), frame)
    feats = features_from_shapes(rc, attributes.get("shape_type", ["polygon"] * len(data)),
                                 attributes.get("features"))
    if not str(path).lower().endswith((".geojson", ".json")):
        path = str(path) + ".geojson"
    return [str(write_features(path, _with_ids(feats)))]


def export_layer(layer, path, viewer=None) -> Path:
    """Write an ROI Shapes layer to `path` as QuPath GeoJSON (H&E level-0 pixels).

    Shapes without an object id get one, written back into the layer's features table so
    a later export (and import_measurements.groovy) matches the same objects.
    """
    from her2core.qupath.geojson import write_features

    frame = _frame_for(layer.metadata, viewer)
    rc = to_level0_rc(layer.data, layer.scale, layer.translate, frame)
    cols = _columns(layer.features, len(layer.data))
    ids = _shape_ids(cols)
    table = layer.features.copy() if len(layer.data) else layer.features
    if len(layer.data):
        table["id"] = ids
        layer.features = table
    feats = features_from_shapes(rc, layer.shape_type, table)
    return write_features(path, feats)


def _shape_ids(cols: dict) -> list[str]:
    """One id per shape; parts of one feature (same feature_index) share theirs."""
    by_feature: dict[int, str] = {}
    out = []
    for fi, sid in zip(cols["feature_index"], cols["id"]):
        key = int(fi) if fi is not None and int(fi) >= 0 else None
        if not sid:
            sid = by_feature.get(key) if key is not None else None
            sid = sid or str(uuid.uuid4())
        if key is not None:
            by_feature.setdefault(key, sid)
        out.append(sid)
    return out
