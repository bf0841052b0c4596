"""Fuzz suite of issue #18 (input side): every subcommand x every kind of bad input.

Each case runs `her2` in-process (a handful in a subprocess, for the real exit status) on bad
files generated here, and must end with exit status 2, exactly one line on stderr without a
traceback, within a time limit, leaving every file that existed before byte-identical.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from her2core.cli import main
from her2core.errors import UserError
from her2core.registration.transform import SCHEMA as _TRANSFORM_SCHEMA

CASE_SECONDS = 60  # one bad input is refused in well under a second; a hang or OOM is not


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (not hang) when the body runs longer than `seconds` (SIGALRM; main thread)."""
    def expired(*_):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- the world: valid inputs the bad ones are made from ---------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from her2core.sample import write_tile_dataset
    from her2core.slide import write_pyramid
    from her2core.training import TrainConfig, train

    root = tmp_path_factory.mktemp("world")
    tiles = write_tile_dataset(root / "ds", cases=4, tile=64, mpp=0.5, tiles_per_case=2, seed=0)
    run = train("pyramid_pix2pix", tiles, root / "run",
                train_config=TrainConfig(max_steps=1, batch_size=2, checkpoint_every=1, log_every=1))
    rng = np.random.default_rng(0)
    img = np.full((256, 320, 3), 235, np.uint8)
    img[64:192, 64:256] = rng.integers(60, 200, (128, 192, 3), dtype=np.uint8)
    slide = write_pyramid(root / "he.ome.tif", img, mpp=2.0, tile=64)
    he_tiles = tiles / "HE_20x" / "train"
    out = root / "out"  # an output folder that already holds a user's file
    out.mkdir()
    (out / "keep.txt").write_text("written before; must survive every bad input\n")
    return {"root": root, "tiles": tiles, "run": Path(run), "slide": slide, "he_tiles": he_tiles,
            "out": out}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with time_limit(CASE_SECONDS):
        rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


_PROGRESS_BAR = re.compile(r"^[^\n]*\d+%\|[^|]*\| \d+/\d+ \[")


def message_lines(err: str) -> list[str]:
    """stderr without tqdm's progress bars (redrawn with \\r; cleared on a terminal)."""
    lines = []
    for line in err.replace("\r", "\n").splitlines():
        if line.strip() and not _PROGRESS_BAR.match(line):
            lines.append(line)
    return lines


def assert_one_line(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = message_lines(err)
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], err


# -- generators of bad files -------------------------------------------------------------------

def png_claiming(path: Path, w: int, h: int) -> Path:
    """A valid tiny PNG whose IHDR then claims w x h pixels (a decompression bomb's header)."""
    Image.new("RGB", (8, 8), (200, 100, 50)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def deflate_tiff(path: Path, size=(512, 512)) -> Path:
    rng = np.random.default_rng(1)
    tifffile.imwrite(path, rng.integers(0, 255, (*size, 3), dtype=np.uint8), tile=(64, 64),
                     compression="zlib", photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    return path


def tiff_claiming(path: Path, w: int, h: int) -> Path:
    """A tiny strip TIFF whose ImageWidth/ImageLength then claim w x h (LONG) pixels."""
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as t:
        tags = {code: t.pages[0].tags[code].offset for code in (256, 257)}
    for code, value in ((256, w), (257, h)):
        off = tags[code]  # entry: code (2), type (2), count (4), value (4), little-endian
        data[off + 2:off + 4] = struct.pack("<H", 4)
        data[off + 8:off + 12] = struct.pack("<I", value)
    path.write_bytes(bytes(data))
    return path


def ome_with_mpp(path: Path, mpp: float) -> Path:
    tifffile.imwrite(path, np.full((128, 128, 3), 200, np.uint8), ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
    return path


def run_copy(world, dst: Path) -> Path:
    import shutil

    shutil.copytree(world["run"], dst)
    return dst


def latest_weights(run: Path) -> Path:
    name = json.loads((run / "checkpoints" / "latest.json").read_text())["name"]
    return run / "checkpoints" / f"{name}.safetensors"


def eval_dir(path: Path, text: bytes) -> Path:
    path.mkdir()
    (path / "per_image.csv").write_bytes(text)
    return path


# -- the table: (id, argv builder(world, tmp), words the one line must hold) ------------------

def _tiles_with(tmp: Path, name: str, make) -> Path:
    d = tmp / "bad_tiles"
    d.mkdir(exist_ok=True)
    make(d / name)
    return d


CASES = [
    # nonsense numeric / enum options
    ("train-checkpoint-every-0", lambda w, t: ["train", "--model", "asp", "--data", w["tiles"], "--out",
                                               w["out"], "--checkpoint-every", "0"], ["--checkpoint-every"]),
    ("train-crop-0", lambda w, t: ["train", "--model", "asp", "--data", w["tiles"], "--out", w["out"],
                                   "--crop", "0"], ["--crop"]),
    ("train-device-bogus", lambda w, t: ["train", "--model", "asp", "--data", w["tiles"], "--out",
                                         w["out"], "--device", "bogus"], ["--device", "cpu"]),
    ("train-max-steps-negative", lambda w, t: ["train", "--model", "asp", "--data", w["tiles"],
                                               "--out", t / "r", "--max-steps", "-5"], ["--max-steps"]),
    ("train-preset-bogus", lambda w, t: ["train", "--model", "asp", "--data", w["tiles"], "--out",
                                         t / "r", "--preset", "bogus"], ["--preset", "tiny"]),
    ("train-batch-size-0", lambda w, t: ["train", "--model", "asp", "--data", w["tiles"], "--out",
                                         t / "r", "--batch-size", "0"], ["--batch-size"]),
    ("tile-tile-px-0", lambda w, t: ["tile", "--he", w["slide"], "--out", w["out"], "--tile-px", "0"],
     ["--tile-px"]),
    ("tile-stride-negative", lambda w, t: ["tile", "--he", w["slide"], "--out", w["out"],
                                           "--stride-px", "-64"], ["--stride-px"]),
    ("tile-min-coverage-2", lambda w, t: ["tile", "--he", w["slide"], "--out", w["out"],
                                          "--min-coverage", "2"], ["--min-coverage", "fraction"]),
    ("translate-work-mpp-nan", lambda w, t: ["translate", "--run", w["run"], "--slide", w["slide"],
                                             "--out", t / "v.ome.tif", "--work-mpp", "nan"], ["--work-mpp"]),
    ("translate-batch-size-0", lambda w, t: ["translate", "--run", w["run"], "--tiles", w["he_tiles"],
                                             "--out", w["out"], "--batch-size", "0"], ["--batch-size"]),
    ("translate-device-cuda-7", lambda w, t: ["translate", "--run", w["run"], "--tiles", w["he_tiles"],
                                              "--out", w["out"], "--device", "cuda:7"], ["--device"]),
    ("batch-overlap-negative", lambda w, t: ["batch", t / "c.csv", "--run", w["run"], "--out", w["out"],
                                             "--overlap", "-1"], ["--overlap"]),
    ("sample-size-1e6", lambda w, t: ["sample", "--out", t / "s", "--size", "1000000"], ["16384"]),
    ("sample-size-float", lambda w, t: ["sample", "--out", t / "s", "--size", "1e6"], ["--size"]),
    ("demo-out-file", lambda w, t: ["demo", "--out", w["out"] / "keep.txt"], ["keep.txt"]),
    ("evaluate-kid-subsets-0", lambda w, t: ["evaluate", "--pred", w["he_tiles"], "--target",
                                             w["he_tiles"], "--out", w["out"], "--kid-subsets", "0"],
     ["--kid-subsets"]),
    ("models-preset-bogus", lambda w, t: ["models", "--preset", "bogus"], ["--preset"]),
    ("import-preset-bogus", lambda w, t: ["import", "asp", t / "x.pth", "--out", t / "r", "--preset",
                                          "bogus"], ["--preset"]),
    ("register-he-mpp-1e-9", lambda w, t: ["register", w["slide"], w["slide"], "--out", w["out"],
                                           "--he-mpp", "1e-9"], ["--he-mpp"]),
    ("review-min-correlation-2", lambda w, t: ["review", w["slide"], w["slide"], "--out", w["out"],
                                               "--min-correlation", "2"], ["--min-correlation"]),
    # slides and images
    ("register-mpp-2.5e-6-in-file", lambda w, t: ["register", ome_with_mpp(t / "a.ome.tif", 2.5e-6),
                                                  w["slide"], "--out", t / "reg"], ["a.ome.tif", "--mpp"]),
    ("translate-truncated-tiff", lambda w, t: ["translate", "--run", w["run"], "--slide",
                                               truncated_copy(deflate_tiff(t / "d.tif"), t / "cut.tif"),
                                               "--out", t / "v.ome.tif"], ["cut.tif"]),
    ("translate-header-1e6-squared", lambda w, t: ["translate", "--run", w["run"], "--slide",
                                                   tiff_claiming(t / "huge.tif", 10**6, 10**6),
                                                   "--out", t / "v.ome.tif", "--mpp", "0.5"], ["huge.tif"]),
    ("translate-z-stack", lambda w, t: ["translate", "--run", w["run"], "--slide",
                                        _zstack(t / "z.tif"), "--out", t / "v.ome.tif"], ["z.tif", "plane"]),
    ("translate-tiles-bomb-png", lambda w, t: ["translate", "--run", w["run"], "--tiles",
                                               _tiles_with(t, "bomb.png",
                                                           lambda p: png_claiming(p, 10**5, 10**5)),
                                               "--out", t / "o"], ["bomb.png"]),
    ("translate-tiles-truncated-png", lambda w, t: ["translate", "--run", w["run"], "--tiles",
                                                    _tiles_with(t, "cut.png", _truncated_png), "--out",
                                                    t / "o"], ["cut.png"]),
    ("translate-work-mpp-absurd-upsampling", lambda w, t: ["translate", "--run", w["run"], "--slide",
                                                           _big_header_slide(t), "--out", t / "v.ome.tif",
                                                           "--mpp", "1", "--work-mpp", "0.01"], ["--work-mpp"]),
    # GeoJSON
    ("translate-roi-infinity", lambda w, t: ["translate", "--run", w["run"], "--slide", w["slide"], "--out",
                                             t / "v.ome.tif", "--roi", _geojson(t, "inf", _INF_GEOJSON)],
     ["inf.geojson", "finite"]),
    ("translate-roi-deep", lambda w, t: ["translate", "--run", w["run"], "--slide", w["slide"], "--out",
                                         t / "v.ome.tif", "--roi", _geojson(t, "deep", "[" * 10**5)],
     ["deep.geojson"]),
    ("tile-rois-nan", lambda w, t: ["tile", "--he", w["slide"], "--her2-registered", w["slide"], "--score",
                                    "2+", "--split", "train", "--rois", _geojson(t, "nan", _NAN_GEOJSON),
                                    "--out", t / "ds"], ["nan.geojson"]),
    # CSV and JSON
    ("tile-latin1-cases", lambda w, t: ["tile", "--cases", _latin1_cases(t), "--out", t / "ds"],
     ["cases.csv", "Latin-1", "UTF-8"]),
    ("batch-latin1-cases", lambda w, t: ["batch", _latin1_cases(t), "--run", w["run"], "--out", w["out"]],
     ["cases.csv", "Latin-1"]),
    ("batch-empty-cases", lambda w, t: ["batch", _write(t / "cases.csv", b""), "--run", w["run"], "--out",
                                        w["out"]], ["cases.csv", "empty"]),
    ("tile-config-infinity", lambda w, t: ["tile", "--he", w["slide"], "--her2-registered", w["slide"],
                                           "--score", "2+", "--split", "train", "--out", t / "ds", "--config",
                                           _write(t / "cfg.json", b'{"tile_px": Infinity}')], ["cfg.json"]),
    ("tile-splits-list", lambda w, t: ["tile", "--cases", _good_cases(w, t), "--out", t / "ds", "--splits",
                                       _write(t / "splits.json", b"[1, 2]")], ["splits.json"]),
    ("compare-empty-per-image", lambda w, t: ["compare", eval_dir(t / "e1", b""), "--out", t / "cmp"],
     ["per_image.csv", "empty"]),
    ("compare-garbage-per-image", lambda w, t: ["compare", eval_dir(t / "e1", bytes(range(256)) * 8),
                                                "--out", t / "cmp"], ["per_image.csv"]),
    ("compare-latin1-per-image", lambda w, t: ["compare", eval_dir(t / "e1", "image,psnr\ncaf\xe9,1\n"
                                                                   .encode("latin-1")), "--out", t / "cmp"],
     ["per_image.csv", "Latin-1"]),
    ("compare-header-only", lambda w, t: ["compare", eval_dir(t / "e1", b"image,psnr,ssim\n"), "--out",
                                          t / "cmp"], ["per_image.csv"]),
    # damaged run folders
    ("run-json-wrong-type", lambda w, t: _translate_tiles(w, t, _damage(w, t, "run.json", b"[1, 2, 3]")),
     ["run.json", "object"]),
    ("run-json-missing-keys", lambda w, t: _translate_tiles(
        w, t, _damage(w, t, "run.json", b'{"format": "her2-run/1"}')), ["run.json", "framework"]),
    ("run-json-not-json", lambda w, t: _translate_tiles(w, t, _damage(w, t, "run.json", b"{not json")),
     ["run.json"]),
    ("latest-json-corrupt", lambda w, t: _translate_tiles(
        w, t, _damage(w, t, "checkpoints/latest.json", b"\x00\x01garbage")), ["latest.json"]),
    ("latest-json-outside", lambda w, t: _translate_tiles(
        w, t, _damage(w, t, "checkpoints/latest.json", b'{"step": 1, "name": "../../../../etc/passwd"}')),
     ["latest.json", "not a checkpoint"]),
    ("latest-json-wrong-type", lambda w, t: _translate_tiles(
        w, t, _damage(w, t, "checkpoints/latest.json", b'{"step": 1, "name": 7}')), ["latest.json", "name"]),
    ("checkpoint-random-bytes", lambda w, t: _translate_tiles(w, t, _damage(w, t, "WEIGHTS", os.urandom(4096))),
     ["safetensors"]),
    ("checkpoint-truncated", lambda w, t: _translate_tiles(w, t, _damage(w, t, "WEIGHTS", None)),
     ["safetensors"]),
    ("checkpoint-shape-mismatch", lambda w, t: _translate_tiles(w, t, _other_width(w, t)), ["does not fit"]),
    ("train-resume-run-json-list", lambda w, t: ["train", "--model", "pyramid_pix2pix", "--out",
                                                 _damage(w, t, "run.json", b"[]"), "--resume"], ["run.json"]),
    # bad files for the QuPath bridge, the review and the checkpoint import
    ("qupath-project-rois-infinity", lambda w, t: ["qupath", "project", "--out", t / "qp", "--image",
                                                   w["slide"], "--rois", _geojson(t, "inf", _INF_GEOJSON)],
     ["inf.geojson"]),
    ("qupath-project-transform-list", lambda w, t: ["qupath", "project", "--out", t / "qp", "--image",
                                                    w["slide"], "--registered",
                                                    _write(t / "transform.json", b"[1, 2]")],
     ["transform.json"]),
    ("qupath-import-geojson-deep", lambda w, t: ["qupath", "import", "--project", _project(w, t),
                                                 "--image", Path(w["slide"]).name, "--geojson",
                                                 _geojson(t, "deep", "[" * 10**5)], ["deep.geojson"]),
    ("import-random-bytes", lambda w, t: ["import", "asp", _write(t / "x.pth", os.urandom(4096)),
                                          "--out", t / "r"], ["x.pth"]),
]


def _project(w, tmp: Path) -> Path:
    """A valid QuPath project holding the world's slide (made before the bad input)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["qupath", "project", "--out", str(tmp / "qp"), "--image", str(w["slide"])]) == 0
    return tmp / "qp"

_INF_GEOJSON = ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
                '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [Infinity, 0], [10, 10], '
                '[0, 0]]]}}]}')
_NAN_GEOJSON = _INF_GEOJSON.replace("Infinity", "NaN")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _geojson(tmp: Path, name: str, text: str) -> Path:
    return _write(tmp / f"{name}.geojson", text.encode())


def _zstack(path: Path) -> Path:
    tifffile.imwrite(path, np.full((3, 64, 64, 3), 200, np.uint8), photometric="rgb",
                     metadata={"axes": "ZYXS"})
    return path


def _truncated_png(path: Path) -> None:
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    truncated_copy(path, path, 0.5)


def _big_header_slide(tmp: Path) -> Path:
    """A header claiming 2^17 x 2^17 px (never read): at --mpp 1, --work-mpp 0.01 asks 100x a side."""
    return tiff_claiming(tmp / "wide.tif", 2**17, 2**17)


def _latin1_cases(tmp: Path) -> Path:
    return _write(tmp / "cases.csv", "case,he,her2_registered,her2_score\ncaf\xe9,a.tif,b.tif,2+\n"
                  .encode("latin-1"))


def _good_cases(w, tmp: Path) -> Path:
    return _write(tmp / "good.csv", f"case,he,her2_registered,her2_score\nc1,{w['slide']},{w['slide']},2+\n"
                  .encode())


def _damage(w, tmp: Path, rel: str, data: bytes | None) -> Path:
    run = run_copy(w, tmp / "run_damaged")
    target = latest_weights(run) if rel == "WEIGHTS" else run / rel
    if data is None:
        truncated_copy(target, target, 0.5)
    else:
        target.write_bytes(data)
    return run


def _other_width(w, tmp: Path) -> Path:
    run = run_copy(w, tmp / "run_other")
    meta = json.loads((run / "run.json").read_text())
    meta["model_config"]["ngf"] = meta["model_config"]["ngf"] * 2
    (run / "run.json").write_text(json.dumps(meta))
    return run


def _translate_tiles(w, tmp: Path, run: Path) -> list:
    return ["translate", "--run", run, "--tiles", w["he_tiles"], "--out", tmp / "virtual"]


@pytest.mark.parametrize("builder, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_changes(world, tmp_path, capsys, builder, words):
    argv = builder(world, tmp_path)
    before_world, before_tmp = snapshot(world["root"]), snapshot(tmp_path)
    rc, err = run_cli(argv, capsys)
    assert_one_line(rc, err, *words)
    assert snapshot(world["root"]) == before_world
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before_tmp} == before_tmp


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "asp", "--data", ".", "--out", "r", "--crop", "0"], ["--crop"]),
    (["models", "--preset", "bogus"], ["--preset"]),
    (["tile", "--out", "o", "--stride-px", "-64"], ["--stride-px"]),
])
def test_exit_status_in_a_real_process(tmp_path, argv, words):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run([sys.executable, "-m", "her2core", *argv], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert_one_line(p.returncode, p.stderr.strip(), *words)
    assert not any(tmp_path.iterdir())


def test_batch_reports_the_bad_case_and_translates_the_others(world, tmp_path, capsys):
    bad = truncated_copy(deflate_tiff(tmp_path / "d.tif"), tmp_path / "cut.tif")
    cases = _write(tmp_path / "cases.csv", f"case,he\nbad,{bad}\ngood,{world['slide']}\n".encode())
    with time_limit(300):
        rc = main(["batch", str(cases), "--run", str(world["run"]), "--out", str(tmp_path / "b"),
                   "--tile", "64", "--overlap", "8", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "cut.tif" in err and "1 case(s) failed: bad" in err
    assert any((tmp_path / "b" / "good").rglob("*.ome.tif"))


def test_utf8_bom_cases_csv_reads_its_columns(world, tmp_path):
    from her2core.tiling import read_cases_csv

    text = f"case,he,her2_registered,her2_score\nc1,{world['slide']},{world['slide']},2+\n"
    path = _write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + text.encode())
    assert [c.case for c in read_cases_csv(path)] == ["c1"]


# -- slide reads: one decision per slide, no whole single-level reads ------------------------

def test_float_tiff_pixel_reads_the_same_whatever_the_region(tmp_path):
    from her2core.slide import open_slide

    img = np.linspace(0, 255, 128 * 128 * 3, dtype=np.float32).reshape(128, 128, 3)
    img[:8, :8] = 0.8  # a dark corner: a per-block decision scaled it by 255 (reads 204)
    tifffile.imwrite(tmp_path / "f.tif", img, tile=(16, 16), photometric="rgb")
    with open_slide(tmp_path / "f.tif", mpp=0.5) as s:
        small = s.read_region((0, 0), 0, (4, 4))
        whole = s.read_region((0, 0), 0, (128, 128))
    assert np.array_equal(small, whole[:4, :4])
    assert small[0, 0, 0] == 0  # [0, 255] data: 0.8 is 0, not 204
    assert np.array_equal(whole[64, 64], img[64, 64].astype(np.uint8))

    unit = (img / 255.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "u.tif", unit, tile=(16, 16), photometric="rgb")
    with open_slide(tmp_path / "u.tif", mpp=0.5) as s:
        assert np.array_equal(s.read_region((0, 0), 0, (4, 4)), s.read_region((0, 0), 0, (128, 128))[:4, :4])
        assert abs(int(s.read_region((64, 64), 0, (1, 1))[0, 0, 0]) - int(img[64, 64, 0])) <= 1


def test_planar_rgb_and_grey_alpha_read_as_rgb(tmp_path):
    from her2core.slide import open_slide

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, 2, 0), photometric="rgb",
                     planarconfig="separate", tile=(32, 32))
    tifffile.imwrite(tmp_path / "ga.tif", rgb[..., :2], photometric="minisblack",
                     extrasamples=["unassalpha"], planarconfig="contig")
    with open_slide(tmp_path / "planar.tif", mpp=0.5) as s:
        assert np.array_equal(s.read_region((0, 0), 0, (80, 96)), rgb)
        assert np.array_equal(np.asarray(s.level_array(0)[10:20, 5:9]), rgb[10:20, 5:9])
    with open_slide(tmp_path / "ga.tif", mpp=0.5) as s:
        got = s.read_region((0, 0), 0, (80, 96))
        assert np.array_equal(got, np.repeat(rgb[..., :1], 3, axis=2))
        assert s.level_array(0).shape == (96, 80, 3)


def single_level_tiff(path: Path, side: int, tile: int = 512) -> Path:
    """A single-level side² RGB TIFF of pre-encoded deflate tiles (written in seconds, ~MBs)."""
    import imagecodecs

    data = np.full((tile, tile, 3), 230, np.uint8)
    data[::7] = (180, 90, 150)  # pink stripes: tissue to the saturation channel
    enc = imagecodecs.deflate_encode(data, level=1)
    n = (-(-side // tile)) ** 2
    tifffile.imwrite(path, (enc for _ in range(n)), shape=(side, side, 3), dtype=np.uint8,
                     tile=(tile, tile), compression="zlib", photometric="rgb",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    return path


def test_single_level_slide_is_never_read_whole(tmp_path):
    import tracemalloc

    from her2core.slide import open_slide

    side = 12288  # 432 MiB of RGB if read whole
    path = single_level_tiff(tmp_path / "flat.tif", side)
    with open_slide(path) as s:
        assert s.level_count == 1
        tracemalloc.start()
        try:
            with time_limit(CASE_SECONDS):
                thumb, ds = s.thumbnail(512)
                overview = s.read_at_mpp((0, 0), (side * 0.25, side * 0.25), 8.0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert max(thumb.shape[:2]) == 512 and ds == pytest.approx(side / 512)
    assert overview.shape == (384, 384, 3)
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    # the stripes average to the same grey a whole-slide area average gives
    expect = (230 * 6 + 90) / 7
    assert abs(float(overview[100:200, 100:200, 1].mean()) - expect) < 3


def test_tissue_mask_of_a_single_level_slide_reads_band_by_band(tmp_path):
    import tracemalloc

    from her2core.slide import open_slide
    from her2core.slide.tissue import TissueConfig, detect_tissue

    side = 12288  # the whole box as float32 was 1.7 GiB
    with open_slide(single_level_tiff(tmp_path / "flat.tif", side)) as s:
        tracemalloc.start()
        try:
            with time_limit(CASE_SECONDS):
                mask = detect_tissue(s, TissueConfig(mask_mpp=8.0))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert mask.mask.shape == (384, 384) and mask.mask[20:-20, 20:-20].all()
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_shrunk_read_does_not_depend_on_the_band_height(tmp_path, monkeypatch):
    from her2core.slide import base, open_slide

    rng = np.random.default_rng(4)
    img = rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "r.tif", img, tile=(32, 32), photometric="rgb")
    with open_slide(tmp_path / "r.tif", mpp=0.5) as s:
        whole = s.read_shrunk((0, 0), 0, (260, 300), 4)
        monkeypatch.setattr(base, "SHRINK_ABOVE_PIXELS", 260 * 8)
        banded = s.read_shrunk((0, 0), 0, (260, 300), 4)
    assert np.array_equal(whole, banded)
    assert whole.shape == (75, 65, 3)
    assert np.abs(whole[10, 10] - img[40:44, 40:44].mean(axis=(0, 1))).max() <= 0.5


def test_header_claims_and_oversized_reads_are_refused_before_allocating(tmp_path):
    from her2core.slide import open_slide

    with pytest.raises(UserError, match="header claims 1000000 x 1000000"):
        open_slide(tiff_claiming(tmp_path / "h.tif", 10**6, 10**6), mpp=0.5)
    with open_slide(tiff_claiming(tmp_path / "w.tif", 2**17, 2**17), mpp=0.5) as s, \
            pytest.raises(UserError, match="more than her2 reads at once"):
        s.read_region((0, 0), 0, (2**17, 2**17))


@pytest.mark.parametrize("mpp", [2.5e-6, 1e-9, 5000.0])
def test_absurd_microns_per_pixel_refused_at_open(tmp_path, mpp):
    from her2core.slide import open_slide

    with pytest.raises(UserError, match="outside 0.01..100"):
        open_slide(ome_with_mpp(tmp_path / "a.ome.tif", mpp))
    with pytest.raises(UserError, match="--mpp"):
        open_slide(deflate_tiff(tmp_path / "b.tif"), mpp=mpp)


def test_odd_sized_tile_comes_back_its_own_size(world):
    from her2core.inference.tiles import translate_batch
    from her2core.training import load_run

    framework = load_run(world["run"])
    rng = np.random.default_rng(5)
    odd = rng.integers(0, 255, (2, 97, 130, 3), dtype=np.uint8)
    out = translate_batch(framework, odd)
    assert out.shape == (2, 97, 130, 3)
    even = rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    assert translate_batch(framework, even).shape == (1, 64, 64, 3)


@pytest.mark.parametrize("text, words", [
    (b"[[1, 0, 0]]", "a JSON object"),
    (json.dumps({"schema": _TRANSFORM_SCHEMA, "matrix": [["a"]], "he": {}, "her2": {}}).encode(),
     "malformed"),
    (json.dumps({"schema": _TRANSFORM_SCHEMA, "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                 "he": {"mpp": 0.5}, "her2": {"mpp": 0.5},
                 "field": {"path": "../../elsewhere.npy"}}).encode(), "not a file beside it"),
    (json.dumps({"schema": _TRANSFORM_SCHEMA, "matrix": [[1, 0, 0]], "he": []}).encode(), "'he'"),
])
def test_damaged_transform_json_is_one_line(tmp_path, text, words):
    from her2core.registration.transform import load_transform

    with pytest.raises(UserError, match="transform.json") as exc:
        load_transform(_write(tmp_path / "transform.json", text))
    assert words in str(exc.value) and "\n" not in str(exc.value)


# -- the guarded JSON / CSV reader -------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("[" * 10**5, "nested too deeply"),
    ('{"a": [1, Infinity]}', "Infinity"),
    ('{"a": NaN}', "NaN"),
    ('{"a": 1e999}', "1e999"),
    ('"just a string"', "a string"),
    ("{broken", "not valid JSON"),
])
def test_loads_json_refuses_in_one_line(text, words):
    from her2core.util.safe_io import loads_json

    with time_limit(10), pytest.raises(UserError, match="f.json") as exc:
        loads_json(text, "f.json", expect=dict)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_read_text_names_the_encoding(tmp_path):
    from her2core.util.safe_io import read_text

    assert read_text(_write(tmp_path / "bom.csv", b"\xef\xbb\xbfcase\n"), "CSV") == "case\n"
    with pytest.raises(UserError, match="Latin-1"):
        read_text(_write(tmp_path / "l.csv", "caf\xe9\n".encode("latin-1")), "CSV")
    with pytest.raises(UserError, match="UTF-16"):
        read_text(_write(tmp_path / "u.csv", "case\n".encode("utf-16")), "CSV")
    with pytest.raises(UserError, match="binary"):
        read_text(_write(tmp_path / "b.csv", b"\x00\x9f\x92\x96" * 10), "CSV")
