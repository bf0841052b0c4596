"""Acceptance on a trained `tiny` Pyramid pix2pix run: tiled slide translation has no visible
seams, and the commands `her2 translate` (slide and tile modes) and `her2 batch` work on a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_inference_support import border_step_ratio

from her2core.cli import main as her2
from her2core.inference.blend import AxisGrid
from her2core.inference.model import load_translator
from her2core.slide import open_slide, write_pyramid

pytestmark = pytest.mark.slow
MPP = 0.5
TILE, OVERLAP = 128, 32
PERIOD = 4  # output pattern period of a generator with two stride-2 stages
N = 640


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Pyramid pix2pix `tiny`, trained for a few dozen steps on the sample tile dataset."""
    from her2core.sample import write_tile_dataset
    from her2core.training import TrainConfig, train

    root = tmp_path_factory.mktemp("tinyrun")
    data = write_tile_dataset(root / "data", cases=4, tile=64, mpp=MPP, seed=0, tiles_per_case=6)
    return train("pyramid_pix2pix", data, root / "run", preset="tiny",
                 train_config=TrainConfig(max_steps=12, batch_size=4, seed=0, checkpoint_every=12,
                                          device="cpu"))


@pytest.fixture(scope="module")
def he_region(tmp_path_factory):
    """An N x N px H&E slide at 0.5 µm/px, all tissue, from the sample tissue model."""
    from her2core.sample.render import he_rgb
    from her2core.sample.tissue import TissueModel

    n = N
    model = TissueModel(0.0, 0.0, n * MPP, n * MPP, seed=7, her2_score=2, tissue_cover=1.0,
                        tumour_cover=0.5, tissue_scale_um=400.0, island_scale_um=40.0)
    layers = model.render(0.0, 0.0, n, n, MPP, section=0)
    img = he_rgb(layers["h"], layers["e"])
    path = write_pyramid(tmp_path_factory.mktemp("he") / "he.ome.tif", img, mpp=MPP, tile=128,
                         min_size=128)
    return path, img


def test_tiled_translation_has_no_seams(tmp_path, tiny_run, he_region, capsys):
    slide, img = he_region
    x, y, w, h = 32, 32, N - 64, N - 64
    out = tmp_path / "virtual.ome.tif"
    code = her2(["translate", "--run", str(tiny_run), "--slide", str(slide), "--out", str(out),
                 "--region", f"{x},{y},{w},{h}", "--tile", str(TILE), "--overlap", str(OVERLAP),
                 "--batch-size", "4"])
    assert code == 0, capsys.readouterr().err
    with open_slide(out) as s:
        tiled = s.read_region((0, 0), 0, s.dimensions)
        assert s.mpp == pytest.approx(MPP)  # the run's working mpp (from its dataset)
        assert s.origin_xy == (x, y)
    # the same network on the whole region in one piece (32 px of context on each side)
    tr = load_translator(tiny_run, device="cpu", precision="fp32")
    whole = tr(img[None, y - 32:y + h + 32, x - 32:x + w + 32], 0)[0][32:-32, 32:-32]
    tissue = np.ones(tiled.shape[:2], bool)
    edges = sorted({e for p in AxisGrid(w, TILE, OVERLAP).positions()
                    for e in (p, p + TILE) if 2 < e < w - 2})
    seam_tiled = border_step_ratio(tiled, edges, tissue, period=PERIOD)
    seam_whole = border_step_ratio(whole, edges, tissue, period=PERIOD)
    print(f"seam ratio tiled {seam_tiled:.3f}, one piece {seam_whole:.3f}; "
          f"mean |tiled - one piece| {np.abs(tiled.astype(int) - whole).mean():.2f}")
    assert abs(seam_tiled - 1) <= 0.10
    assert abs(seam_whole - 1) <= 0.10
    # rows as well: transpose and measure horizontal borders
    seam_rows = border_step_ratio(tiled.transpose(1, 0, 2), edges, tissue.T, period=PERIOD)
    print(f"seam ratio across tile rows {seam_rows:.3f}")
    assert abs(seam_rows - 1) <= 0.10
    assert np.abs(tiled.astype(int) - whole).mean() < 3.0

    # control: the same run tiled without overlap shows seams to this very metric
    from her2core.inference.options import InferenceOptions
    from her2core.inference.slide import translate_slide

    naive = translate_slide(tr, slide, tmp_path / "naive.ome.tif",
                            InferenceOptions(tile=TILE, overlap=0), region=(x, y, w, h))
    with open_slide(naive) as s:
        n = s.read_region((0, 0), 0, s.dimensions)
    n_edges = [p for p in AxisGrid(w, TILE, 0).positions() if 2 < p < w - 2]
    seam_naive = border_step_ratio(n, n_edges, tissue, period=PERIOD)
    print(f"seam ratio without overlap {seam_naive:.3f}")
    assert seam_naive > 1.3


def test_translate_tiles_and_batch_commands_on_a_run(tmp_path, tiny_run, he_region, capsys):
    slide, img = he_region
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    from her2core.util.atomic import write_png

    for i in range(3):
        write_png(tiles / f"t{i}.png", img[i * 64:i * 64 + 64, :64])
    code = her2(["translate", "--run", str(tiny_run), "--tiles", str(tiles), "--out", str(tmp_path / "o")])
    assert code == 0 and sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        ".her2-output.json", "t0.png", "t1.png", "t2.png"]

    cases = tmp_path / "cases.csv"
    cases.write_text(f"slide,case\n{slide},only\n")
    argv = ["batch", str(cases), "--run", str(tiny_run), "--out", str(tmp_path / "b"),
            "--tile", "256", "--overlap", "32", "--no-progress"]
    assert her2(argv) == 0
    done = json.loads((tmp_path / "b" / "only" / "DONE").read_text())
    assert done["outputs"] == ["virtual_her2.ome.tif", "rois.geojson"]
    with open_slide(tmp_path / "b" / "only" / "virtual_her2.ome.tif") as s:
        assert s.dimensions == (N, N)
    assert her2(argv) == 0 and "skipped" in capsys.readouterr().out
