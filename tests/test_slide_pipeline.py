"""The CPU side of slide inference (issue #21): the raw image in column strips, TIFF tiles
decoded without zarr, strip-chunked blending, and what must not change with them: the bytes
(whatever the worker count, after a resume), the one-piece blend, pyramid levels that are
the 2x2 mean of the level above.

A null network (tiles come back as they went in) makes the expected output computable
independently: the feathered blend of the H&E tiles themselves, white where a tile is glass.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon
from test_inference_support import synth_he

from her2core.inference.blend import blend_span
from her2core.inference.model import Translator
from her2core.inference.options import InferenceOptions
from her2core.inference.region import plan_region
from her2core.inference.slide import translate_slide
from her2core.inference.workdir import RAW_STRIP, WorkDir
from her2core.qupath.rois import as_roi
from her2core.slide import open_slide, write_pyramid
from her2core.slide.tissue import is_empty_tile
from her2core.slide.writer import RawImage, halve
from her2core.util.progress import Progress

OPTS = {"work_mpp": 0.5, "tile": 128, "overlap": 32, "batch_size": 3}


def opts(workers: int) -> InferenceOptions:
    return InferenceOptions(workers=workers, **OPTS)


class NullTranslator(Translator):
    """Each tile comes back unchanged: the pipeline's output is then known exactly."""

    def __call__(self, batch, seed):
        self.tiles_translated += len(batch)
        return np.array(batch)


def null_model() -> NullTranslator:
    return NullTranslator(torch.nn.Identity(), torch.device("cpu"), precision="fp32",
                          work_mpp=0.5, name="null")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def he_image():
    return synth_he(700, 900, seed=5, tissue=0.5)  # output 900 wide: strips 256, 256, 256, 132


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory, he_image):
    return write_pyramid(tmp_path_factory.mktemp("s") / "he.ome.tif", he_image, mpp=0.5,
                         tile=128, min_size=128)


# ----------------------------------------------------------------------------- raw image

@pytest.mark.parametrize("strip", [None, 1, 7, 64, 256, 1000])
def test_raw_image_in_strips_reads_and_writes_like_an_array(tmp_path, strip):
    rng = np.random.default_rng(0)
    shape = (97, 301, 3)
    raw = RawImage(tmp_path / f"r{strip}.u8", shape, strip=strip)
    want = np.full(shape, 255, np.uint8)
    np.testing.assert_array_equal(raw[:], want)  # a new file reads white
    for _ in range(40):
        r0, c0 = int(rng.integers(0, 97)), int(rng.integers(0, 301))
        h, w = int(rng.integers(1, 98 - r0)), int(rng.integers(1, 302 - c0))
        block = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        raw.write(r0, c0, block)
        want[r0:r0 + h, c0:c0 + w] = block
        a, b = sorted(int(v) for v in rng.integers(0, 98, 2))
        c, d = sorted(int(v) for v in rng.integers(0, 302, 2))
        np.testing.assert_array_equal(raw[a:b, c:d], want[a:b, c:d])
    np.testing.assert_array_equal(raw[:], want)
    np.testing.assert_array_equal(raw[5], want[5])
    np.testing.assert_array_equal(RawImage(raw.path, shape, strip=strip)[:], want)  # persisted


def test_raw_image_whole_strips_are_one_system_call_each(tmp_path, monkeypatch):
    """A pyramid tile of a strip-laid raw file is one read and a blended strip one write (a
    call per row was what held the pipeline back); a part of a strip still reads right."""
    raw = RawImage(tmp_path / "r.u8", (600, 700, 3), strip=256)
    calls = {"r": 0, "w": 0}
    preadv, pwritev = os.preadv, os.pwritev
    monkeypatch.setattr(os, "preadv", lambda *a: calls.__setitem__("r", calls["r"] + 1) or preadv(*a))
    monkeypatch.setattr(os, "pwritev", lambda *a: calls.__setitem__("w", calls["w"] + 1) or pwritev(*a))
    block = np.arange(448 * 256 * 3, dtype=np.uint32).astype(np.uint8).reshape(448, 256, 3)
    raw.write(32, 256, block)
    assert calls["w"] == 1
    raw.write(0, 512, np.zeros((600, 188, 3), np.uint8))  # the last, narrower strip
    assert calls["w"] == 2
    tile = raw[256:512, 256:512]
    assert calls["r"] == 1
    np.testing.assert_array_equal(tile[:224], block[224:])
    np.testing.assert_array_equal(raw[0:512, 256:768][32:480, :256], block)  # 2 strips: 2 reads
    assert calls["r"] == 3
    np.testing.assert_array_equal(raw[40:50, 300:310], block[8:18, 44:54])  # per row
    assert calls["r"] == 13


def test_raw_image_unlinked_still_reads_and_closing_in_the_background_frees_it(tmp_path):
    raw = RawImage(tmp_path / "r.u8", (64, 80, 3), strip=16)
    block = np.arange(64 * 80 * 3, dtype=np.uint32).astype(np.uint8).reshape(64, 80, 3)
    raw.write(0, 0, block)
    raw.unlink()
    assert list(tmp_path.iterdir()) == []
    raw.write(8, 16, np.zeros((8, 16, 3), np.uint8))  # reads and writes go on
    block[8:16, 16:32] = 0
    np.testing.assert_array_equal(raw[:], block)
    fd, inode = raw._fd, os.fstat(raw._fd).st_ino
    raw.close(in_background=True)
    for t in [t for t in threading.enumerate() if t.name == "her2-free"]:
        t.join()
    assert raw._fd == -1
    try:  # the descriptor is closed (or, reused since, names another file)
        assert os.fstat(fd).st_ino != inode
    except OSError:
        pass


# ----------------------------------------------------------------------------- TIFF reads

def _tiffs(tmp_path, img):
    """The same image as tiled TIFFs of several codecs, and one in strips (not tiled)."""
    import tifffile

    out = {"ome_zlib": write_pyramid(tmp_path / "p.ome.tif", img, mpp=0.5, tile=128, min_size=128)}
    for name, kw in {"raw": {}, "predictor": {"compression": "zlib", "predictor": True},
                     "jpeg": {"compression": "jpeg"}, "lzw": {"compression": "lzw"}}.items():
        out[name] = tmp_path / f"{name}.tif"
        tifffile.imwrite(out[name], img, tile=(112, 96), photometric="rgb",
                         resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **kw)
    out["strips"] = tmp_path / "strips.tif"
    tifffile.imwrite(out["strips"], img, rowsperstrip=37, photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return out


def test_tiff_tiles_decoded_directly_equal_what_zarr_reads(tmp_path, he_image):
    img = he_image[:333, :411]
    rng = np.random.default_rng(2)
    for name, path in _tiffs(tmp_path, img).items():
        with open_slide(path) as direct, open_slide(path) as via_zarr:
            assert direct.backend == "tifffile"
            assert (direct._direct[0] is None) == (name == "strips"), name
            via_zarr._direct = [None] * len(via_zarr._direct)
            for level, (w, h) in enumerate(direct.level_dimensions):
                for _ in range(12):
                    x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
                    x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
                    got = direct._read_block(level, x0, y0, x1, y1)
                    np.testing.assert_array_equal(got, via_zarr._read_block(level, x0, y0, x1, y1))
                    if level == 0 and name in ("ome_zlib", "raw", "predictor", "lzw"):
                        np.testing.assert_array_equal(got, img[y0:y1, x0:x1])  # lossless


def test_damaged_tile_data_is_one_user_error(tmp_path, he_image):
    from her2core.errors import UserError

    path = write_pyramid(tmp_path / "p.ome.tif", he_image[:256, :256], mpp=0.5, tile=128,
                         min_size=128)
    with open_slide(path) as s:
        page = s._direct[0]
        off, n = int(page.dataoffsets[1]), int(page.databytecounts[1])
    data = bytearray(path.read_bytes())
    data[off:off + n] = bytes(n)  # zeros: not a deflate stream
    path.write_bytes(bytes(data))
    with open_slide(path) as s, pytest.raises(UserError, match=r"p\.ome\.tif: cannot read level 0"):
        s.read_region((0, 0), 0, (256, 256))


# ----------------------------------------------------------------------------- the pipeline

def _expected_level0(slide_path, roi=None) -> np.ndarray:
    """The one-piece feathered blend of the tiles the pipeline runs (glass tiles white), white
    outside the ROI: what a null network must give, computed without the pipeline."""
    geom, source = as_roi(roi)
    with open_slide(slide_path) as s:
        plan = plan_region(s, work_mpp=0.5, tile=OPTS["tile"], overlap=OPTS["overlap"], roi=geom,
                           roi_source=source)
        white = np.full((plan.tile, plan.tile, 3), 255, np.uint8)
        tiles = {}
        for k in range(plan.rows.count):
            for j in range(plan.cols.count):
                img = plan.read_tile(s, k, j) if plan.tile_touches_roi(k, j) else None
                tiles[k, j] = white if img is None or is_empty_tile(img) else img
    h, w = plan.rows.length, plan.cols.length
    out = blend_span(plan.rows, plan.cols, (0, h), (0, w), lambda k, j: tiles[k, j])
    mask = plan.roi_mask((0, h), (0, w))
    if mask is not None:
        out[~mask] = 255
    return out


def _levels(path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


@pytest.mark.parametrize("with_roi", [False, True])
def test_null_model_output_is_the_one_piece_blend_whatever_the_workers(tmp_path, he_slide,
                                                                       with_roi, monkeypatch):
    from her2core.inference.slide import _Finisher

    roi = Polygon([(60, 40), (850, 90), (700, 650), (90, 560)]) if with_roi else None
    outs = [translate_slide(null_model(), he_slide, tmp_path / f"w{w}" / "v.ome.tif", opts(w),
                            roi=roi) for w in (1, 2, 3)]
    monkeypatch.setattr(_Finisher, "CHUNK_STRIPS", (1, 1))  # one strip a job: other chunks
    outs.append(translate_slide(null_model(), he_slide, tmp_path / "c" / "v.ome.tif", opts(2),
                                roi=roi))
    assert len({_sha(p) for p in outs}) == 1
    levels = _levels(outs[0])
    expected = _expected_level0(he_slide, roi)
    assert levels[0].shape == expected.shape and expected.shape[1] > 3 * RAW_STRIP
    assert (expected < 255).any() and (expected == 255).all(axis=2).any()  # tissue and glass
    np.testing.assert_array_equal(levels[0], expected)
    for above, level in itertools.pairwise(levels):  # each level: the 2x2 mean of the one above
        np.testing.assert_array_equal(level, halve(above, *level.shape[:2]))
    assert not any(p.name.endswith(".work") for p in outs[0].parent.iterdir())


@pytest.mark.parametrize("stop_at", [0.3, 0.75, 1.0])
def test_killed_null_model_run_resumes_to_the_same_bytes(tmp_path, he_slide, stop_at):
    whole = translate_slide(null_model(), he_slide, tmp_path / "a" / "v.ome.tif", opts(2))
    out = tmp_path / "b" / "v.ome.tif"

    class Stop(Exception):
        pass

    def stop_late(_stage, done, total):
        if done >= total * stop_at:
            raise Stop

    with pytest.raises(Stop):
        translate_slide(null_model(), he_slide, out, opts(2), progress=Progress(stop_late))
    wd = WorkDir(out)
    assert not out.exists() and wd.blocks_done() >= 1  # blended block rows in the journal
    resumed = null_model()
    translate_slide(resumed, he_slide, out, opts(2))
    assert _sha(out) == _sha(whole)
    with open_slide(he_slide) as s:
        n_cols = plan_region(s, work_mpp=0.5, tile=OPTS["tile"], overlap=OPTS["overlap"]).cols.count
    assert 0 < resumed.tiles_translated < n_cols * 6  # only the rows after the journal's end
    assert not wd.exists()


def test_decoded_tiles_are_reused_within_a_fixed_budget(tmp_path, he_image, monkeypatch):
    from her2core.slide import tiff_backend

    path = write_pyramid(tmp_path / "p.ome.tif", he_image, mpp=0.5, tile=128, min_size=128)
    reads = []
    pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append(off) or pread(fd, n, off))
    with open_slide(path) as s:
        a = s.read_region((130, 60), 0, (300, 200))  # 3 x 3 TIFF tiles
        assert len(reads) == 9
        b = s.read_region((258, 60), 0, (300, 200))  # one column of tiles further: 3 new ones
        assert len(reads) == 12
        np.testing.assert_array_equal(a[:, 128:], b[:, :172])
        np.testing.assert_array_equal(b, he_image[60:260, 258:558])
    monkeypatch.setattr(tiff_backend, "DECODED_CACHE_BYTES", 5 * 128 * 128 * 3)
    with open_slide(path) as s:
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (900, 700)), he_image)
        assert s._decoded_bytes <= tiff_backend.DECODED_CACHE_BYTES and len(s._decoded) == 5


def test_threads_reading_overlapping_regions_decode_each_tiff_tile_once(tmp_path, he_image,
                                                                       monkeypatch):
    """Neighbouring inference tiles need the same TIFF tiles at the same moment: a second
    thread waits for the first one's decoding (or does its other tiles first), never repeats
    it, and every thread gets the right pixels."""
    from concurrent.futures import ThreadPoolExecutor

    path = write_pyramid(tmp_path / "p.ome.tif", he_image, mpp=0.5, tile=128, min_size=128)
    reads = []
    pread = os.pread

    def slow_pread(fd, n, off):  # a slow decode makes the threads collide on the same tiles
        reads.append(off)
        time.sleep(0.002)
        return pread(fd, n, off)

    monkeypatch.setattr(os, "pread", slow_pread)
    boxes = [(x, y) for y in range(0, 500, 96) for x in range(0, 700, 96)]
    with open_slide(path) as s, ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda xy: s.read_region(xy, 0, (200, 200)), boxes))
    for (x, y), img in zip(boxes, got):
        np.testing.assert_array_equal(img, he_image[y:y + 200, x:x + 200])
    assert len(reads) == len(set(reads))  # each tile decoded once (the cache holds them all)


@pytest.mark.parametrize("shape", [(512, 512), (256, 384), (100, 70), (63, 63)])
def test_empty_tile_check_looking_at_the_top_first_gives_the_rule_s_answer(shape):
    """The early answer from the top eighth equals the glass rule on the whole tile, also at the
    threshold's edge and with the tissue anywhere."""
    from her2core.slide.tissue import glass_pixels

    def rule(rgb, max_tissue):
        return float(1.0 - glass_pixels(rgb).mean()) < max_tissue

    h, w = shape
    rng = np.random.default_rng(h)
    edge = int(0.002 * h * w)
    for k in sorted({0, 1, max(0, edge - 1), edge, edge + 1, edge + 2, h * w // 3, h * w}):
        for where in ("top", "bottom", "anywhere"):
            tile = np.full((h, w, 3), 242, np.uint8)  # glass
            flat = tile.reshape(-1, 3)
            idx = {"top": np.arange(k), "bottom": np.arange(h * w - k, h * w),
                   "anywhere": rng.choice(h * w, k, replace=False)}[where]
            flat[idx] = (200, 90, 160)  # tissue
            for max_tissue in (0.0, 0.002, edge / (h * w), 0.5, 1.0):
                assert is_empty_tile(tile, max_tissue) == rule(tile, max_tissue), (k, where)
