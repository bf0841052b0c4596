"""`her2 evaluate` / `her2 report` end to end on small tiles, LPIPS weight handling, bad input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from her2core import cli
from her2core.evaluation import perceptual
from her2core.evaluation.pathology import remove_dab


def _write(folder: Path, name: str, rgb):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / f"{name}.png")


@pytest.fixture()
def tiles(tmp_path, monkeypatch):
    """6 real 96-px IHC tiles; virtual = the real tile, noisy, or without DAB."""
    monkeypatch.delenv(perceptual.LPIPS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # empty hub cache: no LPIPS
    ihc = data.immunohistochemistry()
    rng = np.random.default_rng(0)
    for i in range(6):
        real = ihc[(i // 3) * 200:(i // 3) * 200 + 96, (i % 3) * 150:(i % 3) * 150 + 96]
        virt = [real, np.clip(real + rng.normal(0, 30, real.shape), 0, 255).astype(np.uint8),
                remove_dab(real)][i % 3]
        _write(tmp_path / "real", f"t{i}", real)
        _write(tmp_path / "virtual", f"t{i}", virt)
        _write(tmp_path / "he", f"t{i}", np.full_like(real, 200))
    return tmp_path


def test_evaluate_then_report(tiles, capsys):
    out = tiles / "eval"
    rc = cli.main(["evaluate", "--pred", str(tiles / "virtual"), "--target", str(tiles / "real"),
                   "--out", str(out), "--model", "asp", "--dataset", "skimage", "--mpp", "0.5",
                   "--he", str(tiles / "he"), "--no-fid", "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "LPIPS left out" in captured.err and "alexnet-owt-7be5be79.pth" in captured.err
    df = pd.read_csv(out / "per_image.csv")
    assert list(df.columns[:9]) == ["image", "model", "framework", "dataset", "test_set", "psnr",
                                    "ssim", "ssim_gaussian", "ms_ssim"]
    assert (df.dataset == "skimage").all() and (df.test_set == "real").all()  # --target's name
    assert "lpips" not in df.columns  # never a random backbone
    assert (df.framework == "gan").all() and len(df) == 6
    by = df.set_index("image")
    assert by.loc["t0", "ssim"] == pytest.approx(1.0) and by.loc["t0", "dab_od_mae"] == 0.0
    assert by.loc["t2", "her2_proxy_virtual"] == 0 and by.loc["t2", "dab_od_mae"] > 0.02
    assert by.loc["t1", "ssim"] < 0.9
    sm = json.loads((out / "set_metrics.json").read_text())
    assert sm["n"] == 6 and sm["resolution"] == {"height": 96, "width": 96}
    assert sm["settings"]["ms_ssim"]["scales"] == 4 and sm["settings"]["lpips"] is None
    assert sm["settings"]["dab"]["grid_um"] == 10.0 and sm["mpp"] == 0.5
    assert any("LPIPS left out" in n for n in sm["notes"])

    html = tiles / "report.html"
    assert cli.main(["report", str(out), "--out", str(html)]) == 0
    text = html.read_text()
    assert text.count("data:image/png;base64,") >= 3 * 6  # H&E | virtual | real, best and worst
    assert 'src="http' not in text and "t0" in text


@pytest.mark.slow
def test_evaluate_with_fid(tiles):
    from her2core.evaluation.distribution import default_inception_path

    if default_inception_path() is None:  # pragma: no cover
        pytest.skip("no FID weights")
    out = tiles / "eval"
    assert cli.main(["evaluate", "--pred", str(tiles / "virtual"), "--target", str(tiles / "real"),
                     "--out", str(out), "--quiet", "--kid-subsets", "10"]) == 0
    sm = json.loads((out / "set_metrics.json").read_text())
    assert sm["fid"] > 0 and sm["settings"]["fid_kid"]["kid_subset_size_used"] == 6
    assert sm["settings"]["fid_kid"]["features"].startswith("Inception-v3 pool3")
    assert sm["mpp_source"].startswith("default")


def test_lpips_loading_path_uses_given_state_dict(tmp_path):
    """Loading path only: these are *random* AlexNet weights, so no LPIPS number is checked."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    net = tv.models.alexnet(weights=None)
    path = tmp_path / perceptual.ALEXNET_FILE
    torch.save(net.state_dict(), path)
    assert perceptual.find_alexnet_weights(path) == path
    model = perceptual.load_lpips(path)
    assert torch.equal(getattr(model.net.slice1, "0").weight, net.features[0].weight)
    assert torch.equal(getattr(model.net.slice5, "10").bias, net.features[10].bias)
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    from her2core.errors import UserError

    with pytest.raises(UserError, match="not torchvision AlexNet"):
        perceptual.load_lpips(tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not found"):
        perceptual.find_alexnet_weights(tmp_path / "missing.pth")


def _run_bad(tmp_path, capsys):
    rc = cli.main(["evaluate", "--pred", str(tmp_path / "p"), "--target", str(tmp_path / "t"),
                   "--out", str(tmp_path / "o"), "--no-fid", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_exit_2(tmp_path, capsys):
    a = data.immunohistochemistry()[:32, :32]
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    assert "empty folder" in _run_bad(tmp_path, capsys)
    _write(tmp_path / "p", "x", a)
    _write(tmp_path / "t", "y", a)
    err = _run_bad(tmp_path, capsys)
    assert "no real tile for x" in err and "no virtual tile for y" in err
    (tmp_path / "t" / "y.png").unlink()
    _write(tmp_path / "t", "x", a[:16])
    err = _run_bad(tmp_path, capsys)
    assert "x.png" in err and "same size" in err
    Image.fromarray(a[..., 0]).save(tmp_path / "t" / "x.png")  # grayscale
    err = _run_bad(tmp_path, capsys)
    assert str(tmp_path / "t" / "x.png") in err and "not an RGB" in err
    _write(tmp_path / "t", "x", a)
    rc = cli.main(["evaluate", "--pred", str(tmp_path / "p"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert cli.main(["report", str(tmp_path / "p"), "--out", str(tmp_path / "r.html")]) == 2


def test_evaluate_run_translates_then_evaluates(tmp_path, monkeypatch):
    """The --run path's plumbing on the embedded dataset with an *untrained* tiny model.

    Only files, pairing and columns are checked: an untrained model's numbers mean nothing.
    """
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    sample = pytest.importorskip("her2core.sample")
    from her2core.evaluation.evaluate import EvalSettings, evaluate_run
    from her2core.models import registry

    root = sample.write_tile_dataset(tmp_path / "data", cases=4, tile=64, tiles_per_case=2)
    cls = registry.get("pyramid_pix2pix")
    fw = cls(cls.preset("tiny"))
    res = evaluate_run(fw, root, "test", tmp_path / "ev", EvalSettings(set_metrics=False),
                       log=lambda m: None)
    df = pd.read_csv(tmp_path / "ev" / "per_image.csv")
    assert len(df) == res["n"] == len(list((tmp_path / "ev" / "virtual").glob("*.png"))) > 0
    assert (df.framework == "gan").all() and df.her2_label.between(0, 3).all()
    assert (df.test_set == "data/test").all() and df.dataset.isna().all()  # no run.json: unknown
    assert (df.ssim < 1).all() and res["he_dir"].endswith("inputs/he")
