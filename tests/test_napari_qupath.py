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
        {"type": "Feature", "id": "2f0c8a8e-5a8e-4b8a-9f0e-1d2c3b4a5f60",
         "geometry": {"type": "Polygon", "coordinates": [
             [[100, 20], [300, 20], [300, 220], [100, 220], [100, 20]],
             [[150, 70], [200, 70], [200, 120], [150, 120], [150, 70]]]},
         "properties": {"objectType": "annotation", "name": "tumour core",
                        "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"DAB: Mean": 0.42, "HER2 score proxy": 2.0}}},
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


def test_round_trip_keeps_ids_class_colours_and_measurements(make_napari_viewer, geojson_path,
                                                            tmp_path):
    """import_measurements.groovy matches objects by id; QuPath shows the class colour given in
    the file (GsonTools.java v0.6.0 L532-534, PathClassProxy); measurements go back as they came."""
    viewer = make_napari_viewer()
    (layer,) = viewer.open(geojson_path, plugin="napari-her2stain")
    layer.add_rectangles(np.array([[10, 600], [60, 700]]))
    layer.features.loc[4, "class"] = "Tumor"   # a new shape of a known class
    out = tmp_path / "back.geojson"
    layer.save(str(out), plugin="napari-her2stain")
    feats = read_features(out)
    assert feats[0].id == QUPATH_DOC["features"][0]["id"]
    assert feats[0].measurements == {"DAB: Mean": 0.42, "HER2 score proxy": 2.0}
    assert [f.class_color for f in feats] == [[200, 0, 0], [0, 150, 0], [200, 0, 0]]
    assert feats[1].id and feats[2].id and len({f.id for f in feats}) == 3  # new ids for QuPath


def test_export_is_in_level0_pixels_whatever_the_layer_scale_and_translate(make_napari_viewer,
                                                                          tmp_path):
    """A Shapes layer drawn in µm (scale 1) over an H&E at 0.25 µm/px, and one with its own
    translate, both export in the H&E's level-0 pixels (QuPath reads GeoJSON coordinates as
    level-0 pixels: ROITypeAdapters.java v0.6.0 L115-142)."""
    from napari_her2stain._qupath import export_layer

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((800, 1200, 3), np.uint8), rgb=True, scale=(0.25, 0.25),
                     metadata={"her2stain": {"role": "he", "mpp": 0.25}})
    um = viewer.add_shapes([np.array([[100.0, 200.0], [100.0, 260.0], [150.0, 260.0],
                                      [150.0, 200.0]])], shape_type="polygon", name="in µm")
    out = export_layer(um, tmp_path / "um.geojson")
    (f,) = read_features(out)
    assert f.geometry.bounds == pytest.approx((800, 400, 1040, 600))  # x = 200 µm / 0.25
    shifted = viewer.add_shapes([np.array([[0.0, 0.0], [0.0, 40.0], [20.0, 40.0]])],
                                shape_type="polygon", scale=(0.5, 0.5), translate=(10.0, 5.0))
    shifted.save(str(tmp_path / "s.geojson"), plugin="napari-her2stain")  # the npe2 writer
    (g,) = read_features(tmp_path / "s.geojson")
    # world (row, col) = (10, 5) + 0.5 * data; level-0 = world / 0.25
    assert g.geometry.bounds == pytest.approx((20, 40, 100, 80))


def test_geojson_opened_before_the_he_exports_unchanged(make_napari_viewer, geojson_path, tmp_path):
    """A GeoJSON layer read with no H&E open holds level-0 pixels; an H&E opened later must not
    rescale it on export."""
    viewer = make_napari_viewer()
    (layer,) = viewer.open(geojson_path, plugin="napari-her2stain")
    viewer.add_image(np.zeros((300, 400, 3), np.uint8), rgb=True, scale=(0.5, 0.5),
                     metadata={"her2stain": {"role": "he", "mpp": 0.5}})
    out = tmp_path / "same.geojson"
    layer.save(str(out), plugin="napari-her2stain")
    assert read_features(out)[0].geometry.bounds == (100, 20, 300, 220)
