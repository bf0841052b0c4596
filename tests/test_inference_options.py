"""One InferenceOptions: checked once, parsed by one helper for `her2 translate` and `her2 batch`,
and the provenance records it feeds keep the keys they always had."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_inference_support import ConvNet, synth_he

from her2core.cli import build_parser
from her2core.cli import main as her2
from her2core.cli.options import inference_options
from her2core.errors import UserError
from her2core.inference.options import InferenceOptions


def _parsed(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", [
    ["translate", "--run", "r", "--slide", "s.tif", "--out", "o.ome.tif"],
    ["batch", "cases.csv", "--run", "r", "--out", "o"],
])
def test_both_commands_build_the_same_options_with_the_same_defaults(command):
    assert inference_options(_parsed(*command)) == InferenceOptions()
    given = ["--steps", "7", "--scheduler", "euler", "--batch-size", "3", "--seed", "11",
             "--work-mpp", "0.5", "--tile", "128", "--overlap", "16", "--precision", "fp32",
             "--device", "cpu", "--workers", "3"]
    assert inference_options(_parsed(*command, *given)) == InferenceOptions(
        steps=7, scheduler="euler", batch_size=3, seed=11, work_mpp=0.5, tile=128, overlap=16,
        precision="fp32", device="cpu", workers=3)


def test_translate_keeps_mpp_batch_has_none(capsys):
    opts = inference_options(_parsed("translate", "--run", "r", "--slide", "s.tif", "--out",
                                     "o.ome.tif", "--mpp", "0.25"))
    assert opts.slide_mpp == 0.25
    assert her2(["batch", "c.csv", "--run", "r", "--out", "o", "--mpp", "0.25"]) == 2
    assert "unrecognized arguments: --mpp" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--tile", "0"), ("--overlap", "-1"),
                                           ("--batch-size", "0"), ("--seed", "-2"),
                                           ("--work-mpp", "nan"), ("--precision", "fp8"),
                                           ("--workers", "0")])
def test_bad_values_are_one_argparse_line_in_both_commands(option, value, capsys):
    for argv in (["translate", "--run", "r", "--slide", "s.tif", "--out", "o.ome.tif"],
                 ["batch", "c.csv", "--run", "r", "--out", "o"]):
        assert her2([*argv, option, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and option in err[0], err


@pytest.mark.parametrize("field, value, words", [
    ("tile", 0, "--tile 0"), ("overlap", -3, "--overlap -3"), ("batch_size", 0, "--batch-size"),
    ("seed", -1, "--seed -1"), ("steps", 0, "--steps 0"), ("work_mpp", float("inf"), "--work-mpp"),
    ("slide_mpp", -0.5, "--mpp"), ("precision", "fp64", "--precision fp64"),
    ("batch_size", True, "--batch-size"), ("workers", 0, "workers"), ("scheduler", "", "--scheduler"),
])
def test_the_dataclass_checks_every_field_with_one_line(field, value, words):
    with pytest.raises(UserError, match=words.replace("-", r"\-")) as e:
        InferenceOptions(**{field: value})
    assert "\n" not in str(e.value)


def test_frozen_replace_and_json():
    opts = InferenceOptions(seed=3, device=__import__("torch").device("cpu"))
    assert opts.device == "cpu"  # a torch.device is kept as its name
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 4  # type: ignore[misc]
    assert opts.replace(seed=4).seed == 4 and opts.seed == 3
    with pytest.raises(UserError):
        opts.replace(tile=-1)
    full = opts.to_json()
    assert json.loads(json.dumps(full)) == full and set(full) == {
        f.name for f in dataclasses.fields(InferenceOptions)}
    assert list(opts.to_json("seed", "batch_size")) == ["seed", "batch_size"]
    with pytest.raises(KeyError):
        opts.to_json("roi")


def test_records_keep_their_keys(tmp_path):
    """`.her2-output.json` of a tile folder and a batch DONE's job: the keys of before."""
    from her2core.inference.tiles import translate_tile_folder
    from her2core.pipelines.batch import run_batch
    from her2core.slide import write_pyramid
    from her2core.util.atomic import write_png
    from her2core.util.outputs import PROVENANCE

    tiles = tmp_path / "tiles"
    write_png(tiles / "t0.png", synth_he(32, 32, seed=1))
    out = translate_tile_folder(ConvNet(), tiles, tmp_path / "o", InferenceOptions(seed=2))
    rec = json.loads((out / PROVENANCE).read_text())
    assert set(rec) == {"command", "run", "weights_sha256", "inputs", "steps", "seed",
                        "batch_size", "precision", "scheduler", "inference_mode", "format"}
    assert (rec["seed"], rec["batch_size"], rec["steps"]) == (2, 8, None)

    write_pyramid(tmp_path / "B.ome.tif", synth_he(100, 120, seed=6), mpp=0.5, tile=128,
                  min_size=128)
    (tmp_path / "cases.csv").write_text("case,he\nB,B.ome.tif\n")
    run_batch(ConvNet(), tmp_path / "cases.csv", tmp_path / "batch",
              InferenceOptions(work_mpp=0.5, tile=64, overlap=16), metric_tile=64)
    job = json.loads((tmp_path / "batch" / "B" / "DONE").read_text())["job"]
    assert set(job) == {"weights_sha256", "steps", "scheduler", "precision", "inference_mode",
                        "seed", "batch_size", "work_mpp", "tile", "overlap", "metric_tile"}
    assert (job["tile"], job["overlap"], job["work_mpp"]) == (64, 16, 0.5)
