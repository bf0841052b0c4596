"""The ADM UNet on diffusers: the exact ADM relayout, old checkpoints, memory/attention options.

Reference outputs given the same weights are compared by benchmarks/reference_import.py (it
runs the reference code); here: the relayout between the references' (and our former) ADM
names and diffusers' is exact both ways, a state dict in that layout loads into the UNet and
reproduces it, and the memory options leave outputs and gradients unchanged.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from her2core.errors import UserError
from her2core.models.bbdm import BBDM
from her2core.models.consistency import ConsistencyModel
from her2core.models.ddib import DDIB
from her2core.models.diffusion.unet import ADMLayout, build_unet
from her2core.util.configs import replace

CLASSES = [BBDM, DDIB, ConsistencyModel]


def _seeded(cfg, seed=0):
    torch.manual_seed(seed)
    net = build_unet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)  # no zero layers: any misplaced tensor changes the output
    return net.eval()


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("heads", ["preset", "num_heads_two_widths"])
def test_adm_layout_round_trips_and_loads_into_an_equal_network(cls, heads):
    cfg = cls.preset("tiny").unet
    if heads != "preset":  # attention at two widths with a fixed head count: per-block heads
        cfg = replace(cfg, num_heads=4, num_head_channels=-1, attention_ds=(1, 4))
    net = _seeded(cfg)
    layout = ADMLayout(cfg)
    adm = layout.to_adm(net.state_dict())
    assert "input_blocks.0.0.weight" in adm and not any("to_q" in k for k in adm)
    qkv = [k for k in adm if k.endswith("qkv.weight")]
    assert qkv and all(adm[k].ndim == 3 for k in qkv)  # ADM's fused Conv1d (3C, C, 1)
    back = layout.to_ours(adm)
    assert set(back) == set(net.state_dict())
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())
    fresh = build_unet(cfg).eval()
    fresh.load_state_dict(adm)  # the legacy loader relays the ADM names out
    x, t = torch.randn(2, cfg.in_channels, 16, 16), torch.tensor([3.5, 900.0])
    with torch.no_grad():
        assert torch.equal(fresh(x, t), net(x, t))


def test_legacy_qkv_rows_are_heads_then_q_k_v():
    """ADM's legacy attention reads qkv rows as (heads, q|k|v, d): head 0's q is rows 0..d-1."""
    cfg = replace(BBDM.preset("tiny").unet, num_heads=2)
    net = _seeded(cfg)
    adm = ADMLayout(cfg).to_adm(net.state_dict())
    attn = net.mid_block.attentions[0]
    fused = adm["middle_block.1.qkv.weight"][..., 0]
    c, d = attn.to_q.in_features, attn.to_q.in_features // 2
    assert torch.equal(fused[:d], attn.to_q.weight[:d]) and torch.equal(fused[d:2 * d], attn.to_k.weight[:d])
    assert torch.equal(fused[3 * d:4 * d], attn.to_q.weight[d:]) and fused.shape == (3 * c, c)


def test_a_run_state_in_the_former_layout_loads_through_the_framework():
    model = BBDM(BBDM.preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    layout = ADMLayout(model.config.unet)
    old = {}
    for prefix in ("unet.", "unet_ema."):
        sub = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        old.update({prefix + k: v for k, v in layout.to_adm(sub).items()})
    again = BBDM(BBDM.preset("tiny"))
    missing, unexpected = again.load_state_dict(old, strict=False)
    assert not missing and not unexpected
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    bad = dict(old, **{"unet.input_blocks.99.0.in_layers.0.weight": torch.zeros(1)})
    with pytest.raises(UserError, match=r"former ADM layout hold 'input_blocks\.99\.0"):
        BBDM(BBDM.preset("tiny")).load_state_dict(bad, strict=False)


def test_old_optimiser_state_fails_with_one_line(tmp_path):
    from her2core.training import checkpoint

    model = BBDM(BBDM.preset("tiny"))
    params = list(model.unet.parameters())
    old_opt = torch.optim.Adam(params[:-6], lr=1e-3)  # another tensor count, as the fused-qkv layout
    for p in params[:-6]:
        p.grad = torch.ones_like(p)
    old_opt.step()
    checkpoint.save(tmp_path, 1, model, {"unet": (old_opt, None)}, None, {})
    weights, record = checkpoint.find(tmp_path, 1)
    opt = torch.optim.Adam(params, lr=1e-3)
    with pytest.raises(UserError, match=r"optimiser 'unet' state does not fit.*start a new run"):
        checkpoint.load_training_state(weights, record, {"unet": (opt, None)}, None, torch.device("cpu"))


@pytest.mark.parametrize("cls", CLASSES)
def test_gradient_checkpointing_and_math_attention_change_no_result(cls):
    cfg = cls.preset("tiny").unet
    x, t = torch.randn(2, cfg.in_channels, 16, 16), torch.tensor([10.0, 500.0])
    results = []
    for options in ({}, {"gradient_checkpointing": True}, {"attention": "math"}):
        net = _seeded(replace(cfg, **options)).train()
        assert net.is_gradient_checkpointing == options.get("gradient_checkpointing", False)
        out = net(x, t)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    base_out, base_grads = results[0]
    for out, grads in results[1:]:
        assert torch.allclose(out, base_out, atol=1e-5)
        assert all(torch.allclose(g, b, atol=1e-5, rtol=1e-4) for g, b in zip(grads, base_grads))
    with pytest.raises(UserError, match="unet.attention 'flash'"):
        build_unet(replace(cfg, attention="flash"))


def test_the_unet_is_a_diffusers_unet2dmodel_and_exports(tmp_path):
    """diffusers' own folder layout as an export: save_pretrained / from_pretrained round trip."""
    cfg = DDIB.preset("tiny").unet
    net = _seeded(cfg)
    assert isinstance(net, UNet2DModel)
    net.save_pretrained(tmp_path / "unet")
    plain = UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([42.0])
    with torch.no_grad():
        assert torch.allclose(plain(x, t).sample, net(x, t), atol=1e-6)


def test_memory_options_are_settings_recorded_with_the_run_and_old_configs_load():
    from her2core.training.engine import _framework_config
    from her2core.util.configs import from_dict, to_dict

    cfg = _framework_config(BBDM, "tiny", {"unet.gradient_checkpointing": True, "unet.attention": "math"})
    assert cfg.unet.gradient_checkpointing and cfg.unet.attention == "math"
    assert to_dict(cfg)["unet"]["gradient_checkpointing"] is True  # what run.json's model_config holds
    assert BBDM(cfg).unet.is_gradient_checkpointing
    old = to_dict(BBDM.preset("tiny"))
    del old["unet"]["gradient_checkpointing"], old["unet"]["attention"]  # a run.json from before
    cfg = from_dict(BBDM.config_class, old, source="run.json")
    assert not cfg.unet.gradient_checkpointing and cfg.unet.attention == "sdpa"
