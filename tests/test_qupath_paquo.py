"""paquo backend against a real QuPath; skipped with the reason when none is found."""

import pytest

from her2core.qupath.paquo_backend import qupath_available

FOUND, REASON = qupath_available()


def test_qupath_lookup_answers_without_starting_a_jvm():
    import sys

    assert isinstance(FOUND, bool) and REASON
    assert "paquo.java" not in sys.modules  # the lookup must not import paquo.java (JVM start)


@pytest.mark.skipif(not FOUND, reason=f"no QuPath for paquo: {REASON}")
def test_paquo_round_trip_images_classes_annotations(tmp_path):
    from pathlib import Path

    import numpy as np

    from her2core.qupath.geojson import read_features
    from her2core.qupath.paquo_backend import PaquoBackend
    from her2core.slide import write_pyramid

    slide = tmp_path / "he.ome.tif"
    rgb = np.full((1024, 1024, 3), 230, np.uint8)
    rgb[200:800, 300:900] = (180, 90, 160)
    write_pyramid(slide, rgb, mpp=0.5, tile=256)
    feats = read_features(Path(__file__).parent / "fixtures" / "qupath" / "qupath_single_feature.geojson")
    with PaquoBackend(tmp_path / "proj", mode="x") as qp:
        entry = qp.add_image(slide, "BRIGHTFIELD_H_E")
        assert qp.add_features(entry, feats) == 1
    with PaquoBackend(tmp_path / "proj", mode="r") as qp:
        back = qp.read_features(qp.image("he.ome.tif"))
    assert len(back) == 1 and back[0].class_name == "Tumor"
    assert back[0].geometry.equals(feats[0].geometry) and back[0].name == "ROI 1"


def test_derived_classes_become_a_parent_chain_as_qupath_splits_them():
    """paquo refuses ':' in a class name (paquo/classes.py: 'PathClass names cannot contain
    ':''), so 'Tumor: Positive' must be built as Positive under Tumor — the names QuPath itself
    splits the string into (PathClass.java v0.6.0 L561-564: split on ':' and strip)."""
    from her2core.qupath.paquo_backend import class_names

    assert class_names({"name": "Tumor: Positive", "color": [1, 2, 3]}) == ["Tumor", "Positive"]
    assert class_names({"name": "Tumor:HER2: 2+"}) == ["Tumor", "HER2", "2+"]
    assert class_names({"name": "x", "names": ["Stroma", "Negative"]}) == ["Stroma", "Negative"]
    assert class_names({"name": "Stroma"}) == ["Stroma"] and class_names(None) == []


@pytest.mark.skipif(not FOUND, reason=f"no QuPath for paquo: {REASON}")
def test_paquo_keeps_derived_classes_detections_and_cells(tmp_path):
    import numpy as np
    from shapely.geometry import box

    from her2core.qupath.geojson import Feature
    from her2core.qupath.paquo_backend import PaquoBackend
    from her2core.slide import write_pyramid

    slide = write_pyramid(tmp_path / "he.ome.tif", np.full((512, 512, 3), 230, np.uint8), mpp=0.5,
                          tile=256)
    feats = [Feature(box(10, 10, 200, 200), classification={"name": "Tumor: Positive",
                                                             "color": [200, 0, 0]}),
             Feature(box(20, 20, 40, 40), object_type="detection", measurements={"DAB": 0.5}),
             Feature(box(50, 50, 70, 70), object_type="cell", nucleus=box(55, 55, 65, 65))]
    with PaquoBackend(tmp_path / "proj", mode="x") as qp:
        assert qp.add_features(qp.add_image(slide), feats) == 3
    with PaquoBackend(tmp_path / "proj", mode="r") as qp:
        back = qp.read_features(qp.image("he.ome.tif"))
    kinds = sorted(f.object_type for f in back)
    assert kinds == ["annotation", "cell", "detection"]
    ann = next(f for f in back if f.object_type == "annotation")
    assert ann.class_name == "Tumor: Positive"
    cell = next(f for f in back if f.object_type == "cell")
    assert cell.nucleus is not None and cell.nucleus.equals(box(55, 55, 65, 65))
