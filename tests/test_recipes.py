"""The `paper` recipes against the reference training code (issue 15).

Each test pins one recipe fact read from the reference repositories (sources in the
frameworks' REFERENCE tables) and failed before the fix it covers.
"""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from her2core.errors import UserError
from her2core.training import TrainConfig, load_run, train


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    from her2core.sample import write_tile_dataset

    return write_tile_dataset(tmp_path_factory.mktemp("recipes") / "ds", cases=4, tile=64, mpp=0.5,
                              tiles_per_case=3, seed=0)


def _tiny_unet(in_channels):
    from her2core.models.diffusion.unet import UNetConfig

    return UNetConfig(in_channels=in_channels, out_channels=3, model_channels=16, channel_mult=(1, 2),
                      num_res_blocks=1, attention_ds=(2,), num_heads=2, norm_groups=8)


# -- consistency model ----------------------------------------------------------------------------

def test_consistency_paper_schedule_follows_the_run_and_its_ema_forgets_the_init():
    """A 2k-step paper run: N(k) reaches 150 + 1 and the sampling EMA keeps < 1 % of the init.

    The reference rate 0.9999432189950708 over 2,000 steps keeps 0.99994^2000 = 89 % of the
    random initialisation (the defect); that is still what `schedule='reference'` gives.
    """
    from her2core.models.consistency import ConsistencyModel
    from her2core.util.configs import replace

    total = 2000
    cfg = replace(ConsistencyModel.preset("paper"), unet=_tiny_unet(6), loss="l2")
    model = ConsistencyModel(cfg)
    model.make_optimizers(total, 20)
    recipe = model.resolved_recipe()
    assert recipe["ct_total_steps"] == total
    assert model.scales_and_target_ema(total - 1)[0] == cfg.end_scales + 1
    init_share = recipe["ema_rate"] ** total  # weight of the initial shadow after `total` updates
    assert init_share < 0.01
    # the same fraction of the run as the reference's window: 17,606 of 1M steps
    assert 1 / (1 - recipe["ema_rate"]) == pytest.approx(total * 17606.5 / 1e6, rel=1e-3)

    ref = ConsistencyModel(replace(cfg, schedule="reference"))
    ref.make_optimizers(total, 20)
    assert ref.resolved_recipe() == {"ct_total_steps": 1_000_000, "ema_rate": 0.9999432189950708, "loss": "l2"}
    assert ref.resolved_recipe()["ema_rate"] ** total > 0.88
    assert ref.scales_and_target_ema(total - 1)[0] <= 12  # N = 7-11 of 151, the figure


def test_consistency_ema_update_uses_the_resolved_rate():
    """The shadow after k real updates holds rate^k of its start (cheap: k = 40, not 2k steps)."""
    from her2core.models.consistency import ConsistencyModel
    from her2core.models.ema import ema_update
    from her2core.util.configs import replace

    model = ConsistencyModel(replace(ConsistencyModel.preset("paper"), unet=_tiny_unet(6), loss="l2"))
    model.make_optimizers(200, 10)
    rate = model.resolved_recipe()["ema_rate"]
    start = [p.detach().clone() for p in model.unet_ema.parameters()]
    with torch.no_grad():
        for p in model.unet.parameters():
            p.zero_()
    for _ in range(40):
        ema_update(model.unet_ema, model.unet, model._ema_rate)
    for s0, s in zip(start, model.unet_ema.parameters()):
        torch.testing.assert_close(s, s0 * rate ** 40, rtol=1e-4, atol=1e-6)


def _fake_vgg(path: Path) -> Path:
    """A torchvision-VGG-16-shaped `features` state dict (random values; the loss only needs shapes)."""
    import torchvision

    gen = torch.Generator().manual_seed(0)
    feats = torchvision.models.vgg16(weights=None).features
    state = {f"features.{k}": torch.randn(v.shape, generator=gen) * 0.05
             for k, v in feats.state_dict().items()}
    torch.save(state, path)
    return path


def test_consistency_lpips_with_local_weights_and_l2_fallback_recorded(tiles, tmp_path, monkeypatch):
    from her2core.models.consistency import ConsistencyModel
    from her2core.models.diffusion import lpips_loss
    from her2core.util.configs import replace

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub: no weights
    monkeypatch.delenv(lpips_loss.VGG_ENV, raising=False)
    run = train("consistency", tiles, tmp_path / "run",
                overrides={"loss": "lpips", "ema_rate": None, "schedule": "run"},
                train_config=TrainConfig(max_steps=2, batch_size=2, checkpoint_every=10 ** 6, sample_count=0))
    recipe = json.loads((run / "run.json").read_text())["recipe"]
    assert recipe["loss"] == "l2" and "vgg16-397923af.pth" in recipe["loss_fallback"]
    assert recipe["ct_total_steps"] == 2

    weights = _fake_vgg(tmp_path / "vgg16.pth")
    model = ConsistencyModel(replace(ConsistencyModel.preset("tiny"), loss="lpips", lpips_weights=str(weights)))
    model.make_optimizers(10, 5)
    assert model.resolved_recipe()["loss"] == "lpips"
    assert "_lpips" not in "".join(model.state_dict())  # the loss network is not checkpointed
    net = model._lpips[0]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())  # piq replace_pooling
    src = torch.load(weights, weights_only=True)
    torch.testing.assert_close(getattr(net.model.net.slice3, "10").weight, src["features.10.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    d_same, d_diff = net(x, x), net(x, y)
    assert d_same.shape == (2,) and torch.all(d_same.abs() < 1e-6) and torch.all(d_diff > 0)

    with pytest.raises(UserError, match="VGG-16 weight file not found"):
        lpips_loss.find_vgg_weights(tmp_path / "missing.pth")


# -- BCIStainer -----------------------------------------------------------------------------------

def test_bcistainer_modulated_convs_get_the_reference_init():
    """The 18 ModConv2d weights are N(0, 0.02) through EqualizedWeight.data (they were N(0, 1))."""
    from her2core.models.bcistainer import BCIStainer
    from her2core.models.gan_blocks.stylemod import ModConv2d

    torch.manual_seed(0)
    model = BCIStainer(BCIStainer.preset("paper"))
    mods = [m for m in model.G.modules() if isinstance(m, ModConv2d)]
    assert len(mods) == 18
    for m in mods:
        assert m.weight.data.std().item() == pytest.approx(0.02, rel=0.02)
        assert torch.all(m.bias == 0) if m.bias is not None else True
    # the shadow starts as the initialised generator
    for a, b in zip(model.G.parameters(), model.G_ema.model.parameters()):
        assert torch.equal(a, b)


def _ema_pytorch_0_0_10(shadow, online, step, beta, after, every, power):
    """ema_pytorch 0.0.10 `EMA.update` (lucidrains/ema-pytorch @33bc626), written from its source."""
    if step % every != 0:
        return
    if step <= after:
        for s, o in zip(shadow.parameters(), online.parameters()):
            s.data.copy_(o.data)
        for s, o in zip(shadow.buffers(), online.buffers()):
            if s.is_floating_point():
                s.data.copy_(o.data)
        return
    epoch = max(step + 1 - after - 1, 0)
    decay = 0.0 if epoch <= 0 else min(max(1 - (1 + epoch) ** -power, 0.0), beta)
    for s, o in zip(list(shadow.parameters()) + list(shadow.buffers()),
                    list(online.parameters()) + list(online.buffers())):
        if s.is_floating_point():
            s.data.sub_((s.data - o.data) * (1 - decay))


def test_bcistainer_ema_is_ema_pytorch_every_step_power_one_with_bn_statistics():
    from her2core.models.bcistainer import BCIStainer
    from her2core.models.ema import EMA

    c = BCIStainer.preset("paper")
    assert (c.ema_beta, c.ema_after, c.ema_every, c.ema_power) == (0.99, 100, 1, 1.0)
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ours = EMA(online, beta=c.ema_beta, update_after_step=c.ema_after, update_every=c.ema_every,
               power=c.ema_power)
    ref = EMA(online).model  # a plain deep copy, updated by the reference algorithm
    for step in range(180):
        with torch.no_grad():
            for p in online.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        online.train()(torch.randn(2, 3, 8, 8))  # moves the BatchNorm running statistics
        ours.update(online)
        _ema_pytorch_0_0_10(ref, online, step, c.ema_beta, c.ema_after, c.ema_every, c.ema_power)
    for (name, a), b in zip(ours.model.state_dict().items(), ref.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    bn = ours.model[1]
    assert not torch.allclose(bn.running_mean, online[1].running_mean)  # averaged, not copied


def test_bcistainer_refuses_a_dataset_without_scores_and_takes_a_scores_csv(tiles, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiles, bare)
    with open(bare / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    (bare / "manifest.csv").unlink()  # HER2match layout without a manifest: every score unknown
    tc = TrainConfig(max_steps=1, checkpoint_every=10 ** 6, sample_count=0)
    with pytest.raises(UserError, match="none of the .* training pairs has one"):
        train("bcistainer", bare, tmp_path / "refused", train_config=tc)
    assert not (tmp_path / "refused" / "run.json").exists()

    scores = tmp_path / "scores.csv"
    with open(scores, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "her2_score"])
        w.writerows([(r["name"], f"{r['her2_score']}+" if r["her2_score"] != "0" else "0") for r in rows])
    run = train("bcistainer", bare, tmp_path / "scored", train_config=TrainConfig(
        max_steps=1, checkpoint_every=10 ** 6, sample_count=0, scores=str(scores)))
    data = json.loads((run / "run.json").read_text())["data"]
    assert data["scored_pairs"] == data["train_pairs"] > 0


def test_scores_from_bci_style_names_in_a_her2match_layout(tiles, tmp_path):
    import shutil

    from her2core.datasets import open_paired

    ds = tmp_path / "named"
    for side in ("HE_20x", "IHC_20x"):
        for p in sorted((Path(tiles) / side / "train").glob("*.png"))[:2]:
            (ds / side / "train").mkdir(parents=True, exist_ok=True)
            shutil.copy(p, ds / side / "train" / f"{p.stem}_train_2+.png")
            shutil.copy(p, ds / side / "train" / f"{p.stem}_3.png")  # not the BCI form: no score
    assert sorted(open_paired(ds, "train").scores) == [-1, -1, 2, 2]


def test_bcistainer_keeps_the_best_validation_psnr_checkpoint(tiles, tmp_path):
    run = train("bcistainer", tiles, tmp_path / "run",
                overrides={"select": "val_psnr", "validate_every": 0.5},
                train_config=TrainConfig(max_steps=6, batch_size=2, checkpoint_every=10 ** 6,
                                         keep_checkpoints=1, sample_count=0, log_every=1))
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val/PSNR"] for r in rows if "val/PSNR" in r}
    assert len(vals) >= 3
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["val_psnr"] == pytest.approx(max(vals.values()))
    assert vals[best["step"]] == pytest.approx(best["val_psnr"])
    fw = load_run(run)
    assert fw.run_info["step"] == best["step"] and fw.run_info["selected"] == "val_psnr"
    assert (run / "checkpoints" / f"step_{best['step']:08d}.safetensors").exists()  # never pruned


# -- BBDM and gradient accumulation ---------------------------------------------------------------

def test_bbdm_reference_weights_init_overwrites_zero_output_convs():
    from her2core.models.bbdm import BBDM
    from her2core.util.configs import replace

    assert BBDM.preset("paper").init == "reference"
    torch.manual_seed(0)
    model = BBDM(replace(BBDM.preset("tiny"), init="reference"))
    from diffusers.models.attention_processor import Attention

    attention = {id(m) for a in model.unet.modules() if isinstance(a, Attention) for m in a.modules()}
    convs = [m for m in model.unet.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and id(m) not in attention]
    assert convs and all(abs(m.weight.std().item() - 0.02) < 0.01 for m in convs if m.weight.numel() > 200)
    out_conv = model.unet.conv_out
    assert out_conv.weight.abs().sum() > 0  # zero-initialised upstream, redrawn by weights_init
    attn_out = [m for n, m in model.unet.named_modules() if n.endswith("to_out.0")]
    # upstream's attention projections are Conv1d, which weights_init leaves alone: still zero
    assert attn_out and all(torch.all(m.weight == 0) for m in attn_out)
    qkv = [m for n, m in model.unet.named_modules() if n.endswith(".to_q")]
    assert qkv and all(abs(m.weight.std().item() - 0.02) > 0.02 for m in qkv)  # PyTorch default init kept
    for a, b in zip(model.unet.parameters(), model.unet_ema.parameters()):
        assert torch.equal(a, b)  # the EMA starts from the initialised net


def test_context_accumulates_micro_batches_into_one_step():
    """accumulate 2, 'sum': one optimiser step with the sum of the micro-batch gradients (BBDM upstream)."""
    from her2core.training.context import EngineContext
    from her2core.training.distributed import DistEnv

    env = DistEnv()
    xs = [torch.randn(4, 3), torch.randn(4, 3)]
    for reduction, factor in (("sum", 1.0), ("mean", 0.5)):
        torch.manual_seed(0)
        lin = torch.nn.Linear(3, 1)
        w0 = lin.weight.detach().clone()
        opt = torch.optim.SGD(lin.parameters(), lr=1.0)
        ctx = EngineContext(torch.device("cpu"), "fp32", env, {"m": opt}, None, 10, 5, 2, reduction)
        for micro, x in enumerate(xs):
            ctx.begin(0, micro)
            ctx.backward(lin(x).sum())
            ctx.optimizer_step("m")
            if micro == 0:
                assert torch.equal(lin.weight, w0) and not ctx.stepping
        grad = sum(x.sum(0) for x in xs) * factor
        torch.testing.assert_close(lin.weight.detach(), w0 - grad[None])


def test_engine_applies_bbdm_accumulation(tiles, tmp_path):
    from safetensors.torch import load_file

    run = train("bbdm", tiles, tmp_path / "run", overrides={"accumulate": 2},
                train_config=TrainConfig(max_steps=3, batch_size=2, checkpoint_every=10 ** 6,
                                         sample_count=0, log_every=1))
    resolved = json.loads((run / "run.json").read_text())["resolved"]
    assert (resolved["accumulate"], resolved["effective_batch_size"], resolved["total_steps"]) == (2, 4, 3)
    record = json.loads((run / "checkpoints" / "step_00000003.json").read_text())
    assert record["positions"] == 12
    steps = [v for k, v in load_file(str(run / "checkpoints" / "step_00000003.safetensors")).items()
             if k.startswith("optim.unet.") and k.endswith(".step")]
    assert steps and all(float(s) == 3 for s in steps)  # Adam stepped once per 2 micro-batches


# -- diffusion input handling ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bbdm", "ddib", "consistency"])
def test_diffusion_resize_input_trains_and_translates_at_model_size(name, tiles):
    from her2core.models import registry
    from her2core.models.diffusion.unet import UNet
    from her2core.training.data import AugmentedPairs
    from her2core.util.configs import replace

    cls = registry.get(name)
    assert cls.preset("paper").input == "resize" and cls.preset("paper").image_size == 256
    model = cls(replace(cls.preset("tiny"), input="resize", image_size=16))
    defaults = model.training_defaults()
    assert defaults["resize"] == 16 and defaults["crop"] is None
    from her2core.datasets import open_paired

    item = AugmentedPairs(open_paired(tiles, "train"), 0, (), None, defaults["resize"])[0]
    assert item["he"].shape == (3, 16, 16)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[0].shape[-2:])))
             for m in model.modules() if isinstance(m, UNet)]
    out = model.eval().translate(torch.rand(2, 3, 32, 32) * 2 - 1, steps=2,
                                 generator=torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 3, 32, 32) and seen and set(seen) == {(16, 16)}


# -- pyramid pix2pix inference mode ---------------------------------------------------------------

def test_pix2pix_reference_mode_is_test_py_without_eval(tiles, tmp_path):
    from her2core.evaluation.evaluate import evaluate_run
    from her2core.models.pyramid_pix2pix import PyramidPix2Pix
    from her2core.util.configs import replace

    assert PyramidPix2Pix.preset("paper").inference == "reference"
    torch.manual_seed(0)
    model = PyramidPix2Pix(replace(PyramidPix2Pix.preset("tiny"), inference="reference", use_dropout=True))
    model.eval()
    before = {k: v.clone() for k, v in model.G.state_dict().items()}
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    a = model.translate(x, generator=torch.Generator().manual_seed(1))
    b = model.translate(x, generator=torch.Generator().manual_seed(1))
    c = model.translate(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)  # dropout live, masks from the seed
    for k, v in model.G.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics untouched
    assert not model.G.training
    # per-image batch statistics: without dropout, one image alone gives the same as in the batch
    nodrop = PyramidPix2Pix(replace(PyramidPix2Pix.preset("tiny"), inference="reference")).eval()
    torch.testing.assert_close(nodrop.translate(x)[1:2], nodrop.translate(x[1:2]))
    ev = replace(nodrop.config, inference="eval")
    nodrop.config = ev
    assert not torch.allclose(nodrop.translate(x), nodrop.translate(x[1:2]).expand_as(x))

    run = train("pyramid_pix2pix", tiles, tmp_path / "run", overrides={"inference": "reference"},
                train_config=TrainConfig(max_steps=1, checkpoint_every=10 ** 6, sample_count=0))
    result = evaluate_run(run, tiles, "test", tmp_path / "eval", log=lambda *_: None)
    assert result["settings"]["inference_mode"] == "reference"
    stored = json.loads((tmp_path / "eval" / "set_metrics.json").read_text())
    assert stored["settings"]["inference_mode"] == "reference"


# -- precision --------------------------------------------------------------------------------------

class _CudaLooking(torch.Tensor):
    """A CPU tensor that reports a CUDA device: shows what a sampler would do on a GPU."""

    @property
    def device(self):
        return torch.device("cuda")


def test_diffusion_sampling_does_not_override_the_requested_precision(monkeypatch):
    """models/diffusion/common.py used to enter bf16 autocast for any CUDA tensor, even at fp32."""
    from her2core.models.diffusion import common

    entered = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            entered.append((args, kwargs))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch, "autocast", Recorder)
    x = torch.rand(2, 3, 8, 8).as_subclass(_CudaLooking)
    assert x.device.type == "cuda"
    out = common.in_chunks(lambda t: t * 2, x, 1, 4)
    assert out.shape == (2, 3, 8, 8)
    assert entered == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp32_translation_on_cuda_runs_the_unet_in_fp32():
    from her2core.inference.model import Translator
    from her2core.models.bbdm import BBDM
    from her2core.models.diffusion.unet import UNet

    model = BBDM(BBDM.preset("tiny"))
    tr = Translator(model, torch.device("cuda"), steps=3, precision="fp32")
    dtypes = []
    for m in model.modules():
        if isinstance(m, UNet):
            m.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    tr(np.zeros((1, 32, 32, 3), np.uint8), 0)
    assert tr.describe()["precision"] == "fp32" and set(dtypes) == {torch.float32}


# -- the recipe table -------------------------------------------------------------------------------

def test_every_paper_setting_has_a_reference_value_and_no_silent_difference():
    from her2core.cli.models import recipe_rows
    from her2core.models import registry

    for name in registry.names():
        rows = recipe_rows(name, "paper")
        bad = [r["setting"] for r in rows if r["status"] in ("UNEXPLAINED", "NO REFERENCE")]
        assert not bad, f"{name}: {bad}"
        assert all(r["source"] for r in rows), name
        assert any(r["setting"] == "precision" for r in rows), name


def test_models_recipe_cli_prints_reference_and_source(capsys):
    from her2core.cli import main

    code = main(["models", "--preset", "paper", "--recipe"])
    out = capsys.readouterr().out
    assert code in (0, None)
    assert "quqixun/BCIStainer:libs/utils/base.py:76" in out  # ema power 1.0
    assert "xuekt98/BBDM:configs/Template-BBDM.yaml:9" in out  # accumulate_grad_batches 2
    assert "scripts/launch.sh:41" in out
    assert math.isfinite(len(out))


@pytest.mark.parametrize("name,key,old", [("pyramid_pix2pix", "inference", "eval"), ("bbdm", "input", "native"),
                                          ("ddib", "input", "native"), ("consistency", "input", "native"),
                                          ("bcistainer", "select", None)])
def test_runs_written_before_the_new_settings_keep_their_behaviour(name, key, old):
    """A run.json without the issue-15 fields is rebuilt as it was trained (native crops, eval mode...)."""
    from her2core.models import registry
    from her2core.training.runs import build_framework
    from her2core.util.configs import replace, to_dict

    cls = registry.get(name)
    new = replace(cls.preset("tiny"), **{key: cls.preset("paper").__dict__[key]})
    assert getattr(new, key) != old
    stored = to_dict(new)
    for k in cls.LEGACY:
        stored.pop(k, None)
    fw = build_framework({"framework": name, "model_config": stored}, "run.json")
    assert getattr(fw.config, key) == old
    current = build_framework({"framework": name, "model_config": to_dict(new)}, "run.json")
    assert getattr(current.config, key) == getattr(new, key)
