"""The one device/precision rule (util.device) used by training, slide and tile-folder inference."""

import numpy as np
import pytest
import torch
from test_inference_support import ConvNet

from her2core.errors import UserError
from her2core.util.device import autocast, resolve_device, resolve_precision


def test_device_and_precision_rules():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ("bogus", "cuda:x", "xla"):
        with pytest.raises(UserError, match="--device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(UserError, match="--precision"):
        resolve_precision("int8", cpu)
    with autocast(cpu, "bf16"):
        y = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert y.dtype == torch.bfloat16


def test_tile_folder_honours_device_and_precision(tmp_path):
    """`her2 translate --tiles` runs through the same Translator as slides: --precision applies
    and is recorded."""
    import json

    from her2core.inference.options import InferenceOptions
    from her2core.inference.tiles import translate_tile_folder
    from her2core.util.atomic import write_png

    tiles = tmp_path / "tiles"
    rng = np.random.default_rng(0)
    for k in range(3):
        write_png(tiles / f"t{k}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    a = translate_tile_folder(ConvNet(seed=0), tiles, tmp_path / "fp32",
                              InferenceOptions(device="cpu", precision="fp32"))
    b = translate_tile_folder(ConvNet(seed=0), tiles, tmp_path / "bf16",
                              InferenceOptions(device="cpu", precision="bf16"))
    rec = json.loads((b / ".her2-output.json").read_text())
    assert json.dumps(rec).count('"bf16"') == 1
    from PIL import Image

    pa = np.asarray(Image.open(a / "t0.png")).astype(int)
    pb = np.asarray(Image.open(b / "t0.png")).astype(int)
    assert 0 < np.abs(pa - pb).max() <= 16  # bf16 really ran, close to fp32
    with pytest.raises(UserError, match="--device"):
        translate_tile_folder(ConvNet(seed=0), tiles, tmp_path / "bad",
                              InferenceOptions(device="bogus"))
