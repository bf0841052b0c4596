"""QuPath 0.6 project files written without QuPath: fields, affine entry, backups, no lost entry."""

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from her2core.coords import apply_affine_xy
from her2core.errors import UserError
from her2core.qupath.geojson import read_features
from her2core.qupath.project import (
    ImageRequest,
    add_images,
    builder_matrix,
    load_project,
    load_registration,
    save_project,
    uri_to_path,
)
from her2core.slide import write_pyramid

FIX = Path(__file__).parent / "fixtures" / "qupath"
# A registration-like transform: rotation, anisotropic scale, shear, translation.
M = np.array([[0.9981, -0.0523, 412.75], [0.0601, 1.0042, -96.125], [0.0, 0.0, 1.0]])


def _slides(tmp_path, *names, mpp=0.5):
    """Small real pyramidal slides (the project writer reads their size and µm/px)."""
    out = []
    rgb = np.full((150, 200, 3), 235, np.uint8)
    rgb[40:110, 50:160] = (180, 90, 160)
    for n in names:
        p = tmp_path / "slides" / n
        p.parent.mkdir(parents=True, exist_ok=True)
        out.append(write_pyramid(p, rgb, mpp=mpp, tile=64, min_size=64))
    return out


def _java_affine_apply(transform: dict, xy: np.ndarray) -> np.ndarray:
    """What java.awt.geom.AffineTransform.transform does with QuPath's stored fields."""
    t = transform
    x, y = xy[:, 0], xy[:, 1]
    return np.stack([t["m00"] * x + t["m01"] * y + t["m02"], t["m10"] * x + t["m11"] * y + t["m12"]], 1)


def test_new_project_has_the_fields_qupath_06_writes(tmp_path):
    he, her2 = _slides(tmp_path, "case1 HE.ome.tif", "case1_HER2.ome.tif")
    rois = read_features(FIX / "qupath_v06_collection.geojson")
    res = add_images(tmp_path / "proj", [
        ImageRequest(he, rois=rois, role="he"),
        ImageRequest(her2, image_type="BRIGHTFIELD_H_DAB", role="her2_registered",
                     transform_xy=M, rois=rois, pair_with=0, frame=he)])
    data = json.loads((tmp_path / "proj" / "project.qpproj").read_text())
    assert data["version"] == "0.6.0"
    assert {"createTimestamp", "modifyTimestamp", "uri", "lastID", "images"} <= set(data)
    assert data["uri"].startswith("file:/") and data["uri"].endswith("/proj/project.qpproj")
    assert data["lastID"] == 2 and res.backup is None
    e1, e2 = data["images"]
    for e in (e1, e2):
        assert {"serverBuilder", "entryID", "randomizedName", "imageName", "metadata"} <= set(e)
        uuid.UUID(e["randomizedName"])
    assert e1["entryID"] == 1 and e2["entryID"] == 2
    b1 = e1["serverBuilder"]
    assert b1["builderType"] == "uri" and b1["args"] == []
    assert "providerClassName" not in b1  # QuPath picks the reader (Bio-Formats for OME-TIFF)
    assert b1["metadata"]["width"] == 200 and b1["metadata"]["height"] == 150
    assert "%20" in b1["uri"] and uri_to_path(b1["uri"]) == he.resolve()
    assert e1["imageName"] == "case1 HE.ome.tif"
    b2 = e2["serverBuilder"]
    assert b2["builderType"] == "affine" and b2["builder"]["builderType"] == "uri"
    assert uri_to_path(b2["builder"]["uri"]) == her2.resolve()
    assert set(b2["transform"]) == {"m00", "m01", "m02", "m10", "m11", "m12"}
    assert e1["metadata"]["her2.pair"] == "2" and e2["metadata"]["her2.pair"] == "1"
    assert e2["metadata"]["her2.image_type"] == "BRIGHTFIELD_H_DAB"
    # classes, sidecars, import script; never data.qpdata
    classes = json.loads((tmp_path / "proj" / "classifiers" / "classes.json").read_text())
    by_name = {c["name"]: c["color"] for c in classes["pathClasses"]}
    assert by_name["Tumor"] == -3670016 and "Tumor: HER2 2+" in by_name
    for eid in (1, 2):
        side = read_features(tmp_path / "proj" / "her2" / "annotations" / f"{eid}.geojson")
        assert [f.name for f in side] == [f.name for f in rois]
        assert all(f.metadata.get("her2.sidecar") == "1" for f in side)
        assert f"'{eid}.geojson'" in res.groovy_lines[eid]
    assert res.import_script.name == "her2_import_annotations.groovy"
    assert "importObjectsFromFile" in res.groovy_lines[1]
    assert not list((tmp_path / "proj").rglob("*.qpdata"))


def test_affine_entry_maps_points_exactly_as_the_registration(tmp_path):
    he, her2 = _slides(tmp_path, "he.ome.tif", "her2.ome.tif")
    reg = tmp_path / "reg" / "transform.json"
    reg.parent.mkdir()
    reg.write_text(json.dumps({"matrix": M.tolist(), "her2": "../slides/her2.ome.tif",
                               "he": str(he), "mpp_her2": 0.25, "mpp_he": 0.25}))
    r = load_registration(reg)
    assert r.her2_slide.resolve() == her2.resolve() and r.he_slide == he
    add_images(tmp_path / "p", [ImageRequest(he), ImageRequest(r.her2_slide, transform_xy=r.matrix_xy,
                                                               frame=he)])
    entry = load_project(tmp_path / "p")["images"][1]
    pts = np.array([[0, 0], [1000, 0], [0, 1000], [12345.5, 6789.25], [80000, 60000]], float)
    expected = apply_affine_xy(M, pts)  # HER2 level-0 (x, y) -> H&E level-0 (x, y)
    got = _java_affine_apply(entry["serverBuilder"]["transform"], pts)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(builder_matrix(entry["serverBuilder"]), M, rtol=0, atol=0)
    # the inverse direction would be wrong by far more than a pixel
    assert np.abs(apply_affine_xy(np.linalg.inv(M), pts) - got).max() > 100


def test_reads_the_transform_json_her2_register_writes(tmp_path):
    transform = pytest.importorskip("her2core.registration.transform")
    t = transform.Transform(matrix=M, he_mpp=0.5, her2_mpp=0.25, he_size=(800, 600),
                            her2_size=(1600, 1200), field=np.zeros((2, 3, 4), np.float32))
    t.info = {"he_path": "/data/he.svs", "her2_path": "/data/her2.svs"}
    r = load_registration(t.save(tmp_path / "transform.json"))
    np.testing.assert_array_equal(r.matrix_xy, M)
    assert (r.her2_slide, r.he_slide, r.has_field) == (Path("/data/her2.svs"), Path("/data/he.svs"), True)


def test_registration_file_variants_and_errors(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"transform": {"matrix": M[:2].tolist()}}))
    np.testing.assert_array_equal(load_registration(f).matrix_xy, M)
    f.write_text(json.dumps(M.tolist()))
    assert load_registration(f).her2_slide is None
    for bad, match in [({"nothing": 1}, "no 3×3 matrix"),
                       ({"matrix": [[1, 2, 3], [2, 4, 6], [0, 0, 1]]}, "not invertible"),
                       ({"matrix": [[1, 0], [0, 1]]}, "3×3 affine")]:
        f.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=match):
            load_registration(f)
    with pytest.raises(UserError, match="transform file not found"):
        load_registration(tmp_path / "missing.json")


def test_extending_backs_up_and_never_loses_an_entry(tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(FIX / "project_v06", proj)
    before_text = (proj / "project.qpproj").read_text()
    before = json.loads(before_text)
    he, her2 = _slides(tmp_path, "case8_HE.ome.tif", "case8_HER2.ome.tif")
    res = add_images(proj, [ImageRequest(he, rois=read_features(FIX / "qupath_v02_list.json")),
                            ImageRequest(her2, transform_xy=M, pair_with=0, frame=he)])
    after = load_project(proj)
    assert after["images"][:2] == before["images"]  # untouched, in place
    assert [e["entryID"] for e in after["images"]] == [2, 5, 6, 7]
    assert after["lastID"] == 7 and after["createTimestamp"] == before["createTimestamp"]
    assert res.backup is not None and res.backup.read_text() == before_text
    classes = {c["name"]: c["color"] for c in
               json.loads((proj / "classifiers" / "classes.json").read_text())["pathClasses"]}
    assert classes["Ignore*"] == -1710619 and classes["Stroma"] == -6895466  # kept
    # the same images again: same entries, new backup, still nothing lost
    res2 = add_images(proj, [ImageRequest(he), ImageRequest(her2, transform_xy=M, frame=he)])
    again = load_project(proj)
    assert [e["entryID"] for e in again["images"]] == [2, 5, 6, 7]
    assert [e["entryID"] for e in res2.entries] == [6, 7] and res2.backup != res.backup
    assert len(list(proj.glob("project.qpproj.her2-backup-*"))) == 2
    # the hand-aligned affine entry of the fixture is read back as QuPath would apply it
    t = before["images"][1]["serverBuilder"]["transform"]
    p = np.array([[100.0, 200.0]])
    np.testing.assert_allclose(apply_affine_xy(builder_matrix(before["images"][1]["serverBuilder"]), p),
                               _java_affine_apply(t, p))


def test_save_refuses_to_drop_entries(tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(FIX / "project_v06", proj)
    data = load_project(proj)
    smaller = dict(data, images=data["images"][:1])
    with pytest.raises(RuntimeError, match=r"entries \[5\] would be lost"):
        save_project(proj, smaller, previous=data)
    assert load_project(proj)["images"] == data["images"]


def test_bad_inputs_are_user_errors(tmp_path):
    (he,) = _slides(tmp_path, "he.ome.tif")
    with pytest.raises(UserError, match="slide not found"):
        add_images(tmp_path / "p", [ImageRequest(tmp_path / "absent.svs")])
    with pytest.raises(UserError, match="image type"):
        add_images(tmp_path / "p", [ImageRequest(he, image_type="H&E")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        add_images(busy, [ImageRequest(he)])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "project.qpproj").write_text("{ not json")
    with pytest.raises(UserError, match="not a readable QuPath project"):
        add_images(broken, [ImageRequest(he)])
    assert (broken / "project.qpproj").read_text() == "{ not json"
    with pytest.raises(UserError, match="no QuPath project"):
        load_project(tmp_path / "nowhere")
