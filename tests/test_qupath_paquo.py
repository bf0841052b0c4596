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
