"""`her2 qupath project|export|import|check` end to end on files; bad input exits 2."""

import json
import shutil
from pathlib import Path

import numpy as np

from her2core.cli import main
from her2core.qupath.geojson import read_features, write_features
from her2core.qupath.project import builder_matrix, load_project
from her2core.slide import write_pyramid

FIX = Path(__file__).parent / "fixtures" / "qupath"
M = [[1.01, 0.02, 250.0], [-0.02, 0.99, -75.5], [0.0, 0.0, 1.0]]


def _case(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    rgb = np.full((300, 400, 3), 235, np.uint8)
    rgb[60:240, 80:320] = (180, 90, 160)
    for n in ("c1_HE.ome.tif", "c1_HER2.ome.tif"):
        write_pyramid(slides / n, rgb, mpp=0.25, tile=64, min_size=64)
    # a virtual HER2 of a region: half the pixels (0.5 µm/px), cut at level-0 (40, 20)
    write_pyramid(slides / "c1_virtual.ome.tif", rgb[:100, :150], mpp=0.5, tile=64, min_size=64,
                  origin_xy=(40.0, 20.0), properties={"slide_mpp": 0.25, "kind": "virtual_her2"})
    reg = tmp_path / "reg"
    reg.mkdir()
    (reg / "transform.json").write_text(json.dumps({"matrix": M, "her2": str(slides / "c1_HER2.ome.tif")}))
    return slides, reg / "transform.json"


def test_project_export_import_round_trip(tmp_path, capsys):
    slides, tj = _case(tmp_path)
    proj, out = tmp_path / "proj", tmp_path / "out"
    rc = main(["qupath", "project", "--out", str(proj), "--image", str(slides / "c1_HE.ome.tif"),
               "--rois", str(FIX / "qupath_v06_collection.geojson"), "--registered", str(tj),
               "--virtual", str(slides / "c1_virtual.ome.tif")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "importObjectsFromFile" in text and "(new)" in text
    data = load_project(proj)
    kinds = [e["serverBuilder"]["builderType"] for e in data["images"]]
    assert kinds == ["uri", "affine", "affine"]
    np.testing.assert_allclose(builder_matrix(data["images"][1]["serverBuilder"]), M)
    # the virtual HER2 of a region: scale 2 and its level-0 origin, in the H&E's frame
    np.testing.assert_allclose(builder_matrix(data["images"][2]["serverBuilder"]),
                               [[2, 0, 40], [0, 2, 20], [0, 0, 1]])
    assert data["images"][2]["serverBuilder"]["metadata"]["width"] == 400
    assert [e["metadata"]["her2.role"] for e in data["images"]] == ["he", "her2_registered", "virtual_her2"]

    # QuPath's export script output for entry 1 wins over the sidecar; entry 2 falls back to it
    edited = read_features(FIX / "qupath_single_feature.geojson")
    write_features(proj / "her2" / "exported" / "1.geojson", edited)
    assert main(["qupath", "export", "--project", str(proj), "--out", str(out)]) == 0
    index = json.loads((out / "index.json").read_text())["images"]
    assert [r["features"] for r in index] == [1, 6, 6]
    assert [f.name for f in read_features(out / "c1_HE.ome.tif.geojson")] == ["ROI 1"]
    assert index[1]["transform_xy"] == M and index[0]["slide"].endswith("c1_HE.ome.tif")
    # a folder of GUI exports named by image is used when the script did not run
    gui = tmp_path / "gui"
    gui.mkdir()
    shutil.copy(FIX / "qupath_v02_list.json", gui / "c1_virtual.ome.tif (virtual HER2).geojson")
    (proj / "her2" / "exported" / "1.geojson").unlink()
    assert main(["qupath", "export", "--project", str(proj), "--out", str(out), "--from", str(gui)]) == 0
    index = json.loads((out / "index.json").read_text())["images"]
    assert [r["features"] for r in index] == [6, 6, 2]

    # her2 results: measurements matched by name from a CSV, written for import_measurements.groovy
    csv = tmp_path / "m.csv"
    csv.write_text("name,HER2 score proxy,DAB mean OD\nTumour 1,3,0.7\nInvasive front,1,0.2\n")
    assert main(["qupath", "import", "--project", str(proj), "--image", "c1_HE.ome.tif",
                 "--geojson", str(FIX / "qupath_v06_collection.geojson"), "--measurements", str(csv)]) == 0
    got = {f.name: f.measurements for f in read_features(proj / "her2" / "measurements" / "1.geojson")}
    assert got["Tumour 1"]["HER2 score proxy"] == 3.0 and got["Tumour 1"]["Area px^2"] == 290000.0
    assert got["Invasive front"]["DAB mean OD"] == 0.2
    # as annotations: the sidecar of entry 3 (by ID) is replaced
    assert main(["qupath", "import", "--project", str(proj), "--image", "3", "--as", "annotations",
                 "--geojson", str(FIX / "qupath_single_feature.geojson")]) == 0
    assert [f.name for f in read_features(proj / "her2" / "annotations" / "3.geojson")] == ["ROI 1"]
    assert "importObjectsFromFile" in capsys.readouterr().out
    assert len(load_project(proj)["images"]) == 3


def test_check_reports_failed_and_missing_images(tmp_path, capsys):
    slides, tj = _case(tmp_path)
    proj = tmp_path / "proj"
    assert main(["qupath", "project", "--out", str(proj), "--image", str(slides / "c1_HE.ome.tif"),
                 "--registered", str(tj)]) == 0
    st = proj / "her2" / "status" / "translate"
    st.mkdir(parents=True)
    (st / "1.json").write_text(json.dumps({"ok": False, "message": "her2 translate exited with 2"}))
    assert main(["qupath", "check", "--project", str(proj), "--step", "translate"]) == 1
    assert "FAILED  entry 1" in capsys.readouterr().out
    (st / "1.json").write_text(json.dumps({"ok": True, "message": "added"}))
    assert main(["qupath", "check", "--project", str(proj), "--step", "translate"]) == 0  # HER2 entry skipped
    assert main(["qupath", "check", "--project", str(proj), "--step", "export"]) == 1
    assert "MISSING entry 1" in capsys.readouterr().out


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    slides, _ = _case(tmp_path)
    he = str(slides / "c1_HE.ome.tif")
    cases = [
        ["qupath", "project", "--out", str(tmp_path / "p"), "--image", he, "--rois", str(tmp_path / "no.geojson")],
        ["qupath", "project", "--out", str(tmp_path / "p"), "--image", he, "--rois", str(FIX / "truncated.geojson")],
        ["qupath", "project", "--out", str(tmp_path / "p"), "--image", str(tmp_path / "absent.svs")],
        ["qupath", "project", "--out", str(tmp_path / "p"), "--image", he, "--her2", he],
        ["qupath", "export", "--project", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("her2 qupath: error: ") and err.count("\n") == 1, err
    assert main(["qupath", "project", "--out", str(tmp_path / "p"), "--image", he]) == 0
    capsys.readouterr()
    for argv, match in [
        (["qupath", "import", "--project", str(tmp_path / "p"), "--image", "nope",
          "--geojson", str(FIX / "qupath_single_feature.geojson")], "choose one of: 1="),
        (["qupath", "import", "--project", str(tmp_path / "p"), "--image", "1",
          "--geojson", str(FIX / "qupath_single_feature.geojson"), "--measurements", str(FIX / "truncated.geojson")],
         "not valid JSON"),
    ]:
        assert main(argv) == 2
        assert match in capsys.readouterr().err
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"ROI 9": {"x": 1}}))
    assert main(["qupath", "import", "--project", str(tmp_path / "p"), "--image", "1", "--geojson",
                 str(FIX / "qupath_single_feature.geojson"), "--measurements", str(m)]) == 2
    assert "no feature with id or name 'ROI 9'" in capsys.readouterr().err


def test_builder_writes_the_virtual_entry_run_translate_groovy_adds(tmp_path, capsys):
    """run_translate.groovy adds the virtual slide with the serverBuilder this writes: scaled
    and shifted onto the H&E's level-0 grid, with the H&E's size and µm/px."""
    slides, tj = _case(tmp_path)
    out = tmp_path / "b.json"
    assert main(["qupath", "builder", "--slide", str(slides / "c1_virtual.ome.tif"),
                 "--frame", str(slides / "c1_HE.ome.tif"), "--out", str(out)]) == 0
    b = json.loads(out.read_text())
    assert b["builderType"] == "affine" and b["builder"]["builderType"] == "uri"
    np.testing.assert_allclose(builder_matrix(b), [[2, 0, 40], [0, 2, 20], [0, 0, 1]])
    assert (b["metadata"]["width"], b["metadata"]["height"]) == (400, 300)
    assert b["metadata"]["pixelCalibration"]["pixelWidth"] == {"value": 0.25, "unit": "µm"}
    assert "x' = 2·x + 0·y + 40" in capsys.readouterr().out
    # the registered HER2 the same way; --transform without --frame is refused (exit 2)
    assert main(["qupath", "builder", "--slide", str(slides / "c1_HER2.ome.tif"), "--frame",
                 str(slides / "c1_HE.ome.tif"), "--transform", str(tj), "--out", str(out)]) == 0
    np.testing.assert_allclose(builder_matrix(json.loads(out.read_text())), M)
    assert main(["qupath", "builder", "--slide", str(slides / "c1_HER2.ome.tif"),
                 "--transform", str(tj), "--out", str(out)]) == 2
