"""The slide reader: lazy multiscale layers in microns, her2core folders as aligned layers, and a
20k x 20k slide that opens without reading its full-resolution level."""

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("napari")

from her2core.slide import open_slide, write_pyramid
from napari_her2stain._reader import napari_get_reader

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A `her2 sample`-style case folder: he.ome.tif, her2.ome.tif at another mpp, truth.json."""
    root = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(1)
    he = rng.integers(0, 256, (1100, 700, 3), dtype=np.uint8)
    her2 = rng.integers(0, 256, (550, 350, 3), dtype=np.uint8)
    write_pyramid(root / "he.ome.tif", he, mpp=0.25, tile=256, min_size=256, origin_xy=(40, 80))
    write_pyramid(root / "her2.ome.tif", her2, mpp=0.5, tile=256, min_size=256, origin_xy=(20, 40))
    (root / "truth.json").write_text("{}")
    return root, he, her2


def test_slide_layer_is_lazy_multiscale_in_microns(pair):
    root, he, _ = pair
    reader = napari_get_reader(str(root / "he.ome.tif"))
    assert reader is not None
    (data, kw, kind) = reader(str(root / "he.ome.tif"))[0]
    assert kind == "image" and kw["rgb"] and kw["multiscale"]
    assert [d.shape[:2] for d in data] == [(1100, 700), (550, 350), (275, 175), (138, 88)]
    assert type(data[0]).__name__ == "Array"  # dask: nothing read yet
    assert kw["scale"] == (0.25, 0.25)
    assert kw["translate"] == (80 * 0.25, 40 * 0.25)  # origin_xy (x, y) px -> (row, col) µm
    assert kw["metadata"]["her2stain"]["role"] == "he"
    np.testing.assert_array_equal(np.asarray(data[0][300:340, 100:170]), he[300:340, 100:170])
    assert napari_get_reader(str(root / "truth.json")) is None
    assert napari_get_reader(str(root / "nothing.png")) is None


def test_case_folder_opens_aligned_layers(make_napari_viewer, pair):
    root, _he, _her2 = pair
    viewer = make_napari_viewer()
    layers = viewer.open(str(root), plugin="napari-her2stain")
    roles = [ly.metadata["her2stain"]["role"] for ly in layers]
    assert roles == ["he", "her2"]
    he_l, her2_l = layers
    # same physical extent although the HER2 has half the pixels: layers line up in µm
    he_ext = he_l.extent.world
    her2_ext = her2_l.extent.world
    np.testing.assert_allclose(he_ext[1] - he_ext[0], her2_ext[1] - her2_ext[0], atol=1.0)
    np.testing.assert_allclose(he_l.translate, her2_l.translate)
    assert her2_l.opacity == pytest.approx(0.5)


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory):
    """20480 x 20480 RGB OME-TIFF pyramid (1.2 GB if it were ever read), written in a second.

    One constant tile repeated: every level is tiled and zstd-compressed, so the file
    is small while the reader sees a real 20k x 20k slide with 6 levels.
    """
    import tifffile

    path = tmp_path_factory.mktemp("big") / "big.ome.tif"
    tile = 512
    block = np.broadcast_to(np.array([230, 190, 215], np.uint8), (tile, tile, 3)).copy()
    sizes = [20480 // 2**i for i in range(6)]
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for i, s in enumerate(sizes):
            kw = ({"subifds": len(sizes) - 1,
                       "metadata": {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}}
                  if i == 0 else {"subfiletype": 1, "metadata": None})
            n_tiles = ((s + tile - 1) // tile) ** 2
            tif.write((block for _ in range(n_tiles)), shape=(s, s, 3), dtype=np.uint8,
                      tile=(tile, tile), photometric="rgb", compression="zstd", **kw)
    return path


def test_huge_slide_opens_without_reading_full_resolution(make_napari_viewer, big_slide, monkeypatch):
    from qtpy.QtWidgets import QApplication
    from tifffile import zarr as tiff_zarr

    reads = []
    original = tiff_zarr.ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if not key.endswith("json"):
            reads.append(tuple(self._data[0].shape[:2]))  # which level the chunk belongs to
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(tiff_zarr.ZarrTiffStore, "get", counting_get)
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(big_slide), plugin="napari-her2stain")
    QApplication.processEvents()
    assert layer.data[0].shape == (20480, 20480, 3)
    full_tiles = (20480 // 512) ** 2
    level0 = Counter(reads)[(20480, 20480)]
    assert level0 <= 4, f"opening read {level0} of {full_tiles} full-resolution tiles"
    assert layer.data_level > 0  # the overview is drawn from a low level

    # zoom into a 0.2 mm field: only the tiles under the view are read at full resolution
    reads.clear()
    viewer.camera.center = (1000.0, 1000.0)
    viewer.camera.zoom = 4
    for _ in range(5):
        QApplication.processEvents()
    assert layer.data_level == 0
    level0 = Counter(reads)[(20480, 20480)]
    assert 0 < level0 <= 16, level0
    shot = viewer.screenshot(canvas_only=True, flash=False)
    centre = shot[shot.shape[0] // 2, shot.shape[1] // 2, :3].astype(int)
    np.testing.assert_allclose(centre, [230, 190, 215], atol=3)


# ----------------------------------------------------------------------------- vendor slides, Qt 6

def test_vendor_svs_opens_through_openslide_as_lazy_multiscale_in_microns(tmp_path):
    """The CMU-1 .svs (and a 3-level SVS of its pixels) open through OpenSlide: lazy dask
    levels over OpenSlide reads, scale from the Aperio µm/px."""
    from test_slide_support import cmu_or_skip, halve, write_svs

    from napari_her2stain._reader import open_cached

    cmu = cmu_or_skip()
    (data, kw, kind) = napari_get_reader(str(cmu))(str(cmu))[0]
    assert kind == "image" and not kw["multiscale"] and kw["scale"] == (0.499, 0.499)
    assert open_cached(cmu).backend == "openslide"
    assert kw["metadata"]["her2stain"]["mpp"] == 0.499
    with open_slide(cmu, backend="tifffile") as t:
        np.testing.assert_array_equal(np.asarray(data[1000:1100, 500:650]),
                                      t.read_region((500, 1000), 0, (150, 100)))

    img = open_cached(cmu).read_level(0)[:2048, :2048]
    path, pyr = write_svs(tmp_path / "he.svs", img, levels=3, compression="zlib")
    (levels, kw, _) = napari_get_reader(str(path))(str(path))[0]
    assert kw["multiscale"] and [d.shape for d in levels] == [a.shape for a in pyr]
    assert type(levels[0]).__name__ == "Array" and levels[0].chunksize == (512, 512, 3)
    np.testing.assert_array_equal(np.asarray(levels[2]), pyr[2])
    np.testing.assert_array_equal(np.asarray(levels[0][700:1300, 300:900]),
                                  pyr[0][700:1300, 300:900])
    assert halve(pyr[0]).shape == pyr[1].shape


def test_mrxs_opens_as_a_lazy_multiscale_layer_through_openslide(tmp_path):
    from test_slide_support import halve, write_mirax

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    pyr = [img, halve(img), halve(halve(img))]
    path = write_mirax(tmp_path / "he.mrxs", pyr, mpp=0.243)
    (levels, kw, _) = napari_get_reader(str(path))(str(path))[0]
    assert kw["multiscale"] and kw["scale"] == (0.243, 0.243) and kw["name"] == "he"
    assert [d.shape for d in levels] == [a.shape for a in pyr]
    np.testing.assert_array_equal(np.asarray(levels[1]), pyr[1])
    np.testing.assert_array_equal(np.asarray(levels[0][100:400, 500:900]), img[100:400, 500:900])


def test_unreadable_mrxs_and_ndpi_are_openslides_one_line(tmp_path):
    """A .mrxs/.ndpi path is routed to OpenSlide: an unreadable one is OpenSlide's one-line
    refusal naming the file (it used to import a missing `open_openslide` and ask for an extra
    that was installed)."""
    from her2core.errors import UserError

    for name in ("scan.mrxs", "scan.ndpi"):
        p = tmp_path / name
        p.write_bytes(b"\0" * 64)
        reader = napari_get_reader(str(p))
        assert reader is not None
        with pytest.raises(UserError) as err:
            reader(str(p))
        msg = str(err.value)
        assert name in msg and "OpenSlide" in msg and "extra" not in msg


def test_napari_runs_on_qt6_without_the_pyqt5_deprecation(make_napari_viewer, pair):
    import qtpy
    from napari._qt import qt_main_window
    from napari.utils.notifications import notification_manager

    assert qtpy.QT6 and qtpy.API_NAME in ("PyQt6", "PySide6")
    assert not qt_main_window.SHOW_QT_WARNING
    root, _, _ = pair
    before = len(notification_manager.records)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(root / "he.ome.tif"), plugin="napari-her2stain")
    shown = [str(n.message) for n in notification_manager.records[before:]]
    assert not any("PyQt5" in m for m in shown), shown


def test_manifest_claims_every_slide_suffix_and_only_dicom_slides(tmp_path):
    from npe2 import PluginManifest

    from her2core.slide.formats import SLIDE_SUFFIXES

    mf = PluginManifest.from_distribution("napari-her2stain")
    slide_reader = next(r for r in mf.contributions.readers
                        if r.command == "napari-her2stain.get_reader")
    assert set(slide_reader.filename_patterns) == {f"*{s}" for s in SLIDE_SUFFIXES}
    ct = tmp_path / "ct.dcm"  # a DICOM file that is not a whole-slide image
    ct.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    assert napari_get_reader(str(ct)) is None
    pytest.importorskip("pydicom")
    from test_slide_support import write_dicom_wsi

    img = np.random.default_rng(5).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    (dcm,) = write_dicom_wsi(tmp_path / "wsi", [img], mpp=0.5)
    (data, kw, _) = napari_get_reader(str(dcm))(str(dcm))[0]
    assert kw["scale"] == (0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(data), img)
