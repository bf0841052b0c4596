"""Groovy scripts for QuPath 0.6 parse (without QuPath), and java.awt applies our affine entry
exactly as the registration does. Skipped with the reason when `groovy`/`java` are absent."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from her2core.coords import apply_affine_xy
from her2core.qupath.project import ImageRequest, add_images, import_script_text
from her2core.slide import write_pyramid

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "qupath_scripts"
PARSE_CHECK = SCRIPTS / "tools" / "parse_check.groovy"


def _groovy_env():
    groovy = shutil.which("groovy")
    if groovy is None:
        pytest.skip("groovy not installed (Debian: apt-get install groovy)")
    env = dict(os.environ)
    jh = env.get("JAVA_HOME")
    if not jh or not (Path(jh) / "bin" / "java").exists():
        java = shutil.which("java")
        if java is None:
            pytest.skip("no java for groovy (install a JDK or set JAVA_HOME)")
        env["JAVA_HOME"] = str(Path(java).resolve().parent.parent)
    return groovy, env


def _groovy(args, env, groovy):
    return subprocess.run([groovy, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_all_scripts_parse_and_a_broken_one_fails(tmp_path):
    groovy, env = _groovy_env()
    scripts = sorted(SCRIPTS.glob("*.groovy"))
    assert {p.name for p in scripts} >= {"export_annotations.groovy", "export_tiles.groovy",
                                         "run_translate.groovy", "import_measurements.groovy"}
    generated = tmp_path / "her2_import_annotations.groovy"
    generated.write_text(import_script_text())
    broken = tmp_path / "broken.groovy"
    broken.write_text(SCRIPTS.joinpath("export_annotations.groovy").read_text().replace("} catch", "catch", 1))
    # one JVM start: every script parses, the broken copy fails and sets the exit code
    r = _groovy([PARSE_CHECK, *scripts, generated, PARSE_CHECK, broken], env, groovy)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("OK ") == len(scripts) + 2, r.stdout + r.stderr
    assert f"FAIL {broken}" in r.stderr and "FAIL" not in r.stdout


def test_every_script_documents_gui_and_command_line_use():
    for p in sorted(SCRIPTS.glob("*.groovy")) + [None]:
        text = import_script_text() if p is None else p.read_text()
        head = text.split("*/", 1)[0]
        assert "GUI:" in head and "QuPath script -p" in head, p
        if p is not None and p.name != "export_annotations.groovy":
            assert "her2/status/" in text and "check --project" in head, p  # batch runs checkable


def test_java_awt_applies_the_affine_entry_as_the_registration_does(tmp_path):
    groovy, env = _groovy_env()
    for n in ("he.tif", "her2.tif"):
        write_pyramid(tmp_path / n, np.full((64, 96, 3), 230, np.uint8), mpp=0.5, tile=64)
    m = np.array([[0.97, -0.11, 812.5], [0.13, 1.03, -240.25], [0, 0, 1]])
    add_images(tmp_path / "p", [ImageRequest(tmp_path / "he.tif"),
                                ImageRequest(tmp_path / "her2.tif", transform_xy=m,
                                             frame=tmp_path / "he.tif")])
    pts = np.array([[0, 0], [1000, 0], [0, 1000], [31415.5, 27182.75]])
    prog = tmp_path / "apply.groovy"
    # Exactly what QuPath's GsonTools AffineTransformProxy.fill does with the stored fields.
    prog.write_text("""
import groovy.json.JsonSlurper
def project = new JsonSlurper().parse(new File(args[0]))
def t = project.images[1].serverBuilder.transform
def at = new java.awt.geom.AffineTransform()
at.setTransform(t.m00 as double, t.m10 as double, t.m01 as double, t.m11 as double, t.m02 as double, t.m12 as double)
def pts = new JsonSlurper().parseText(args[1])
pts.each { p ->
    def q = at.transform(new java.awt.geom.Point2D.Double(p[0] as double, p[1] as double), null)
    println q.getX() + ' ' + q.getY()
}
""")
    r = _groovy([prog, tmp_path / "p" / "project.qpproj", json.dumps(pts.tolist())], env, groovy)
    assert r.returncode == 0, r.stderr
    got = np.array([[float(v) for v in line.split()] for line in r.stdout.split("\n") if line.strip()])
    np.testing.assert_allclose(got, apply_affine_xy(m, pts), rtol=0, atol=1e-9)


_CALIBRATION_STANDIN = """
// What QuPath 0.6.0's PixelCalibration answers (PixelCalibration.java L57-58: default size
// 1 px; L195-197 and L213-226: the micron getters are NaN unless the unit is µm; L286-287:
// getAveragedPixelSize() averages the raw values, 1 for an uncalibrated image).
class Cal {
    Double w; String unit
    Number getAveragedPixelSize() { return w }
    double getAveragedPixelSizeMicrons() { return unit == 'µm' ? w : Double.NaN }
}
def results = []
[new Cal(w: 1.0d, unit: 'px'), new Cal(w: 0.25d, unit: 'µm')].each { cal ->
    try { results << String.valueOf(GUARD(cal)) } catch (IllegalStateException e) { results << 'refused' }
}
println results.join(' ')
"""


def test_export_tiles_refuses_an_uncalibrated_slide(tmp_path):
    """export_tiles.groovy's pixel-size guard, run against QuPath's calibration answers."""
    groovy, env = _groovy_env()
    text = (SCRIPTS / "export_tiles.groovy").read_text()
    begin, end = "// her2: pixel-size guard (begin)", "// her2: pixel-size guard (end)"
    assert begin in text and end in text, "the guard block is marked for this test"
    guard = text.split(begin, 1)[1].split(end, 1)[0]
    assert "getAveragedPixelSizeMicrons()" in guard
    old_guard = """def micronsPerPixel = { cal ->
        double serverMpp = cal.getAveragedPixelSize()
        if (!(serverMpp > 0) || Double.isNaN(serverMpp))
            throw new IllegalStateException('no pixel size')
        return serverMpp
    }"""
    out = {}
    for label, code in (("new", guard), ("old", old_guard)):
        prog = tmp_path / f"{label}.groovy"
        prog.write_text(code + "\ndef GUARD = micronsPerPixel\n" + _CALIBRATION_STANDIN)
        r = _groovy([prog], env, groovy)
        assert r.returncode == 0, r.stdout + r.stderr
        out[label] = r.stdout.split()
    assert out["new"] == ["refused", "0.25"]
    assert out["old"] == ["1.0", "0.25"]  # the defect: 1 "µm"/px on an uncalibrated slide
