"""QuPath-dialect GeoJSON: both dialects read, the current one written, nothing lost."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

from her2core.coords import apply_affine_xy
from her2core.errors import UserError
from her2core.qupath.geojson import (
    Feature,
    PolygonRC,
    features_to_polygons_rc,
    packed_rgb_to_list,
    polygons_rc_to_features,
    read_features,
    transform_features,
    write_features,
)

FIX = Path(__file__).parent / "fixtures" / "qupath"


def _summary(f: Feature):
    return (f.object_type, f.name, f.class_name, f.class_color, dict(f.measurements),
            dict(f.metadata), f.id, f.locked, f.extra)


@pytest.mark.parametrize("fixture", ["qupath_v06_collection.geojson", "qupath_v02_list.json",
                                     "qupath_single_feature.geojson"])
def test_round_trip_keeps_every_geometry_class_name_and_measurement(tmp_path, fixture):
    first = read_features(FIX / fixture)
    out = write_features(tmp_path / "out.geojson", first)
    second = read_features(out)
    assert len(second) == len(first) > 0
    for a, b in zip(first, second):
        assert a.geometry.geom_type == b.geometry.geom_type
        assert shapely.equals_exact(a.geometry, b.geometry, tolerance=0), (a.name, b.geometry)
        assert _summary(a) == _summary(b)
    # and a second write is byte-identical: nothing drifts
    out2 = write_features(tmp_path / "out2.geojson", second)
    assert out.read_bytes() == out2.read_bytes()


def test_v06_fixture_content_is_read_as_qupath_means_it():
    feats = read_features(FIX / "qupath_v06_collection.geojson")
    tumour, front, points, line, cell, bare = feats
    assert tumour.class_name == "Tumor" and tumour.class_color == [200, 0, 0]
    assert len(tumour.geometry.interiors) == 1 and tumour.geometry.area == 600 * 500 - 100 * 100
    assert tumour.measurements["HER2 score proxy"] == 2.0 and tumour.locked
    assert tumour.metadata == {"model": "pix2pix-v3", "case": "HM-017"}
    assert tumour.extra["color"] == [255, 0, 0]
    assert isinstance(front.geometry, MultiPolygon) and len(front.geometry.geoms) == 2
    assert [len(p.interiors) for p in front.geometry.geoms] == [0, 2]
    assert front.class_name == "Tumor: HER2 2+"
    assert points.geometry.geom_type == "MultiPoint" and line.geometry.geom_type == "LineString"
    # QuPath writes a cell's nucleus beside 'geometry' (QuPathTypeAdapters.java v0.6.0 L347-353)
    assert cell.object_type == "cell" and cell.nucleus.bounds == (2005, 2005, 2015, 2015)
    assert "nucleusGeometry" not in cell.extra
    assert bare.name is None and bare.classification is None and bare.measurements == {}


def test_v02_dialect_object_type_measurement_list_and_packed_colours():
    region, det = read_features(FIX / "qupath_v02_list.json")
    assert region.object_type == "annotation" and det.object_type == "detection"
    assert region.measurements == {"Area px^2": 39100.0, "Mean DAB": 0.25}
    assert region.class_color == [150, 200, 150] and det.class_color == [200, 0, 0]
    assert packed_rgb_to_list(-3670016) == [200, 0, 0]
    assert len(region.geometry.interiors) == 1


def test_written_file_is_the_dialect_qupath_imports(tmp_path):
    feats = read_features(FIX / "qupath_v02_list.json")
    doc = json.loads(write_features(tmp_path / "x.geojson", feats).read_text())
    assert doc["type"] == "FeatureCollection"
    for f in doc["features"]:
        assert f["type"] == "Feature"
        p = f["properties"]
        assert "objectType" in p and "object_type" not in p
        assert isinstance(p["measurements"], dict)
        assert set(p["classification"]) == {"name", "color"} and len(p["classification"]["color"]) == 3
    assert doc["features"][0]["geometry"]["coordinates"][0][0] == [10.5, 20.5]


def test_accepts_feature_collection_list_single_feature_and_parsed_objects():
    single = read_features(FIX / "qupath_single_feature.geojson")
    assert [f.name for f in single] == ["ROI 1"]
    raw = json.loads((FIX / "qupath_v06_collection.geojson").read_text())
    assert len(read_features(raw)) == len(read_features(raw["features"])) == 6
    assert read_features(json.dumps(raw["features"][0]))[0].name == "Tumour 1"
    bare_geom = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    assert read_features(bare_geom)[0].object_type == "annotation"


def test_invalid_geometry_is_repaired_with_a_warning_or_refused():
    with pytest.warns(UserWarning, match="Bow tie.*Self-intersection"):
        (f,) = read_features(FIX / "invalid_bowtie.geojson")
    assert f.geometry.is_valid and f.geometry.area == pytest.approx(5000.0)
    with pytest.raises(UserError, match="Bow tie.*invalid Polygon"):
        read_features(FIX / "invalid_bowtie.geojson", repair=False)


@pytest.mark.parametrize("obj, match", [
    ({"type": "Topology"}, "FeatureCollection"),
    ({"type": "Feature", "geometry": None, "properties": {"name": "x"}}, "no geometry"),
    ({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]},
      "properties": {}}, "malformed geometry"),
    ({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
      "properties": {"measurements": {"a": "high"}}}, "not a number"),
    (42, "expected a GeoJSON object"),
])
def test_bad_input_is_a_user_error(obj, match):
    with pytest.raises(UserError, match=match):
        read_features(obj)


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(UserError, match="truncated.geojson: not valid JSON"):
        read_features(FIX / "truncated.geojson")
    with pytest.raises(UserError, match="nope.geojson: file not found"):
        read_features(tmp_path / "nope.geojson")


def test_napari_rc_conversion_swaps_axes_and_round_trips_holes_and_parts():
    feats = read_features(FIX / "qupath_v06_collection.geojson")
    shapes = features_to_polygons_rc(feats)
    first = shapes[0]
    assert first.name == "Tumour 1" and first.class_name == "Tumor" and not first.is_hole
    np.testing.assert_array_equal(first.vertices[0], [2000, 1000])  # (x=1000, y=2000) -> (row, col)
    assert len(first.vertices) == 4  # closing vertex dropped
    assert sum(s.is_hole for s in shapes if s.feature_index == 1) == 2
    assert {s.shape_type for s in shapes} == {"polygon", "point", "path"}
    back = polygons_rc_to_features(shapes)
    assert len(back) == len(feats)
    for a, b in zip(feats, back):
        assert a.geometry.normalize().equals(b.geometry.normalize()), a.name
        assert (a.name, a.class_name, a.class_color) == (b.name, b.class_name, b.class_color)


def test_plain_napari_arrays_become_named_classified_features():
    square_rc = np.array([[10, 20], [10, 60], [50, 60], [50, 20]], float)
    feats = polygons_rc_to_features([square_rc, np.array([[0, 0], [5, 5]], float)],
                                    names=["a", "b"], class_names=["Tumor", None],
                                    shape_types=["rectangle", "path"])
    assert feats[0].geometry.bounds == (20, 10, 60, 50)  # (minx, miny, maxx, maxy)
    assert feats[0].class_name == "Tumor" and feats[0].class_color is not None
    assert feats[1].geometry.geom_type == "LineString" and feats[1].classification is None
    with pytest.raises(UserError, match="at least 3 vertices"):
        polygons_rc_to_features([np.array([[0, 0], [1, 1]])])
    with pytest.raises(UserError, match="outside every polygon"):
        polygons_rc_to_features([
            PolygonRC(square_rc, feature_index=0),
            PolygonRC(square_rc + 500, feature_index=0, is_hole=True)])


def test_transform_features_applies_the_registration_matrix():
    theta = np.deg2rad(7.0)
    m = np.array([[1.02 * np.cos(theta), -np.sin(theta), 153.25],
                  [np.sin(theta), 0.98 * np.cos(theta), -48.5], [0, 0, 1]])
    feats = read_features(FIX / "qupath_v06_collection.geojson")
    moved = transform_features(feats, m)
    src = np.asarray(feats[0].geometry.exterior.coords)
    np.testing.assert_allclose(np.asarray(moved[0].geometry.exterior.coords), apply_affine_xy(m, src))
    np.testing.assert_allclose(moved[0].geometry.area, feats[0].geometry.area * abs(np.linalg.det(m[:2, :2])))
    assert len(moved[1].geometry.geoms[1].interiors) == 2
    nuc_src = np.asarray(feats[4].nucleus.exterior.coords)
    nuc_dst = np.asarray(moved[4].nucleus.exterior.coords)
    np.testing.assert_allclose(nuc_dst, apply_affine_xy(m, nuc_src))
    assert moved[0].measurements == feats[0].measurements and moved[0].name == feats[0].name
    assert feats[0].geometry.bounds == (1000, 2000, 1600, 2500)  # input untouched
    with pytest.raises(UserError, match="3×3 affine"):
        transform_features(feats, np.ones((3, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(transform_features([Feature(Polygon([(0, 0), (1, 0), (0, 1)]))],
                                             np.eye(3))[0].geometry, Polygon)


def test_cell_nucleus_is_written_beside_geometry_as_qupath_reads_it(tmp_path):
    """QuPath reads a cell's nucleus from the feature's top-level 'nucleusGeometry'
    (QuPathTypeAdapters.java v0.6.0 L554-557, written at L347-353); inside 'properties' it
    is ignored and the cell comes back without a nucleus."""
    feats = read_features(FIX / "qupath_v06_collection.geojson")
    out = write_features(tmp_path / "cells.geojson", feats)
    doc = json.loads(out.read_text())
    cell = doc["features"][4]
    assert cell["properties"]["objectType"] == "cell"
    assert "nucleusGeometry" not in cell["properties"]
    assert cell["nucleusGeometry"]["type"] == "Polygon"
    assert read_features(out)[4].nucleus.equals(feats[4].nucleus)


def test_mixed_shapes_are_split_never_written_as_a_geometry_collection(tmp_path):
    """QuPath keeps only the highest-dimension parts of a GeometryCollection
    (GeometryTools.java v0.6.0 L572-605, applied on import at L1478-1483): a napari group of
    a polygon and a path must become two features."""
    square = np.array([[0, 0], [0, 50], [50, 50], [50, 0]], float)
    group = [PolygonRC(square, "polygon", name="mixed", feature_index=0, id="a-1"),
             PolygonRC(np.array([[100, 0], [120, 80]], float), "path", name="mixed", feature_index=0)]
    with pytest.warns(UserWarning, match="written as 2 features"):
        feats = polygons_rc_to_features(group)
    assert [f.geometry.geom_type for f in feats] == ["Polygon", "LineString"]
    assert [f.id for f in feats] == ["a-1", None]
    from shapely.geometry import GeometryCollection, LineString, Point

    gc = Feature(GeometryCollection([Polygon([(0, 0), (9, 0), (9, 9)]), LineString([(0, 0), (5, 5)]),
                                     Point(3, 3)]), name="gc")
    with pytest.warns(UserWarning, match="written as 3 features"):
        out = write_features(tmp_path / "gc.geojson", [gc])
    text = out.read_text()
    assert "GeometryCollection" not in text
    assert [f.geometry.geom_type for f in read_features(out)] == ["Polygon", "LineString", "Point"]
