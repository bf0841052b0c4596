"""QuPath GeoJSON <-> napari Shapes through the plugin's reader and writer: (x, y) <-> (row, col),
names, classes, holes and multi-part features survive a round trip."""

import json

import numpy as np
import pytest

pytest.importorskip("napari")

from her2core.qupath.geojson import read_features

pytestmark = pytest.mark.gui

QUPATH_DOC = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "id": "a1",
         "geometry": {"type": "Polygon", "coordinates": [
             [[100, 20], [300, 20], [300, 220], [100, 220], [100, 20]],
             [[150, 70], [200, 70], [200, 120], [150, 120], [150, 70]]]},
         "properties": {"objectType": "annotation", "name": "tumour core",
                        "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature",
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [[[400, 10], [450, 10], [450, 40], [400, 10]]],
             [[[500, 300], [560, 300], [560, 380], [500, 380], [500, 300]]]]},
         "properties": {"objectType": "annotation", "name": "stroma bits",
                        "classification": {"name": "Stroma", "color": [0, 150, 0]}}},
    ],
}


@pytest.fixture
def geojson_path(tmp_path):
    p = tmp_path / "rois.geojson"
    p.write_text(json.dumps(QUPATH_DOC))
    return p


def test_import_flips_xy_and_keeps_names_classes(make_napari_viewer, geojson_path):
    viewer = make_napari_viewer()
    he = viewer.add_image(np.zeros((600, 800, 3), np.uint8), rgb=True, scale=(0.5, 0.5),
                          translate=(10.0, 20.0), metadata={"her2stain": {"role": "he", "mpp": 0.5}})
    (layer,) = viewer.open(geojson_path, plugin="napari-her2stain")
    assert layer.__class__.__name__ == "Shapes"
    # the ROI layer lives in the H&E pixel frame: same scale and translate
    np.testing.assert_allclose(layer.scale, he.scale)
    np.testing.assert_allclose(layer.translate, he.translate)
    # polygon exterior, its hole, and the two parts of the multipolygon
    assert len(layer.data) == 4
    ext = layer.data[0]
    np.testing.assert_allclose(ext, [[20, 100], [20, 300], [220, 300], [220, 100]])  # (row, col)
    assert list(layer.features["name"]) == ["tumour core"] * 2 + ["stroma bits"] * 2
    assert list(layer.features["class"]) == ["Tumor", "Tumor", "Stroma", "Stroma"]
    assert list(layer.features["is_hole"]) == [False, True, False, False]
    np.testing.assert_allclose(layer.edge_color[0][:3], np.array([200, 0, 0]) / 255)
    # world position of vertex (x=100, y=20) = translate + scale * (row, col)
    np.testing.assert_allclose(layer.data_to_world(ext[0]), [10 + 0.5 * 20, 20 + 0.5 * 100])


def test_export_round_trip_with_new_shapes(make_napari_viewer, geojson_path, tmp_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(geojson_path, plugin="napari-her2stain")
    # a pathologist adds a rectangle and an ellipse; they get default features
    layer.add_rectangles(np.array([[10, 600], [60, 700]]))
    layer.add_ellipses(np.array([[200, 600], [200, 700], [300, 700], [300, 600]]))
    layer.features.loc[4, "name"] = "new box"
    layer.features.loc[4, "class"] = "Tumor"
    out = tmp_path / "out.geojson"
    written = layer.save(str(out), plugin="napari-her2stain")
    assert written and out.exists()
    feats = read_features(out)
    assert [f.name for f in feats] == ["tumour core", "stroma bits", "new box", None]
    assert [f.class_name for f in feats] == ["Tumor", "Stroma", "Tumor", None]
    core = feats[0].geometry
    assert core.geom_type == "Polygon" and len(core.interiors) == 1  # hole put back
    assert core.area == pytest.approx(200 * 200 - 50 * 50)
    assert core.bounds == (100, 20, 300, 220)  # (x, y) again
    assert feats[1].geometry.geom_type == "MultiPolygon"
    box = feats[2].geometry
    assert box.bounds == (600, 10, 700, 60)
    ell = feats[3].geometry
    assert ell.geom_type == "Polygon"
    assert ell.area == pytest.approx(np.pi * 50 * 50, rel=0.01)
    assert ell.centroid.x == pytest.approx(650) and ell.centroid.y == pytest.approx(250)
