"""Slide inference: feathered blending, seams, ROI, resampling, kill-and-resume, bad input.

Uses a small hand-built convolution network (zero padding: real tile-border effects) so
these tests run in seconds; the trained-run acceptance lives in test_inference_seams.py.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from shapely.geometry import Polygon
from test_inference_support import ConvNet, border_step_ratio, synth_he

from her2core.cli import main as her2
from her2core.errors import UserError
from her2core.inference.blend import AxisGrid, blend_block, blend_span, ramp
from her2core.inference.model import load_translator
from her2core.inference.options import InferenceOptions
from her2core.inference.slide import translate_slide
from her2core.slide import open_slide, write_pyramid
from her2core.slide.reader import resize_rgb
from her2core.util.progress import Progress

REGION = (40, 24, 480, 360)  # x, y, w, h (level 0)


@pytest.fixture(scope="module")
def he_image():
    return synth_he(460, 620, seed=3)


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory, he_image):
    p = tmp_path_factory.mktemp("slide") / "he.ome.tif"
    return write_pyramid(p, he_image, mpp=0.5, tile=128, min_size=128)


def _read(path):
    with open_slide(path) as s:
        return s.read_region((0, 0), 0, s.dimensions), s


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- blending

@pytest.mark.parametrize("length,tile,overlap", [(1, 64, 16), (100, 64, 16), (479, 128, 32),
                                                 (1000, 128, 64), (300, 96, 0)])
def test_grid_blocks_partition_region_and_need_two_tiles(length, tile, overlap):
    g = AxisGrid(length, tile, overlap)
    pos = g.positions()
    assert pos[0] <= -(overlap // 2) and pos[-1] + tile >= length + overlap // 2
    covered = []
    for k in range(g.count):
        a, b = g.block(k)
        covered.extend(range(a, b))
        if b > a:
            assert set(g.tiles_for(a, b)) <= {k, k + 1}
    assert covered == list(range(length))


def test_ramps_sum_to_one_and_blend_reassembles_identical_tiles():
    r = ramp(24)
    assert np.all(r > 0) and np.allclose(r + r[::-1], 1.0)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    rows, cols = AxisGrid(300, 96, 24), AxisGrid(410, 96, 24)
    pad = np.pad(img, ((100, 100), (100, 100), (0, 0)), mode="reflect")

    def tile(k, j):
        y, x = rows.position(k) + 100, cols.position(j) + 100
        return pad[y:y + 96, x:x + 96]

    out = blend_block(rows, cols, (0, 300), (0, 410), tile)
    np.testing.assert_array_equal(out, img)  # weights normalise exactly, edges included
    # blocks blended one by one give the same bytes as the whole region at once
    parts = np.zeros_like(img)
    for k in range(rows.count):
        for j in range(cols.count):
            (r0, r1), (c0, c1) = rows.block(k), cols.block(j)
            if r1 > r0 and c1 > c0:
                parts[r0:r1, c0:c1] = blend_block(rows, cols, (r0, r1), (c0, c1), tile)
    np.testing.assert_array_equal(parts, img)


@pytest.mark.parametrize("length,tile,overlap", [(300, 96, 24), (410, 96, 48), (97, 96, 24), (1000, 512, 64)])
def test_fast_blend_equals_full_blend_on_differing_tiles(length, tile, overlap):
    """Copying single-coverage parts must give the bytes of the full weighted blend, for
    tiles that disagree (a wrong copy or a missed overlap would show) and at region edges."""
    rows, cols = AxisGrid(length, tile, overlap), AxisGrid(length + 37, tile, overlap)
    rng = np.random.default_rng(length)
    tiles = {(k, j): rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8)
             for k in range(rows.count) for j in range(cols.count)}
    def get(k, j):
        return tiles[(k, j)]
    for k in range(rows.count):
        for j in range(cols.count):
            r, c = rows.block(k), cols.block(j)
            if r[1] > r[0] and c[1] > c[0]:
                np.testing.assert_array_equal(blend_block(rows, cols, r, c, get),
                                              blend_span(rows, cols, r, c, get))
    whole = ((0, rows.length), (0, cols.length))
    np.testing.assert_array_equal(blend_block(rows, cols, *whole, get), blend_span(rows, cols, *whole, get))


# ----------------------------------------------------------------------------- slides

def test_tiled_region_matches_one_piece_and_hides_seams(tmp_path, he_slide, he_image):
    net = ConvNet()
    x, y, w, h = REGION
    m = 16  # the network on the whole region with some context around it
    ref = net.one_piece(he_image[y - m:y + h + m, x - m:x + w + m])[m:-m, m:-m]
    opts = InferenceOptions(work_mpp=0.5, tile=128, batch_size=4)
    out = translate_slide(net, he_slide, tmp_path / "v.ome.tif", opts.replace(overlap=32),
                          region=REGION)
    v, s = _read(out)
    assert v.shape == ref.shape and s.mpp == pytest.approx(0.5) and s.origin_xy == (x, y)
    src = he_image[y:y + h, x:x + w]
    tissue = ~np.all(src >= 225, axis=2)
    diff = np.abs(v.astype(int) - ref.astype(int))[tissue]
    assert diff.mean() < 0.5, diff.mean()  # tiles + blend ≈ the network on the whole region

    cols = AxisGrid(w, 128, 32)
    edges = sorted({e for p in cols.positions() for e in (p, p + 128) if 2 < e < w - 2})
    ratio = border_step_ratio(v, edges, tissue)
    assert 0.9 <= ratio <= 1.1, ratio

    # control: the same network tiled without overlap shows its seams to this metric
    naive = translate_slide(net, he_slide, tmp_path / "n.ome.tif", opts.replace(overlap=0),
                            region=REGION)
    n, _ = _read(naive)
    n_edges = [p for p in AxisGrid(w, 128, 0).positions() if 2 < p < w - 2]
    assert border_step_ratio(n, n_edges, tissue) > 1.1


def test_kill_and_resume_gives_identical_bytes(tmp_path, he_slide):
    opts = InferenceOptions(work_mpp=0.5, tile=96, overlap=24, batch_size=3)
    out = tmp_path / "virtual.ome.tif"
    translate_slide(ConvNet(), he_slide, out, opts, region=REGION)
    want = _sha(out)
    out.unlink()

    class Killed(Exception):
        pass

    def kill_at(n):
        def on_update(stage, done, total):
            if done >= n:
                raise Killed
        return Progress(on_update)

    net = ConvNet()
    with pytest.raises(Killed):
        translate_slide(net, he_slide, out, opts, region=REGION, progress=kill_at(11))
    with pytest.raises(Killed):  # killed again later, after some blocks were final
        translate_slide(net, he_slide, out, opts, region=REGION, progress=kill_at(19))
    work = tmp_path / ".virtual.ome.tif.work"
    assert json.loads((work / "blocks.json").read_text())["blocks_done"] >= 1 and not out.exists()
    before = net.tiles_seen
    translate_slide(net, he_slide, out, opts, region=REGION)
    assert _sha(out) == want
    assert not work.exists()
    # the resumed run did not translate everything again
    total = AxisGrid(360, 96, 24).count * AxisGrid(480, 96, 24).count
    assert net.tiles_seen - before < total


def test_roi_box_translated_white_outside_polygon_and_tiles_skipped(tmp_path, he_slide, he_image):
    roi = Polygon([(100, 60), (400, 90), (180, 330)])
    net = ConvNet()
    out = translate_slide(net, he_slide, tmp_path / "r.ome.tif",
                          InferenceOptions(work_mpp=0.5, tile=64, overlap=16), roi=roi)
    v, s = _read(out)
    minx, miny, maxx, maxy = roi.bounds
    assert s.origin_xy == (minx, miny) and s.dimensions == (maxx - minx, maxy - miny)
    yy, xx = np.mgrid[0:v.shape[0], 0:v.shape[1]]
    from shapely import contains_xy

    inside = contains_xy(roi, xx + minx + 0.5, yy + miny + 0.5)
    assert np.all(v[~inside] == 255)
    m = 16
    ref = net.one_piece(he_image[int(miny) - m:int(maxy) + m, int(minx) - m:int(maxx) + m])[m:-m, m:-m]
    src = he_image[int(miny):int(maxy), int(minx):int(maxx)]
    tissue = inside & ~np.all(src >= 225, axis=2)
    assert np.abs(v.astype(int) - ref)[tissue].mean() < 1.0
    # tiles of the box that miss the triangle never reached the network
    total = AxisGrid(v.shape[0], 64, 16).count * AxisGrid(v.shape[1], 64, 16).count
    assert net.tiles_seen < total


def test_reads_at_working_mpp_and_skips_background(tmp_path, he_image):
    # a 0.25 µm/px slide, translated at 0.5: the output has half the pixels, same place
    big = np.repeat(np.repeat(he_image[:200, :300], 2, axis=0), 2, axis=1)
    big[:, 400:] = 244  # right part: glass only
    slide = write_pyramid(tmp_path / "fine.ome.tif", big, mpp=0.25, tile=128, min_size=128)
    net = ConvNet()
    out = translate_slide(net, slide, tmp_path / "v.ome.tif",
                          InferenceOptions(work_mpp=0.5, tile=64, overlap=16))
    v, s = _read(out)
    assert s.dimensions == (300, 200) and s.mpp == pytest.approx(0.5)
    assert np.all(v[:, 250:] == 255)  # tiles of glass only: not translated, white
    small = resize_rgb(big, (200, 300))  # what reading at 0.5 µm/px gives, in one piece
    ref = net.one_piece(small)
    tissue = ~np.all(small >= 225, axis=2)
    tissue[:8], tissue[-8:], tissue[:, :8] = False, False, False  # one_piece has no context there
    t = tissue[:, 8:200]
    aligned = np.abs(v[:, 8:200].astype(int) - ref[:, 8:200])[t].mean()
    shifted = np.abs(v[:, 8:200].astype(int) - ref[:, 6:198])[t].mean()  # 2 px off
    assert aligned < 3.0 and aligned < shifted / 4, (aligned, shifted)
    assert net.tiles_seen < AxisGrid(200, 64, 16).count * AxisGrid(300, 64, 16).count


def test_working_mpp_is_recorded_in_run_json_from_dataset_json(tmp_path):
    """`her2 sample`/`her2 tile` write dataset.json; training records its µm/px in run.json
    (`working`); inference reads exactly that, nothing guessed."""
    from her2core.sample import write_tile_dataset
    from her2core.training import TrainConfig, train
    from her2core.training.runs import read_run, working_mpp
    from her2core.util.dataset_meta import read_dataset_meta

    data = write_tile_dataset(tmp_path / "data", cases=3, tiles_per_case=2, tile=64, mpp=0.46, seed=1)
    assert read_dataset_meta(data)["mpp"] == pytest.approx(0.46)
    run = train("pyramid_pix2pix", data, tmp_path / "run", preset="tiny",
                train_config=TrainConfig(max_steps=1, batch_size=2, device="cpu"))
    record = read_run(run)
    assert record["working"] == {"mpp": pytest.approx(0.46), "mpp_source": "dataset.json",
                                 "tile_wh": [64, 64]}
    assert load_translator(run).work_mpp == pytest.approx(0.46)
    assert working_mpp({"data": {"mpp": 0.5}}) == 0.5  # runs written before `working`
    assert working_mpp({"data": {"root": "x"}}) is None
    (data / "dataset.json").write_text('{"mpp": "half"}')
    with pytest.raises(UserError, match="dataset.json: no valid 'mpp'"):
        read_dataset_meta(data)


# ----------------------------------------------------------------------------- bad input

def _cli(capsys, *argv):
    code = her2(["translate", *map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, he_slide, he_image):
    import tifffile

    notrun = tmp_path / "notrun"
    notrun.mkdir()
    code, err = _cli(capsys, "--run", notrun, "--slide", he_slide, "--out", tmp_path / "o.ome.tif")
    assert code == 2 and len(err) == 1 and "not a training run" in err[0]

    nompp = tmp_path / "nompp.tif"
    tifffile.imwrite(nompp, he_image[:128, :128], photometric="rgb")
    code, err = _cli(capsys, "--run", notrun, "--slide", nompp, "--out", tmp_path / "o.ome.tif")
    assert code == 2 and len(err) == 1 and "microns per pixel" in err[0] and "--mpp" in err[0]

    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"objectType": "annotation"},
        "geometry": {"type": "Polygon", "coordinates": [[[5000, 5000], [5100, 5000], [5100, 5100],
                                                          [5000, 5000]]]}}]}))
    code, err = _cli(capsys, "--run", notrun, "--slide", he_slide, "--roi", far,
                     "--out", tmp_path / "o.ome.tif")
    assert code == 2 and len(err) == 1 and "outside the slide" in err[0]

    exists = tmp_path / "exists.ome.tif"
    exists.write_bytes(b"x")
    code, err = _cli(capsys, "--run", notrun, "--slide", he_slide, "--out", exists)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
    assert exists.read_bytes() == b"x"

    with pytest.raises(UserError, match="outside the slide"):
        translate_slide(ConvNet(), he_slide, tmp_path / "q.ome.tif", InferenceOptions(work_mpp=0.5),
                        region=(9000, 0, 10, 10))


def test_low_resolution_glass_index_skips_reads_without_changing_output(tmp_path, he_image,
                                                                         monkeypatch):
    from her2core.inference.region import TissueIndex

    big = np.full((1024, 1024, 3), 243, np.uint8)
    big[600:900, 100:500] = he_image[:300, :400]  # one piece of tissue, glass elsewhere
    slide = write_pyramid(tmp_path / "s.ome.tif", big, mpp=0.5, tile=128, min_size=64)
    kw = {"options": InferenceOptions(work_mpp=0.5, tile=128, overlap=32), "overwrite": True}
    monkeypatch.setattr(TissueIndex, "MAX_SIDE", 10**6)  # no index: every tile read in full
    plain = translate_slide(ConvNet(), slide, tmp_path / "plain.ome.tif", **kw)
    monkeypatch.setattr(TissueIndex, "MAX_SIDE", 64)  # index from the 64 px level
    with open_slide(slide) as s:
        idx = TissueIndex(s)
        assert idx.mask is not None
        assert idx.may_hold_tissue(150, 650, 100) and not idx.may_hold_tissue(700, 100, 128)
        reads = []
        orig = type(s).read_at_mpp
        monkeypatch.setattr(type(s), "read_at_mpp", lambda self, *a, **k: reads.append(a) or orig(self, *a, **k))
    indexed = translate_slide(ConvNet(), slide, tmp_path / "idx.ome.tif", **kw)
    n_tiles = AxisGrid(1024, 128, 32).count ** 2
    assert 0 < len(reads) < n_tiles / 2
    np.testing.assert_array_equal(_read(plain)[0], _read(indexed)[0])


# ----------------------------------------------------------------------------- streamed pyramid

def _halve_reference(img):
    """2x2 area mean of a whole level at once (odd edges repeat the last row/column)."""
    h, w = (img.shape[0] + 1) // 2, (img.shape[1] + 1) // 2
    b = np.pad(img.astype(np.uint16), ((0, 2 * h - img.shape[0]), (0, 2 * w - img.shape[1]), (0, 0)),
               mode="edge")
    return ((b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2] + 2) // 4).astype(np.uint8)


def test_streamed_pyramid_same_bytes_however_fed_and_levels_exact(tmp_path):
    """Tiles are encoded by threads in any order but written in a fixed one: the file's bytes
    do not depend on how level 0 was handed over or on the thread count; every level is the
    2x2 mean of the one above, as tifffile reads it back (OME, SubIFDs, mpp, origin)."""
    import tifffile

    from her2core.slide.writer import PyramidStream

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (1100, 1333, 3), dtype=np.uint8)
    img[:300] = 255  # glass: one shared encoding of white tiles
    kw = {"mpp": 0.5, "tile": 128, "min_size": 128, "origin_xy": (10.0, 20.0), "name": "p"}
    whole = write_pyramid(tmp_path / "a.ome.tif", img, workers=1, **kw)
    stream = PyramidStream(tmp_path / "b.ome.tif", img, workers=3, **kw)
    for n in (1, 127, 128, 300, 641, 1099, 1100):
        stream.advance(n)
    fed = stream.close()
    assert _sha(whole) == _sha(fed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ome.tif", "b.ome.tif"]  # no scratch
    with tifffile.TiffFile(fed) as tif:
        assert tif.is_ome and len(tif.pages[0].subifds) == 4
        want = img
        for level in tif.series[0].levels:
            np.testing.assert_array_equal(level.asarray(), want)
            want = _halve_reference(want)
    with open_slide(fed) as s:
        assert s.mpp == pytest.approx(0.5) and s.origin_xy == (10.0, 20.0) and s.level_count == 5


def test_streamed_pyramid_abort_and_bad_input_leave_nothing(tmp_path):
    from her2core.slide.writer import PyramidStream

    img = np.full((600, 500, 3), 200, np.uint8)
    stream = PyramidStream(tmp_path / "x.ome.tif", img, mpp=0.5, tile=128, min_size=128)
    stream.advance(300)
    with pytest.raises(RuntimeError, match="before every level-0 row"):
        stream.close()
    stream = PyramidStream(tmp_path / "y.ome.tif", img, mpp=0.5, tile=128, min_size=128)
    stream.advance(256)
    stream.abort()
    with pytest.raises(ValueError, match="compression"):
        write_pyramid(tmp_path / "z.ome.tif", img, mpp=0.5, compression="jpeg")
    assert list(tmp_path.iterdir()) == []


def test_output_bytes_do_not_depend_on_worker_threads_and_row_files_stay_few(tmp_path, he_slide,
                                                                              monkeypatch):
    import time

    import her2core.inference.slide as slide_mod

    opts = InferenceOptions(work_mpp=0.5, tile=64, overlap=16, batch_size=3)
    work = tmp_path / "b" / ".v.ome.tif.work"
    most = [0]

    def count_rows(stage, done, total):  # the model may not run ahead of blending by many rows
        most[0] = max(most[0], len(list(work.glob("row_*.u8"))))

    one = translate_slide(ConvNet(), he_slide, tmp_path / "a" / "v.ome.tif",
                          opts.replace(workers=1), region=REGION)
    blend = slide_mod._blend_one  # blending slower than the model: the model must wait for it
    monkeypatch.setattr(slide_mod, "_blend_one", lambda *a: time.sleep(0.02) or blend(*a))
    three = translate_slide(ConvNet(), he_slide, tmp_path / "b" / "v.ome.tif",
                            opts.replace(workers=3), region=REGION, progress=Progress(count_rows))
    assert _sha(one) == _sha(three)
    n_rows = AxisGrid(REGION[3], 64, 16).count
    assert 1 <= most[0] <= 3 < n_rows
    v, s = _read(three)
    assert s.level_count == 1 + (max(v.shape[:2]) > 512)
