"""Swappable samplers: the Brownian bridge as a diffusers-style scheduler, DDIB's decode on diffusers.

The DDIB decoders are checked on the exact epsilon of a Gaussian data law, where the
probability-flow ODE has one solution every solver must approach: diffusers' DDIM equals
guided-diffusion's (ours) to float rounding, DPM-Solver++ and Euler converge to it.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_diffusion_units import gaussian_eps

from her2core.errors import UserError
from her2core.models.bbdm import BBDM
from her2core.models.ddib import DDIB
from her2core.models.diffusion.bridge import BrownianBridge
from her2core.models.diffusion.ddim import diffusers_scheduler, scheduler_decode


def _psnr(a, b):
    return 10 * math.log10(4.0 / ((a - b) ** 2).mean().item())


@pytest.mark.parametrize("clip", [False, True])
def test_diffusers_ddim_decode_equals_guided_diffusions(clip):
    d, eps, x0 = gaussian_eps()
    z = d.ddim_encode(eps, x0, steps=50)
    ours = d.ddim_decode(eps, z, steps=50, clip=clip)
    theirs = scheduler_decode(eps, z, diffusers_scheduler("ddim-diffusers", 1000, clip), steps=50)
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("name,steps,db", [("dpmsolver++", 20, 30.0), ("euler", 50, 25.0)])
def test_other_solvers_reach_the_same_ode_solution(name, steps, db):
    d, eps, x0 = gaussian_eps()
    z = d.ddim_encode(eps, x0, steps=50)
    reference = d.ddim_decode(eps, z, steps=50, clip=False)
    out = scheduler_decode(eps, z, diffusers_scheduler(name, 1000, False), steps=steps)
    assert _psnr(out, reference) >= db


def test_ddib_translate_uses_the_chosen_decoder_and_rejects_others():
    torch.manual_seed(0)
    model = DDIB(DDIB.preset("tiny")).eval()
    he = torch.rand(1, 3, 16, 16) * 2 - 1
    assert model.scheduler_name == "ddim"
    base = model.translate(he, steps=5)
    model.use_scheduler("ddim-diffusers")
    assert model.scheduler_name == "ddim-diffusers"
    assert (model.translate(he, steps=5) - base).abs().max().item() < 1e-4
    model.use_scheduler("dpmsolver++")
    assert model.translate(he, steps=5).shape == base.shape
    with pytest.raises(UserError, match=r"--scheduler euler-a: ddib samples with ddim, ddim-diffusers"):
        model.use_scheduler("euler-a")
    with pytest.raises(UserError, match=r"bbdm samples with bridge"):
        BBDM(BBDM.preset("tiny")).use_scheduler("dpmsolver++")


def test_bridge_scheduler_steps_as_its_sampler_and_saves_its_config(tmp_path):
    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))

    def objective(x, t):
        return torch.einsum("ij,njhw->nihw", w, x) * (t.float()[:, None, None, None] / 1000)

    y = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    bridge = BrownianBridge(1000, 1.0, "grad")
    sampled = bridge.sample(objective, y, steps=7, eta=1.0, generator=torch.Generator().manual_seed(3))
    bridge.save_pretrained(tmp_path / "bridge")
    loaded = BrownianBridge.from_pretrained(tmp_path / "bridge")
    loaded.set_timesteps(7)
    assert loaded.timesteps.tolist() == bridge.sample_steps(7) and loaded.timesteps[0] == 999
    gen, x = torch.Generator().manual_seed(3), y
    for t in loaded.timesteps.tolist():  # the diffusers sampling loop, by hand
        x, x0 = loaded.step(objective(x, torch.full((2,), t)), t, x, y, eta=1.0, generator=gen)
    assert torch.equal(x, sampled) and torch.equal(x, x0)
    assert torch.equal(loaded.m_t, bridge.m_t) and torch.equal(loaded.variance_t, bridge.variance_t)


def test_the_translator_records_the_scheduler():
    from her2core.inference.model import load_translator

    tr = load_translator(DDIB(DDIB.preset("tiny")), device="cpu", steps=4, scheduler="dpmsolver++")
    assert tr.describe()["scheduler"] == "dpmsolver++" and tr.describe()["steps"] == 4
    assert load_translator(BBDM(BBDM.preset("tiny")), device="cpu").describe()["scheduler"] == "bridge"


def test_consistency_multistep_through_diffusers_cm_scheduler_equals_ours():
    from her2core.models.consistency import ConsistencyModel

    torch.manual_seed(0)
    model = ConsistencyModel(ConsistencyModel.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.unet_ema.parameters():
            p.normal_(0, 0.3)  # x0 beyond [-1, 1] between steps: both samplers clip it as upstream
    he = torch.rand(2, 3, 16, 16) * 2 - 1
    outs, calls = {}, []
    hook = model.unet_ema.register_forward_pre_hook(lambda _m, a: calls.append(1))
    for name in ("multistep", "cm-diffusers"):
        model.use_scheduler(name)
        calls.clear()
        outs[name] = model.translate(he, steps=2, generator=torch.Generator().manual_seed(0))
        assert len(calls) == 2  # upstream's NFE: len(ts) - 1
    hook.remove()
    assert (outs["multistep"] - outs["cm-diffusers"]).abs().max().item() < 1e-4
