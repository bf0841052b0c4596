"""The training engine: checkpoints without pickle, exact resume, run folders, bad input, tile translation."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from her2core.errors import UserError
from her2core.training import Cancelled, TrainConfig, load_run, train


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    from her2core.sample import write_tile_dataset

    return write_tile_dataset(tmp_path_factory.mktemp("tiles") / "ds", cases=4, tile=64, mpp=0.5,
                              tiles_per_case=4, seed=0, mode="same")


def _weights(run_dir):
    from safetensors.torch import load_file

    ckpt = json.loads((Path(run_dir) / "checkpoints" / "latest.json").read_text())["name"]
    return load_file(str(Path(run_dir) / "checkpoints" / f"{ckpt}.safetensors"))


# BCIStainer exercises the most engine paths: 3 optimisers, a warm-up/cosine schedule, EMA,
# BatchNorm + dropout (RNG), the comparator phase switch at step 4 of 10.
RESUME_OVERRIDES = {"ema_after": 2, "start_cmp": 2.4, "epochs": 6}


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tiles, tmp_path, stop_at):
    cfg = TrainConfig(max_steps=10, batch_size=2, checkpoint_every=4, log_every=1, seed=3)
    full = train("bcistainer", tiles, tmp_path / "full", train_config=cfg, overrides=RESUME_OVERRIDES)
    with pytest.raises(Cancelled):  # killed at step 6, after the checkpoint of step 4
        train("bcistainer", tiles, tmp_path / "cut", train_config=cfg, overrides=RESUME_OVERRIDES,
              progress=stop_at(6))
    assert json.loads((tmp_path / "cut/checkpoints/latest.json").read_text())["step"] == 4
    train("bcistainer", tiles, tmp_path / "cut", train_config=cfg, resume=True)
    a, b = _weights(full), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    assert any(k.startswith("model.G_ema.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # the training moved the weights (a resume that changed nothing would also "match")
    first = load_run(full, step=8).state_dict()
    assert any(not torch.equal(first[k], a["model." + k]) for k in first)
    rows = [json.loads(x) for x in (tmp_path / "cut/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "G" in r] == list(range(1, 11))


def test_run_folder_layout_and_no_pickle(tiles, tmp_path):
    run = train("pyramid_pix2pix", tiles, tmp_path / "run",
                train_config=TrainConfig(max_steps=3, checkpoint_every=2, log_every=1))
    meta = json.loads((run / "run.json").read_text())
    assert meta["framework"] == "pyramid_pix2pix" and meta["resolved"]["total_steps"] == 3
    assert meta["data"]["mpp"] == 0.5
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest.json", "step_00000002.json", "step_00000002.safetensors",
                     "step_00000003.json", "step_00000003.safetensors"]
    for p in run.rglob("*"):
        if p.is_file():
            assert b"\x80\x04\x95" not in p.read_bytes()[:16], p  # no pickle protocol header
    rec = json.loads((run / "checkpoints/step_00000003.json").read_text())
    assert set(rec["optimizers"]) == {"G", "D"} and rec["schedulers"]["G"]["last_epoch"] == 3
    assert (run / "samples/step_00000003.png").exists() and (run / "log.csv").read_text().startswith("step,")
    fw = load_run(run)
    assert not fw.training and fw.run_info["step"] == 3


def test_translate_tile_folder_writes_same_names_rounded(tiles, tmp_path):
    from PIL import Image

    from her2core.inference.options import InferenceOptions
    from her2core.inference.tiles import translate_batch, translate_tile_folder

    run = train("pyramid_pix2pix", tiles, tmp_path / "run", train_config=TrainConfig(max_steps=2))
    he_dir = Path(tiles) / "HE_20x" / "test"
    out = translate_tile_folder(run, he_dir, tmp_path / "virtual", InferenceOptions(batch_size=3))
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in he_dir.iterdir())
    fw = load_run(run)
    img = np.array(Image.open(min(he_dir.iterdir())).convert("RGB"))
    got = np.array(Image.open(min(out.glob("*.png"))))
    np.testing.assert_array_equal(got, translate_batch(fw, img[None])[0])
    with torch.no_grad():
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        ref = ((fw.translate(x) + 1) * 127.5).round().byte()[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, ref)


def test_size_check_needs_one_tile_size_without_crop(tiles, tmp_path):
    from her2core.datasets import open_paired
    from her2core.training.data import check_sizes

    ds = open_paired(tiles, "train")
    assert check_sizes(ds, None, "ds") == (64, 64)
    small = np.zeros((48, 48, 3), np.uint8)
    from her2core.util.atomic import write_png

    _he, ihc, _ = ds.pairs[0]
    write_png(tmp_path / "he.png", small)
    ds.pairs[0] = (tmp_path / "he.png", ihc, 0)
    with pytest.raises(UserError, match="differ in size"):
        check_sizes(ds, None, "ds")
    with pytest.raises(UserError, match="larger than tile"):
        check_sizes(ds, 56, "ds")


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(capsys, *argv):
    from her2core import cli

    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(tiles, tmp_path, capsys):
    import shutil

    from PIL import Image

    run = train("pyramid_pix2pix", tiles, tmp_path / "run", train_config=TrainConfig(max_steps=1))
    before = _digest(run)

    # a dataset with no pairs
    empty = tmp_path / "empty"
    (empty / "HE_20x" / "train").mkdir(parents=True)
    (empty / "IHC_20x" / "train").mkdir(parents=True)
    code, err = _cli(capsys, "train", "--model", "asp", "--data", str(empty), "--out", str(tmp_path / "o1"))
    assert code == 2 and len(err.splitlines()) == 1 and "no image pairs" in err
    assert not (tmp_path / "o1").exists()

    # a pair whose H&E and IHC differ in size
    bad = tmp_path / "bad"
    shutil.copytree(tiles, bad)
    victim = min((bad / "IHC_20x" / "train").iterdir())
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(victim)
    code, err = _cli(capsys, "train", "--model", "asp", "--data", str(bad), "--out", str(tmp_path / "o2"))
    assert code == 2 and len(err.splitlines()) == 1 and "same size" in err
    assert not (tmp_path / "o2").exists()

    # an existing run without --resume
    code, err = _cli(capsys, "train", "--model", "pyramid_pix2pix", "--data", str(tiles), "--out", str(run))
    assert code == 2 and "--resume" in err and len(err.splitlines()) == 1

    # a folder that is not a run
    (tmp_path / "notrun").mkdir()
    code, err = _cli(capsys, "train", "--model", "asp", "--out", str(tmp_path / "notrun"), "--resume")
    assert code == 2 and "not a training run" in err

    # resuming with another framework
    code, err = _cli(capsys, "train", "--model", "asp", "--out", str(run), "--resume")
    assert code == 2 and "pyramid_pix2pix run" in err
    assert _digest(run) == before

    # a checkpoint written by another framework
    with pytest.raises(UserError, match="is a pyramid_pix2pix run"):
        load_run(run, model_name="bcistainer")
    rec_path = run / "checkpoints" / "step_00000001.json"
    rec = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps(dict(rec, framework="asp")))
    with pytest.raises(UserError, match="checkpoint of framework 'asp'"):
        load_run(run)
    with pytest.raises(UserError, match="not a training run"):
        load_run(tmp_path / "notrun")


def test_models_command_lists_every_framework(capsys):
    from her2core import cli
    from her2core.models import registry

    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in registry.names():
        assert name in out
    assert "G 11,383,427" in out and "C 2,164,772" in out and "F 560,384" in out


def test_nonfinite_gradients_stop_with_a_clear_message(tiles, tmp_path):
    from her2core.training import TrainingStopped

    with pytest.raises(TrainingStopped, match="non-finite gradient at step 0"):
        train("pyramid_pix2pix", tiles, tmp_path / "nan", overrides={"lambda_L1": float("nan")},
              train_config=TrainConfig(max_steps=3, nonfinite="stop"))
