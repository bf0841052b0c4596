"""QuPath-dialect GeoJSON: read what QuPath (0.2 … 0.6) writes, write what it imports.

Why a module of our own: QuPath's GeoJSON is the one interchange format every part of
her2 shares with QuPath (ROIs in, measurements out), and it must work without QuPath
installed. Coordinates are level-0 pixels, (x, y), origin top-left — exactly as QuPath
writes them. napari's (row, col) is reached only through `her2core.coords`.

Dialects read:
  * QuPath >= 0.3: ``properties.objectType``, ``classification {name|names, color}``,
    ``measurements`` as a dict, ``metadata`` string map, top-level ``id`` (>= 0.4).
  * QuPath 0.2:    ``properties.object_type``, ``classification {name, colorRGB}``,
    ``measurements`` as a list of ``{name, value}``.
Written: the current dialect (a ``FeatureCollection``), which QuPath 0.4–0.7 imports.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import (
    GeometryCollection,
    LineString,
    MultiLineString,
    MultiPoint,
    MultiPolygon,
    Point,
    Polygon,
    mapping,
    shape,
)
from shapely.geometry.base import BaseGeometry

from her2core.coords import apply_affine_xy, rc_to_xy, xy_to_rc
from her2core.errors import UserError
from her2core.util.atomic import write_text
from her2core.util.safe_io import loads_json, read_text

__all__ = [
    "Feature",
    "PolygonRC",
    "features_to_geojson",
    "features_to_polygons_rc",
    "packed_rgb_to_list",
    "parse_features",
    "polygons_rc_to_features",
    "read_features",
    "transform_features",
    "write_features",
]

_GEOMETRY_TYPES = {
    "Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
    "GeometryCollection",
}
# Properties we model explicitly; everything else in `properties` is kept in `Feature.extra`.
_KNOWN_PROPS = {"objectType", "object_type", "name", "classification", "measurements",
                "metadata", "isLocked"}


@dataclass
class Feature:
    """One QuPath object: a geometry in level-0 (x, y) pixels plus what QuPath attaches to it.

    `classification` is ``{"name": str, "color": [r, g, b]}`` (derived classes also keep
    ``"names": [...]``) or None. `nucleus` is a cell's nucleus, which QuPath writes as
    ``nucleusGeometry`` beside ``geometry`` (not in ``properties``). `extra` keeps any other
    property (``color``, …) so a round trip loses nothing.
    """

    geometry: BaseGeometry
    object_type: str = "annotation"
    name: str | None = None
    classification: dict | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    id: str | None = None
    locked: bool = False
    extra: dict = field(default_factory=dict)
    nucleus: BaseGeometry | None = None

    @property
    def class_name(self) -> str | None:
        """The class as QuPath shows it ('Tumor', or 'Tumor: HER2 2+' for derived classes)."""
        if not self.classification:
            return None
        return self.classification.get("name")

    @property
    def class_color(self) -> list[int] | None:
        if not self.classification:
            return None
        c = self.classification.get("color")
        return list(c) if c is not None else None


def classification_of(name: str | None, color: Sequence[int] | None = None) -> dict | None:
    """Build a classification dict (None for no class); colour defaults to a stable hash colour."""
    if not name:
        return None
    if color is None:
        color = _default_color(name)
    return {"name": str(name), "color": [int(c) for c in color][:3]}


def _default_color(name: str) -> list[int]:
    # Stable across runs (no Python hash randomisation): a small FNV-1a over the name.
    h = 2166136261
    for ch in name.encode("utf-8"):
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return [64 + (h & 0x7F), 64 + ((h >> 8) & 0x7F), 64 + ((h >> 16) & 0x7F)]


def packed_rgb_to_list(value: int) -> list[int]:
    """QuPath's packed (A)RGB int (e.g. -3670016 in classes.json) -> [r, g, b]."""
    v = int(value) & 0xFFFFFFFF
    return [(v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF]


def list_to_packed_rgb(rgb: Sequence[int]) -> int:
    """[r, g, b] -> QuPath's packed signed ARGB int with alpha 255 (as classes.json stores it)."""
    r, g, b = (int(c) & 0xFF for c in list(rgb)[:3])
    v = (0xFF << 24) | (r << 16) | (g << 8) | b
    return v - (1 << 32)


# ----------------------------------------------------------------------------- reading


def read_features(path_or_obj: Any, *, repair: bool = True) -> list[Feature]:
    """Features from a GeoJSON file path, a JSON string, or an already parsed object.

    Accepts a FeatureCollection, a bare list of Features, one Feature, or a bare geometry.
    Invalid geometry is repaired (shapely ``make_valid``) with a warning naming the feature,
    or, with ``repair=False``, raises UserError. Nothing is dropped silently.
    """
    source = "<GeoJSON>"
    obj = path_or_obj
    if isinstance(path_or_obj, (str, os.PathLike)) and not _looks_like_json(path_or_obj):
        p = Path(path_or_obj)
        source = str(p)
        obj = _loads(read_text(p, "GeoJSON file"), source)
    elif isinstance(path_or_obj, str):
        obj = _loads(path_or_obj, source)
    return parse_features(obj, source=source, repair=repair)


def _looks_like_json(s: Any) -> bool:
    return isinstance(s, str) and s.lstrip()[:1] in ("{", "[")


def _loads(text: str, source: str) -> Any:
    """Finite coordinates, bounded nesting, an object or list at the top (her2core.util.safe_io)."""
    return loads_json(text, source, fix="export it again from QuPath as GeoJSON")


def parse_features(obj: Any, *, source: str = "<GeoJSON>", repair: bool = True) -> list[Feature]:
    """Features from a parsed JSON object (see `read_features`)."""
    if isinstance(obj, list):
        raw = obj
    elif isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            raw = obj.get("features")
            if not isinstance(raw, list):
                raise UserError(f"{source}: FeatureCollection without a 'features' list; "
                                "export it again from QuPath")
        elif kind == "Feature":
            raw = [obj]
        elif kind in _GEOMETRY_TYPES:
            raw = [{"type": "Feature", "geometry": obj, "properties": {}}]
        else:
            raise UserError(f"{source}: top-level 'type' is {kind!r}; expected a FeatureCollection, "
                            "a Feature or a list of Features (QuPath: File > Export objects as GeoJSON)")
    else:
        raise UserError(f"{source}: expected a GeoJSON object or list, got {type(obj).__name__}")
    return [_parse_feature(f, i, source, repair) for i, f in enumerate(raw)]


def _parse_feature(f: Any, index: int, source: str, repair: bool) -> Feature:
    where = f"{source}: feature {index}"
    if not isinstance(f, dict):
        raise UserError(f"{where}: expected an object, got {type(f).__name__}")
    if f.get("type", "Feature") != "Feature":
        if f.get("type") in _GEOMETRY_TYPES:  # bare geometry inside a list
            f = {"type": "Feature", "geometry": f, "properties": {}}
        else:
            raise UserError(f"{where}: 'type' is {f.get('type')!r}, expected 'Feature'")
    props = f.get("properties") or {}
    if not isinstance(props, dict):
        raise UserError(f"{where}: 'properties' must be an object")
    name = props.get("name")
    if name is not None:
        where = f"{where} ({name!r})"
    geom_json = f.get("geometry")
    if not geom_json:
        raise UserError(f"{where}: has no geometry; delete it or draw it again in QuPath")
    try:
        geom = shape(geom_json)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError,
            shapely.errors.GEOSException) as exc:  # shapely's ways to reject malformed coordinates
        raise UserError(f"{where}: malformed geometry ({exc}); export it again from QuPath") from None
    geom = shapely.force_2d(geom)
    geom = _checked_geometry(geom, where, repair)

    object_type = props.get("objectType", props.get("object_type", "annotation"))
    object_type = str(object_type).lower() if object_type else "annotation"
    fid = f.get("id", props.get("id"))
    extra = {k: copy.deepcopy(v) for k, v in props.items()
             if k not in _KNOWN_PROPS and k not in ("id", "nucleusGeometry")}
    # QuPath puts a cell's nucleus beside 'geometry' (QuPathTypeAdapters.java v0.6.0 L347-353,
    # read back at L554-557); her2 before 0.2 kept it in properties, read that too
    nucleus_json = f.get("nucleusGeometry", props.get("nucleusGeometry"))
    nucleus = None
    if nucleus_json:
        try:
            nucleus = shapely.force_2d(shape(nucleus_json))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError,
                shapely.errors.GEOSException) as exc:
            raise UserError(f"{where}: malformed nucleusGeometry ({exc}); export it again from "
                            "QuPath") from None
        nucleus = _checked_geometry(nucleus, f"{where} nucleus", repair)
    metadata = props.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise UserError(f"{where}: 'metadata' must be an object of strings")
    return Feature(
        geometry=geom,
        object_type=object_type,
        name=None if name is None else str(name),
        classification=_parse_classification(props.get("classification"), where),
        measurements=_parse_measurements(props.get("measurements"), where),
        metadata=dict(metadata),
        id=None if fid is None else str(fid),
        locked=bool(props.get("isLocked", False)),
        extra=extra,
        nucleus=nucleus,
    )


def _checked_geometry(geom: BaseGeometry, where: str, repair: bool) -> BaseGeometry:
    if geom.is_empty:
        raise UserError(f"{where}: geometry is empty; delete it or draw it again in QuPath")
    if not np.isfinite(geom.bounds).all():
        raise UserError(f"{where}: coordinates that are not finite (NaN or Infinity); export it "
                        "again from QuPath")
    if geom.is_valid:
        return geom
    reason = shapely.is_valid_reason(geom)
    if not repair:
        raise UserError(f"{where}: invalid {geom.geom_type} ({reason}); fix it in QuPath "
                        "(Objects > Annotations > Fill holes / Simplify shape) or allow repair")
    fixed = shapely.make_valid(geom)
    if isinstance(geom, (Polygon, MultiPolygon)):
        fixed = _polygonal_part(fixed)
    if fixed.is_empty:
        raise UserError(f"{where}: invalid {geom.geom_type} ({reason}) has no area left after "
                        "repair; draw it again in QuPath")
    warnings.warn(f"{where}: invalid {geom.geom_type} ({reason}) repaired to {fixed.geom_type} "
                  f"(area {geom.area:.1f} -> {fixed.area:.1f} px²)", UserWarning, stacklevel=4)
    return fixed


def _polygonal_part(g: BaseGeometry) -> BaseGeometry:
    """Keep the area of a repaired polygon; make_valid may add stray lines/points."""
    if isinstance(g, (Polygon, MultiPolygon)):
        return g
    polys: list[Polygon] = []
    for part in getattr(g, "geoms", []):
        if isinstance(part, Polygon):
            polys.append(part)
        elif isinstance(part, MultiPolygon):
            polys.extend(part.geoms)
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _parse_classification(c: Any, where: str) -> dict | None:
    if c is None:
        return None
    if isinstance(c, str):  # some tools write the class as a bare string
        return classification_of(c)
    if not isinstance(c, dict):
        raise UserError(f"{where}: 'classification' must be an object with 'name' and 'color'")
    names = c.get("names")
    name = c.get("name")
    if name is None and isinstance(names, list) and names:
        name = ": ".join(str(n) for n in names)
    if name is None:
        return None
    color = c.get("color")
    if color is None and "colorRGB" in c:  # QuPath 0.2
        color = packed_rgb_to_list(c["colorRGB"])
    elif isinstance(color, (int, float)) and not isinstance(color, bool):
        color = packed_rgb_to_list(int(color))
    out = classification_of(str(name), color)
    if isinstance(names, list) and len(names) > 1:
        out["names"] = [str(n) for n in names]
    return out


def _parse_measurements(m: Any, where: str) -> dict[str, float]:
    if m is None:
        return {}
    items: Iterable[tuple[Any, Any]]
    if isinstance(m, dict):
        items = m.items()
    elif isinstance(m, list):  # QuPath 0.2: [{"name": ..., "value": ...}]
        try:
            items = [(d["name"], d.get("value")) for d in m]
        except (TypeError, KeyError):
            raise UserError(f"{where}: 'measurements' list entries need 'name' and 'value'") from None
    else:
        raise UserError(f"{where}: 'measurements' must be an object of numbers")
    out: dict[str, float] = {}
    for k, v in items:
        try:
            out[str(k)] = math.nan if v is None else float(v)
        except (TypeError, ValueError):
            raise UserError(f"{where}: measurement {k!r} is {v!r}, not a number") from None
    return out


# ----------------------------------------------------------------------------- writing


def features_to_geojson(features: Iterable[Feature]) -> dict:
    """A QuPath-importable FeatureCollection (a plain dict, ready for json.dumps).

    A feature whose geometry mixes areas, lines and points (a GeometryCollection) is split
    into one feature per kind, with a warning: QuPath keeps only the highest-dimension part
    of such a geometry (GeometryTools.homogenizeGeometryCollection, v0.6.0 L572-605).
    """
    out = []
    for f in features:
        out.extend(_feature_json(part) for part in split_mixed(f))
    return {"type": "FeatureCollection", "features": out}


def split_mixed(f: Feature) -> list[Feature]:
    """`f` itself, or one feature per geometry kind when its geometry is a GeometryCollection."""
    if not isinstance(f.geometry, GeometryCollection) or isinstance(
            f.geometry, (MultiPolygon, MultiLineString, MultiPoint)):
        return [f]
    kinds: dict[str, list[BaseGeometry]] = {"area": [], "line": [], "point": []}
    for part in _parts(f.geometry):
        if isinstance(part, Polygon):
            kinds["area"].append(part)
        elif isinstance(part, LineString):
            kinds["line"].append(part)
        elif isinstance(part, Point):
            kinds["point"].append(part)
    builders = {"area": MultiPolygon, "line": MultiLineString, "point": MultiPoint}
    out = []
    for kind, parts in kinds.items():
        if not parts:
            continue
        g = copy.copy(f)
        g.geometry = parts[0] if len(parts) == 1 else builders[kind](parts)
        g.id = f.id if not out else None  # QuPath object ids are unique
        g.extra, g.measurements, g.metadata = copy.deepcopy(f.extra), dict(f.measurements), dict(f.metadata)
        out.append(g)
    if len(out) > 1:
        warnings.warn(f"feature {f.name or f.id or ''!s}: a mix of {', '.join(k for k in kinds if kinds[k])} "
                      f"written as {len(out)} features (QuPath would keep only the areas)",
                      UserWarning, stacklevel=3)
    return out


def _feature_json(f: Feature) -> dict:
    if not isinstance(f, Feature):
        raise TypeError(f"expected Feature, got {type(f).__name__}")
    props: dict[str, Any] = {"objectType": f.object_type or "annotation"}
    if f.name is not None:
        props["name"] = f.name
    if f.classification:
        props["classification"] = copy.deepcopy(f.classification)
    if f.locked:
        props["isLocked"] = True
    for k, v in f.extra.items():
        props.setdefault(k, copy.deepcopy(v))
    if f.measurements:
        props["measurements"] = {str(k): float(v) for k, v in f.measurements.items()}
    if f.metadata:
        # QuPath's metadata is a string -> string map.
        props["metadata"] = {str(k): v if isinstance(v, str) else json.dumps(v)
                             for k, v in f.metadata.items()}
    out: dict[str, Any] = {"type": "Feature"}
    if f.id is not None:
        out["id"] = f.id
    out["geometry"] = _geometry_json(f.geometry)
    if f.nucleus is not None:
        out["nucleusGeometry"] = _geometry_json(f.nucleus)
    out["properties"] = props
    return out


def _geometry_json(g: BaseGeometry) -> dict:
    return json.loads(json.dumps(mapping(g)))  # tuples -> lists


def write_features(path: str | os.PathLike, features: Iterable[Feature], *,
                   indent: int | None = 2) -> Path:
    """Write a FeatureCollection QuPath imports (drag-and-drop or importObjectsFromFile), atomically."""
    path = Path(path)
    write_text(path, features_text(features, indent=indent))
    return path


def features_text(features: Iterable[Feature], *, indent: int | None = 2) -> str:
    """The FeatureCollection text `write_features` writes (staged by QuPath project transactions)."""
    return json.dumps(features_to_geojson(features), indent=indent, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------- transforms


def transform_features(features: Iterable[Feature], matrix) -> list[Feature]:
    """New features with every geometry mapped by a 3×3 (x, y) affine (e.g. a registration).

    The matrix acts on column vectors (x, y, 1), the convention of `her2core.coords` and of
    the registration's transform.json (HER2 level-0 (x, y) -> H&E level-0 (x, y)).
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3) or not np.allclose(m[2], [0, 0, 1]) or not np.all(np.isfinite(m)):
        raise UserError(f"transform must be a finite 3×3 affine with last row [0, 0, 1], got {m.tolist()}")

    def fn(pts: np.ndarray) -> np.ndarray:
        return apply_affine_xy(m, pts)

    out = []
    for f in features:
        g = copy.copy(f)
        g.geometry = shapely.transform(f.geometry, fn)
        g.extra = copy.deepcopy(f.extra)
        if f.nucleus is not None:
            g.nucleus = shapely.transform(f.nucleus, fn)
        g.measurements = dict(f.measurements)
        g.metadata = dict(f.metadata)
        out.append(g)
    return out


# ----------------------------------------------------------------------------- napari (row, col)


@dataclass
class PolygonRC:
    """One napari shape: (N, 2) vertices in level-0 (row, col) pixels, plus where it came from.

    A feature with holes or several parts becomes several PolygonRC with the same
    `feature_index`; holes have `is_hole=True` (napari Shapes cannot draw holes, so the
    caller decides whether to show them). `shape_type` is 'polygon', 'path' or 'point'.
    """

    vertices: np.ndarray
    shape_type: str = "polygon"
    name: str | None = None
    class_name: str | None = None
    color: list[int] | None = None
    feature_index: int | None = None
    is_hole: bool = False
    object_type: str = "annotation"
    id: str | None = None
    measurements: dict | None = None


def features_to_polygons_rc(features: Sequence[Feature]) -> list[PolygonRC]:
    """Every part and ring of every feature as napari (row, col) vertex arrays.

    Polygon rings drop the closing vertex (napari closes polygons itself).
    """
    out: list[PolygonRC] = []
    for i, f in enumerate(features):
        meta = {"name": f.name, "class_name": f.class_name, "color": f.class_color,
                "feature_index": i, "object_type": f.object_type, "id": f.id,
                "measurements": dict(f.measurements) or None}
        for part in _parts(f.geometry):
            if isinstance(part, Polygon):
                out.append(PolygonRC(xy_to_rc(np.asarray(part.exterior.coords)[:-1, :2]),
                                     "polygon", **meta))
                for ring in part.interiors:
                    out.append(PolygonRC(xy_to_rc(np.asarray(ring.coords)[:-1, :2]),
                                         "polygon", is_hole=True, **meta))
            elif isinstance(part, LineString):
                out.append(PolygonRC(xy_to_rc(np.asarray(part.coords)[:, :2]), "path", **meta))
            elif isinstance(part, Point):
                out.append(PolygonRC(xy_to_rc(np.asarray(part.coords)[:, :2]), "point", **meta))
    return out


def _parts(g: BaseGeometry) -> list[BaseGeometry]:
    if isinstance(g, (MultiPolygon, MultiLineString, MultiPoint, GeometryCollection)):
        parts: list[BaseGeometry] = []
        for sub in g.geoms:
            parts.extend(_parts(sub))
        return parts
    return [g]


def polygons_rc_to_features(
    polygons: Sequence[PolygonRC | np.ndarray],
    *,
    names: Sequence[str | None] | None = None,
    class_names: Sequence[str | None] | None = None,
    colors: Sequence[Sequence[int] | None] | None = None,
    shape_types: Sequence[str] | None = None,
    object_type: str = "annotation",
    repair: bool = True,
) -> list[Feature]:
    """napari (row, col) shapes back to Features, names, classes, ids and measurements kept.

    Accepts `PolygonRC` items (parts sharing a `feature_index` are merged back into one
    Polygon/MultiPolygon, holes put back into the exterior that contains them) or plain
    (N, 2) arrays with optional parallel `names`, `class_names`, `colors`, `shape_types`
    (napari's 'polygon', 'rectangle', 'ellipse', 'path', 'line', 'point'). A group mixing
    areas, lines and points becomes one feature per kind (with a warning), never a
    GeometryCollection.
    """
    items: list[PolygonRC] = []
    for i, p in enumerate(polygons):
        if isinstance(p, PolygonRC):
            items.append(p)
            continue
        items.append(PolygonRC(
            vertices=np.asarray(p, dtype=float),
            shape_type=(shape_types[i] if shape_types is not None else "polygon"),
            name=names[i] if names is not None else None,
            class_name=class_names[i] if class_names is not None else None,
            color=list(colors[i]) if colors is not None and colors[i] is not None else None,
            feature_index=None,
            object_type=object_type,
        ))
    groups: dict[Any, list[PolygonRC]] = {}
    for k, it in enumerate(items):
        key = ("f", it.feature_index) if it.feature_index is not None else ("s", k)
        groups.setdefault(key, []).append(it)

    out: list[Feature] = []
    for key, group in groups.items():
        first = group[0]
        where = f"shape {first.name or key[1]}"
        geom = _group_geometry(group, where)
        geom = _checked_geometry(geom, where, repair)
        out.extend(split_mixed(Feature(
            geometry=geom, object_type=first.object_type or object_type, name=first.name,
            classification=classification_of(first.class_name, first.color), id=first.id,
            measurements=dict(first.measurements or {}))))
    return out


def _group_geometry(group: list[PolygonRC], where: str) -> BaseGeometry:
    polys, holes, lines, points = [], [], [], []
    for it in group:
        v = np.asarray(it.vertices, dtype=float)
        if v.ndim != 2 or v.shape[1] < 2:
            raise UserError(f"{where}: vertices must be an (N, 2) array of (row, col)")
        xy = rc_to_xy(v[:, -2:])  # napari may carry leading (z, t) axes; keep the last two
        kind = (it.shape_type or "polygon").lower()
        if kind in ("point", "points"):
            points.extend(Point(p) for p in xy)
        elif kind in ("path", "line"):
            lines.append(LineString(xy))
        else:
            if len(xy) < 3:
                raise UserError(f"{where}: a polygon needs at least 3 vertices, got {len(xy)}")
            (holes if it.is_hole else polys).append(xy)
    parts: list[BaseGeometry] = []
    if polys:
        shells = [Polygon(p) for p in polys]
        assigned: list[list[np.ndarray]] = [[] for _ in shells]
        for h in holes:
            rp = Polygon(h).representative_point()
            idx = next((j for j, s in enumerate(shells) if s.contains(rp)), None)
            if idx is None:
                raise UserError(f"{where}: a hole lies outside every polygon of its feature")
            assigned[idx].append(h)
        parts.extend(Polygon(p, assigned[j]) for j, p in enumerate(polys))
    elif holes:
        raise UserError(f"{where}: holes without an outer polygon")
    parts.extend(lines)
    parts.extend(points)
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, Polygon) for p in parts):
        return MultiPolygon(parts)
    if all(isinstance(p, LineString) for p in parts):
        return MultiLineString(parts)
    if all(isinstance(p, Point) for p in parts):
        return MultiPoint(parts)
    return GeometryCollection(parts)
