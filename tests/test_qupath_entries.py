"""Project entries as QuPath 0.6.0 reads them: reader, server metadata, affine calibration and
clipping, and where an H&E ROI falls on the virtual HER2 — in QuPath terms and in napari.

QuPath does not run here; `qupath06` re-derives each rule from QuPath's v0.6.0 source and the
docstrings below cite the lines each assertion rests on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from qupath06 import BIOFORMATS, OPENSLIDE, level_downsample_java, readers_tried, server_view
from scipy import ndimage as ndi
from shapely.geometry import Polygon

from her2core.qupath.geojson import Feature
from her2core.qupath.project import (
    ImageRequest,
    add_images,
    entry_builder,
    load_project,
    read_sidecar,
    uri_builder,
)
from her2core.slide import open_slide, write_pyramid

SLIDE_MPP = 0.25
WORK_MPP = 0.5   # twice the slide's
ROI = Polygon([(430, 310), (790, 350), (760, 650), (470, 620)])  # away from the origin


def _open_file(path):
    with open_slide(path) as s:
        return s.dimensions[0], s.dimensions[1], s.mpp


class Identity(torch.nn.Module):
    """A 'model' that returns its input: the virtual HER2 is then the H&E itself, so where
    the tissue lands can be checked pixel by pixel."""

    name = "identity"

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        return he


@pytest.fixture(scope="module")
def he(tmp_path_factory):
    """The H&E of a `her2 sample` case at 0.25 µm/px: its pixels are the truth."""
    from her2core.sample.slides import synthetic_case

    d = tmp_path_factory.mktemp("entries")
    case = synthetic_case(d / "sample", "case00", her2_score=2, size=1024, mpp=SLIDE_MPP)
    he_path = next(Path(case).rglob("he.ome.tif"))
    with open_slide(he_path) as s:
        assert s.mpp == SLIDE_MPP
        rgb = s.read_region((0, 0), 0, s.dimensions)
    return d, rgb, he_path


@pytest.fixture(scope="module")
def virtual(he):
    from her2core.inference.options import InferenceOptions
    from her2core.inference.slide import translate_slide

    d, _, he_path = he
    return translate_slide(Identity(), he_path, d / "virtual.ome.tif",
                           InferenceOptions(work_mpp=WORK_MPP, tile=64, overlap=16), roi=ROI)


def _best_shift(shown: np.ndarray, truth: np.ndarray, valid: np.ndarray, reach: int = 6):
    """Integer (dx, dy) of level-0 px moving `truth` onto `shown` best (mean abs error)."""
    best = None
    g_shown = shown.astype(float).mean(axis=2)
    g_truth = ndi.uniform_filter(truth.astype(float).mean(axis=2), 2)  # the 2x2 mean the model saw
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            moved = np.roll(np.roll(g_truth, -dy, axis=0), -dx, axis=1)
            err = np.abs(g_shown - moved)[valid].mean()
            if best is None or err < best[0]:
                best = (err, dx, dy)
    return best


def test_readers_are_the_ones_qupath_would_pick(tmp_path):
    """Which reader opens an entry.

    Named provider: only it is tried (ImageServerBuilder.java L361-386), so the old fixed
    Bio-Formats entry could never fall back to OpenSlide for .mrxs. No provider: readers
    ranked by support, Bio-Formats 5 for OME-TIFF (BioFormatsServerBuilder.java L76-77,
    L151-152), OpenSlide 3.5/2.5 for vendor files (OpenslideServerBuilder.java L100-110);
    ``--no-crop`` is read by OpenslideImageServer only (OpenslideImageServer.java L159-163),
    so the OpenSlide formats name that reader.
    """
    old = {"builderType": "uri", "providerClassName": BIOFORMATS, "uri": "file:/x/a.mrxs",
           "args": ["--series", "0"]}
    assert readers_tried(old, "a.mrxs") == [BIOFORMATS]  # the defect: nothing else is tried
    for name in ("a.mrxs", "b.ndpi", "c.svs", "d.scn", "e.bif", "f.vms", "g.vmu", "h.svslide"):
        p = tmp_path / name
        p.write_bytes(b"")
        b = uri_builder(p)
        assert readers_tried(b, name) == [OPENSLIDE], name
        assert b["args"] == ["--no-crop"], name
    for name in ("he.ome.tif", "he.ome.tiff", "plain.tif"):
        b = uri_builder(tmp_path / name)
        assert "providerClassName" not in b and b["args"] == []
        tried = readers_tried(b, name)
        assert len(tried) == 2 and (tried[0] == BIOFORMATS) == (".ome." in name)


def test_every_entry_carries_the_server_metadata_qupath_uses(he, virtual):
    """An entry lists without building a server: ImageData.getServerMetadata returns the
    builder's metadata (qupath/lib/images/ImageData.java L287-299), DefaultProject's
    readImageData asks only for it (qupath/lib/projects/DefaultProject.java L659-695).
    Gson field names of ImageServerMetadata (ImageServerMetadata.java L115-141),
    PixelCalibration (PixelCalibration.java L57-63, SimpleQuantity L326-329) and the level
    downsample QuPath estimates (ImageServerMetadata.java L1124-1168)."""
    d, _, he_path = he
    res = add_images(d / "proj_md", [ImageRequest(he_path, role="he"),
                                     ImageRequest(virtual, role="virtual_her2", frame=he_path)])
    e_he, e_v = res.entries
    md = e_he["serverBuilder"]["metadata"]
    with open_slide(he_path) as s:
        assert (md["width"], md["height"]) == s.dimensions
        dims = s.level_dimensions
    assert [(lv["width"], lv["height"]) for lv in md["levels"]] == [tuple(x) for x in dims]
    assert [lv["downsample"] for lv in md["levels"]] == [
        level_downsample_java(dims[0][0], dims[0][1], w, h) for w, h in dims]
    assert md["pixelType"] == "UINT8" and md["isRGB"] and len(md["channels"]) == 3
    assert md["pixelCalibration"]["pixelWidth"] == {"value": SLIDE_MPP, "unit": "µm"}
    # the wrapped virtual slide keeps its own metadata (0.5 µm/px, its own size)
    inner = e_v["serverBuilder"]["builder"]["metadata"]
    with open_slide(virtual) as v:
        assert (inner["width"], inner["height"]) == v.dimensions
    assert inner["pixelCalibration"]["pixelWidth"]["value"] == WORK_MPP
    json.dumps(load_project(d / "proj_md"))  # plain JSON all the way


def test_roi_on_the_he_lands_on_the_same_tissue_of_the_virtual_her2(he, virtual):
    """Acceptance: an ROI drawn on the H&E, put on the virtual HER2 entry (its sidecar
    GeoJSON), shows the same tissue within 1 level-0 pixel — in QuPath and in napari — for an
    ROI away from the origin translated at twice the slide's µm/px.

    QuPath: the entry's server (server_view: ImageServerBuilder.java L188-196,
    AbstractImageServer.java L242-286, AffineTransformImageServer.java L190-262) shows at an
    entry point p the file pixel containing T^-1 p; GeoJSON coordinates are the entry's
    level-0 pixels (qupath/lib/io/ROITypeAdapters.java L115-142, no rescaling). napari: the
    reader's scale and translate (napari_her2stain/_reader.py slide_layer) and the ROI
    layer in the H&E's frame (napari_her2stain/_qupath.py rois_layer_kwargs).
    """
    d, rgb, he_path = he
    roi_feat = Feature(geometry=ROI, name="ROI far from origin",
                       classification={"name": "Tumor", "color": [200, 0, 0]})
    res = add_images(d / "proj_roi", [ImageRequest(he_path, role="he", rois=[roi_feat]),
                                      ImageRequest(virtual, role="virtual_her2", rois=[roi_feat],
                                                   frame=he_path)])
    entry = res.entries[1]
    view = server_view(entry["serverBuilder"], open_file=_open_file)
    with open_slide(virtual) as v:
        vimg = v.read_region((0, 0), 0, v.dimensions)
    # the ROI the virtual entry carries is the H&E's, unchanged (entry frame = H&E frame)
    (side,) = read_sidecar(d / "proj_roi", entry)
    assert side.geometry.equals(ROI)
    # what QuPath shows at every H&E pixel centre of the ROI's box
    x0, y0, x1, y1 = (int(c) for c in ROI.bounds)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    pts = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    from shapely import contains_xy

    inside = contains_xy(ROI, pts[:, 0], pts[:, 1]).reshape(xx.shape)
    inside = ndi.binary_erosion(inside, iterations=8)   # away from the white outside the ROI

    def shown_through(file_px):
        ok = (file_px[:, 0] >= 0) & (file_px[:, 1] >= 0) & (file_px[:, 0] < vimg.shape[1]) & \
            (file_px[:, 1] < vimg.shape[0])
        out = np.full((len(file_px), 3), 255, np.uint8)
        out[ok] = vimg[file_px[ok, 1], file_px[ok, 0]]
        return out.reshape(*xx.shape, 3)

    truth = rgb[y0:y1, x0:x1]
    err, dx, dy = _best_shift(shown_through(view.file_pixel(pts)), truth, inside)
    assert max(abs(dx), abs(dy)) <= 1 and err < 6, (err, dx, dy)
    assert view.averaged_pixel_size_microns == SLIDE_MPP
    assert (view.width, view.height) == (rgb.shape[1], rgb.shape[0])

    # before: the virtual slide as a plain entry under the H&E ROIs (box origin and 2x lost)
    old = server_view(uri_builder(virtual), open_file=_open_file)
    err_old, *_ = _best_shift(shown_through(old.file_pixel(pts)), truth, inside)
    assert err_old > 4 * err

    # napari: ROI layer in the H&E frame, virtual layer from the plugin's reader
    pytest.importorskip("napari")
    from napari_her2stain._qupath import shapes_from_features
    from napari_her2stain._reader import slide_layer

    _, he_kw, _ = slide_layer(he_path, role="he")
    _, v_kw, _ = slide_layer(virtual, role="virtual")
    frame = SimpleNamespace(scale=np.array(he_kw["scale"]), translate=np.array(he_kw["translate"]),
                            name="he", metadata=he_kw["metadata"])
    _, roi_kw, _ = shapes_from_features([roi_feat], frame)
    world = np.asarray(roi_kw["translate"]) + np.asarray(roi_kw["scale"]) * pts[:, ::-1]
    vrc = np.rint((world - np.asarray(v_kw["translate"])) / np.asarray(v_kw["scale"])).astype(int)
    err_n, dx_n, dy_n = _best_shift(shown_through(vrc[:, ::-1]), truth, inside)
    assert max(abs(dx_n), abs(dy_n)) <= 1 and err_n < 6, (err_n, dx_n, dy_n)


# A registration with shear and a positive translation: HER2 level-0 (x, y) -> H&E (x, y)
SHEAR_M = np.array([[1.0, 0.12, 140.0], [0.05, 1.0, 95.0], [0.0, 0.0, 1.0]])


def test_registered_entry_is_calibrated_and_unclipped_for_a_sheared_affine(he, tmp_path):
    """Acceptance: the registered HER2 entry keeps µm pixel size and shows all its tissue for a
    sheared affine with a positive translation.

    Without metadata QuPath's AffineTransformImageServer would size itself to the transformed
    bounding box from (0, 0) (L67-81: its x/y offset is dropped) — the right/bottom of the
    tissue beyond that width is never drawn — and updatePixelCalibration returns the default
    (pixel) calibration for a general transform (L139-157; java.awt TYPE_GENERAL_TRANSFORM,
    checked against the JVM below). The entry's metadata replaces both
    (ImageServerBuilder.java L188-196, AbstractImageServer.java L272-286,
    ImageServerMetadata.java L800-818 accepts any width/height/pixel size).
    """
    _, rgb, he_path = he
    # the HER2 slide: the H&E content as it would sit on the HER2 slide (H&E = M @ HER2)
    minv = np.linalg.inv(SHEAR_M)
    hh, ww = 640, 700
    her2 = np.stack([ndi.affine_transform(rgb[..., c], _rc_matrix(SHEAR_M), output_shape=(hh, ww),
                                          order=0, cval=242) for c in range(3)], -1)
    her2_path = write_pyramid(tmp_path / "her2.ome.tif", her2, mpp=SLIDE_MPP, tile=128, min_size=128)
    b_new = entry_builder(her2_path, transform_xy=SHEAR_M, frame=he_path)
    new = server_view(b_new, open_file=_open_file)
    old_builder = {k: v for k, v in b_new.items() if k != "metadata"}
    old = server_view(old_builder, open_file=_open_file)
    # the HER2 tissue's footprint in the H&E frame (truth: the matrix it was made with)
    corners = np.array([[0, 0], [ww, 0], [0, hh], [ww, hh]], float)
    foot = (SHEAR_M[:2, :2] @ corners.T).T + SHEAR_M[:2, 2]
    far_x, far_y = min(foot[:, 0].max(), rgb.shape[1]), min(foot[:, 1].max(), rgb.shape[0])
    # before: uncalibrated and clipped by the positive translation
    assert math.isnan(old.averaged_pixel_size_microns)
    assert old.width < far_x - 100 and old.height < far_y - 60
    # after: µm/px of the H&E and the whole H&E frame
    assert new.pixel_width_um == new.pixel_height_um == SLIDE_MPP
    assert (new.width, new.height) == (rgb.shape[1], rgb.shape[0]) and new.width >= far_x
    # and the tissue drawn near the far corner is the H&E's (same place, within 1 px)
    x0, y0 = int(far_x) - 200, int(far_y) - 160
    yy, xx = np.mgrid[y0:y0 + 140, x0:x0 + 170]
    pts = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    fp = new.file_pixel(pts)
    ok = (fp >= 0).all(1) & (fp[:, 0] < ww) & (fp[:, 1] < hh)
    shown = np.full((len(pts), 3), 255, np.uint8)
    shown[ok] = her2[fp[ok, 1], fp[ok, 0]]
    valid = ndi.binary_erosion(ok.reshape(xx.shape), iterations=8)
    g_shown = shown.reshape(*xx.shape, 3).astype(float).mean(2)
    g_he = rgb[y0:y0 + 140, x0:x0 + 170].astype(float).mean(2)
    assert valid.mean() > 0.5 and np.abs(g_shown - g_he)[valid].mean() < 6
    assert np.linalg.norm(minv @ [far_x, far_y, 1] - [ww, hh, 1]) < 400  # near the HER2 corner


def _rc_matrix(m_xy: np.ndarray) -> np.ndarray:
    """scipy's output (row, col) -> input (row, col) for HER2 pixel -> H&E pixel m_xy."""
    p = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float)
    return p @ m_xy @ p


def test_java_awt_flags_the_sheared_inverse_as_a_general_transform(tmp_path):
    """The rule the oracle uses for calibration (AffineTransformImageServer.java L152-157:
    TYPE_GENERAL_TRANSFORM of the inverse) checked against java.awt itself."""
    groovy = shutil.which("groovy")
    if groovy is None or shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("groovy/java not installed (Debian: apt-get install groovy)")
    from qupath06 import _java_is_general

    scale_shift = np.array([[2.0, 0, 430], [0, 2.0, 310], [0, 0, 1]])
    prog = tmp_path / "type.groovy"
    prog.write_text("""
import java.awt.geom.AffineTransform
def m = new groovy.json.JsonSlurper().parseText(args[0])
m.each { t ->
    def at = new AffineTransform(t[0][0] as double, t[1][0] as double, t[0][1] as double,
                                 t[1][1] as double, t[0][2] as double, t[1][2] as double)
    println((at.createInverse().getType() & AffineTransform.TYPE_GENERAL_TRANSFORM) != 0)
}
""")
    env = dict(os.environ)
    if not env.get("JAVA_HOME"):
        env["JAVA_HOME"] = str(Path(shutil.which("java")).resolve().parent.parent)
    mats = [SHEAR_M, scale_shift]
    r = subprocess.run([groovy, str(prog), json.dumps([m.tolist() for m in mats])], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    got = [line.strip() == "true" for line in r.stdout.split("\n") if line.strip()]
    assert got == [_java_is_general(np.linalg.inv(m)) for m in mats] == [True, False]


def test_entries_list_without_their_file_and_old_her2_entries_are_upgraded(he, tmp_path):
    """With metadata in the builder QuPath never opens the file to list an entry or read its
    size (ImageData.java L287-299; DefaultProject.java L659-695), so a moved slide no longer
    stops a `QuPath script -p` run at that entry. An entry an older her2 wrote (fixed
    Bio-Formats reader, no metadata) is rewritten in place when the image is added again."""
    _, rgb, he_path = he
    slide = shutil.copy(he_path, tmp_path / "moved.ome.tif")
    proj = tmp_path / "proj"
    add_images(proj, [ImageRequest(Path(slide), role="he")])
    data = load_project(proj)
    old = data["images"][0]["serverBuilder"]
    assert old["metadata"]["width"] == rgb.shape[1]

    def no_file(path):
        raise FileNotFoundError(path)

    Path(slide).rename(tmp_path / "elsewhere.ome.tif")
    view = server_view(old, open_file=no_file)          # listed without the file
    assert (view.width, view.height) == (rgb.shape[1], rgb.shape[0])
    bare = {k: v for k, v in old.items() if k != "metadata"}
    with pytest.raises(FileNotFoundError):               # before: the server had to be built
        server_view(bare, open_file=no_file)
    # an entry written by the previous her2: Bio-Formats named, no metadata
    Path(tmp_path / "elsewhere.ome.tif").rename(slide)
    data["images"][0]["serverBuilder"] = dict(bare, providerClassName=BIOFORMATS,
                                              args=["--series", "0"])
    (proj / "project.qpproj").write_text(json.dumps(data))
    res = add_images(proj, [ImageRequest(Path(slide), role="he")])
    again = load_project(proj)["images"]
    assert len(again) == 1 and res.entries[0]["entryID"] == again[0]["entryID"]
    assert "providerClassName" not in again[0]["serverBuilder"]
    assert again[0]["serverBuilder"]["metadata"]["width"] == rgb.shape[1]


def test_each_entry_kind_opens_at_the_he_size_and_pixel_size(he, tmp_path):
    """Every entry kind `her2 qupath project` writes, read as QuPath reads it (server_view:
    ImageServerBuilder.java L188-196, AffineTransformImageServer.java L67-111): H&E (uri),
    registered HER2 (affine, sheared), resampled HER2 already in the H&E grid (plain uri) and
    a whole-slide virtual HER2 at twice the µm/px (affine scale 2, origin 0)."""
    _, rgb, he_path = he
    h, w = rgb.shape[:2]
    resampled = write_pyramid(tmp_path / "her2_registered.ome.tif", rgb, mpp=SLIDE_MPP, tile=128,
                              min_size=128)
    half = rgb[::2, ::2]
    whole_virtual = write_pyramid(tmp_path / "virtual_whole.ome.tif", half, mpp=WORK_MPP, tile=128,
                                  min_size=128, properties={"slide_mpp": SLIDE_MPP})
    res = add_images(tmp_path / "p", [
        ImageRequest(he_path, role="he"),
        ImageRequest(resampled, role="her2_registered", frame=he_path),
        ImageRequest(whole_virtual, role="virtual_her2", frame=he_path),
        ImageRequest(resampled, role="her2_registered", transform_xy=SHEAR_M, frame=he_path)])
    kinds = [e["serverBuilder"]["builderType"] for e in res.entries]
    assert kinds == ["uri", "uri", "affine", "affine"]
    for e in res.entries:
        v = server_view(e["serverBuilder"], open_file=_open_file)
        assert (v.width, v.height) == (w, h) and v.averaged_pixel_size_microns == SLIDE_MPP
    v = server_view(res.entries[2]["serverBuilder"], open_file=_open_file)
    np.testing.assert_array_equal(v.file_pixel([[101.5, 51.5], [w - 0.5, h - 0.5]]),
                                  [[50, 25], [(w - 1) // 2, (h - 1) // 2]])
