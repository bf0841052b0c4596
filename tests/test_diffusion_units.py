"""Diffusion frameworks: exact reference parameter counts and the mathematics of each sampler.

Fast tests (no training): every sampler is checked against an oracle whose answer is known.
"""

import math

import numpy as np
import pytest
import torch

from her2core.errors import UserError
from her2core.models import registry
from her2core.models.bbdm import BBDM
from her2core.models.consistency import ConsistencyModel
from her2core.models.ddib import DDIB
from her2core.models.diffusion import karras
from her2core.models.diffusion.bridge import BrownianBridge
from her2core.models.diffusion.ddim import GaussianDiffusion, respaced_timesteps
from her2core.models.diffusion.unet import count_parameters
from her2core.util.configs import from_dict, replace, to_dict


# -- parameter counts (docs/references.md, counted from the upstream code) ------------
def test_paper_unets_match_reference_parameter_counts():
    assert count_parameters(BBDM.preset("paper").unet) == 237094787
    assert count_parameters(DDIB.preset("paper").unet) == 124053251
    cm = ConsistencyModel.preset("paper").unet
    assert count_parameters(cm) == 526311683  # 6-channel conditional variant
    assert count_parameters(replace(cm, in_channels=3)) == 526304771  # upstream LSUN-256


def test_registry_names_the_three_classes_and_tiny_counts_are_consistent():
    for name, cls in (("bbdm", BBDM), ("ddib", DDIB), ("consistency", ConsistencyModel)):
        assert registry.get(name) is cls
        fw = cls(cls.preset("tiny"))
        counts = fw.parameter_counts()
        assert all(v == count_parameters(cls.preset("tiny").unet) for v in counts.values())
        # EMA/target shadows are not trainable and not counted
        assert sum(counts.values()) == sum(p.numel() for p in fw.parameters() if p.requires_grad)


@pytest.mark.parametrize("cls", [BBDM, DDIB, ConsistencyModel])
def test_configs_round_trip_through_json_dicts(cls):
    for preset in ("paper", "tiny"):
        cfg = cls.preset(preset)
        assert from_dict(cls.config_class, to_dict(cfg)) == cfg


# -- Brownian bridge ------------------------------------------------------------------------
def test_bridge_schedule_and_skip_steps_follow_upstream():
    b = BrownianBridge()
    assert b.m_t[0].item() == pytest.approx(0.001) and b.m_t[-1].item() == pytest.approx(0.999)
    assert b.variance_t.max().item() == pytest.approx(0.5, abs=1e-5)  # 2(m - m^2) peaks at m = 1/2
    steps = b.sample_steps(200)
    assert len(steps) == 200 and steps[:3] == [999, 993, 988] and steps[-2:] == [1, 0]
    assert [len(b.sample_steps(n)) for n in (1, 2, 5, 20)] == [1, 2, 5, 20]
    x0, y, noise = torch.randn(3, 2, 3, 8, 8)
    t = torch.tensor([0, 500])
    x_t, grad = b.q_sample(x0, y, t, noise)
    assert torch.allclose(b.predict_x0(x_t, y, t, grad), x0, atol=1e-6)  # "grad" objective: x0 = x_t - grad


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_bridge_sampler_returns_the_target_under_an_oracle(eta):
    b = BrownianBridge()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    y = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1

    def oracle(x_t, t):  # the exact "grad" objective for the known target: x_t - x0
        return x_t - x0

    out = b.sample(oracle, y, steps=5, eta=eta, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, x0, atol=1e-5)


# -- DDIM / DDIB ------------------------------------------------------------------------------
def test_ddim_respacing_is_guided_diffusions():
    assert respaced_timesteps(1000, 50) == list(range(0, 1000, 20))
    assert respaced_timesteps(1000, 250) == list(range(0, 1000, 4))
    ts = respaced_timesteps(1000, 37)  # no integer stride: evenly spaced
    assert len(ts) == 37 and ts[0] == 0 and ts[-1] == 999


def gaussian_eps():
    """(diffusion, the exact epsilon of a Gaussian data law, 4 samples x0 of that law)."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.rand(1, 3, 16, 16, generator=gen) * 1.2 - 0.6
    var = torch.rand(1, 3, 16, 16, generator=gen) * 0.1 + 0.01
    x0 = (mu + var.sqrt() * torch.randn(4, 3, 16, 16, generator=gen)).clamp(-1, 1)
    d = GaussianDiffusion(1000)
    acp = torch.tensor(d.alphas_cumprod, dtype=torch.float32)

    def eps(x, t):
        a = acp[t.long()][:, None, None, None]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * var + 1 - a)

    return d, eps, x0


def test_ddim_encode_decode_inverts_under_the_exact_score_of_gaussian_data():
    """With the exact epsilon of a Gaussian data law the reverse ODE is invertible: 50 steps >= 30 dB."""
    d, eps, x0 = gaussian_eps()
    z = d.ddim_encode(eps, x0, steps=50)
    assert 0.7 < z.std().item() < 1.3  # the latent is noise-like
    rec = d.ddim_decode(eps, z, steps=50, clip=False)
    psnr = 10 * math.log10(4.0 / ((rec - x0) ** 2).mean().item())
    assert psnr >= 30.0


def test_ddib_trains_only_the_domains_asked_for_and_rejects_other_batches():
    import contextlib
    from types import SimpleNamespace

    fw = DDIB(replace(DDIB.preset("tiny"), domains=("ihc",)))
    opts = fw.make_optimizers(10, 10)
    assert set(opts) == {"unet_ihc"}

    def opt_step(name):
        opts[name][0].step()
        opts[name][0].zero_grad()

    ctx = SimpleNamespace(step=0, stepping=True, accumulate=1, total_steps=10, epoch=0.0, device=torch.device("cpu"),
                          autocast=contextlib.nullcontext, backward=lambda loss: loss.backward(),
                          optimizer_step=opt_step)
    he_before = [p.clone() for p in fw.unet_he.parameters()]
    ihc_before = [p.clone() for p in fw.unet_ihc.parameters()]
    logs = fw.training_step({"he": torch.rand(2, 3, 16, 16) * 2 - 1, "ihc": torch.rand(2, 3, 16, 16) * 2 - 1}, ctx)
    assert set(logs) == {"loss_ihc"}
    assert all(torch.equal(a, b) for a, b in zip(he_before, fw.unet_he.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(ihc_before, fw.unet_ihc.parameters()))
    with pytest.raises(UserError, match="none of the stains"):
        fw.training_step({"he": torch.zeros(2, 3, 16, 16)}, ctx)
    with pytest.raises(UserError, match="domains"):
        DDIB(replace(DDIB.preset("tiny"), domains=("dab",)))


# -- consistency model ------------------------------------------------------------------------
def test_consistency_boundary_condition_and_ct_schedule():
    k = karras.KarrasConfig()
    c_skip, c_out, c_in = karras.boundary_scalings(torch.tensor([k.sigma_min, 80.0]), k)
    assert c_skip[0].item() == pytest.approx(1.0) and c_out[0].item() == pytest.approx(0.0, abs=1e-7)
    assert c_in[1].item() == pytest.approx(1 / math.sqrt(80.0 ** 2 + 0.25))
    x = torch.randn(2, 3, 8, 8)
    net = lambda inp, t: torch.randn(inp.shape[0], 3, 8, 8)
    assert torch.allclose(karras.denoise(net, x, torch.full((2,), k.sigma_min), x, k), x)
    # progressive N(k) 2 -> 151 and adaptive mu(k) = 0.95^(2 / (N(k) - 1)), as upstream LSUN-256 CT
    assert karras.ct_scales_and_ema(0, 10**6, 2, 150, 0.95) == (2, pytest.approx(0.9025))
    n_end, mu_end = karras.ct_scales_and_ema(10**6, 10**6, 2, 150, 0.95)
    assert n_end == 151 and mu_end == pytest.approx(0.95 ** (2 / 150))
    ns = [karras.ct_scales_and_ema(s, 1000, 2, 150, 0.95)[0] for s in range(0, 1001, 50)]
    assert ns == sorted(ns)
    sig = karras.karras_sigma(np.arange(151), 151, k)
    assert sig[0] == pytest.approx(80.0) and sig[-1] == pytest.approx(0.002) and np.all(np.diff(sig) < 0)


def test_consistency_condition_is_concatenated_unscaled():
    k = karras.KarrasConfig()
    seen = {}

    def spy(inp, t):
        seen["inp"], seen["t"] = inp, t
        return torch.zeros(inp.shape[0], 3, *inp.shape[2:])

    x, cond = torch.randn(2, 3, 8, 8) * 10, torch.rand(2, 3, 8, 8) * 2 - 1
    sigma = torch.tensor([10.0, 1.0])
    karras.denoise(spy, x, sigma, cond, k)
    assert torch.equal(seen["inp"][:, 3:], cond)
    c_in = 1 / (sigma ** 2 + 0.25).sqrt()
    assert torch.allclose(seen["inp"][:, :3], x * c_in[:, None, None, None])
    assert torch.allclose(seen["t"], 250 * torch.log(sigma))
    assert karras.multistep_ts(2, 151, (0, 67, 150)) == [0, 67, 150]
    assert karras.multistep_ts(1, 151, (0, 67, 150)) == [0]
    assert karras.multistep_ts(3, 21, (0, 9, 20)) == [0, 7, 13, 20]


# -- seeds, batching, shapes ------------------------------------------------------------------
def _perturbed(fw):
    """Untrained nets output zeros (zero-init last convs); give them random weights for sampler tests."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in fw.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return fw


@pytest.mark.parametrize("cls,steps", [(BBDM, 3), (ConsistencyModel, 2), (DDIB, 4)])
def test_same_seed_same_samples_and_odd_tile_sizes(cls, steps):
    fw = _perturbed(cls(replace(cls.preset("tiny"), sample_batch=2)))
    he = torch.rand(3, 3, 20, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = fw.translate(he, steps=steps, generator=torch.Generator().manual_seed(7))
    b = fw.translate(he, steps=steps, generator=torch.Generator().manual_seed(7))
    assert a.shape == he.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    if cls is not DDIB:  # DDIB is deterministic (eta 0); the others draw noise from the generator
        c = fw.translate(he, steps=steps, generator=torch.Generator().manual_seed(8))
        assert not torch.equal(a, c)
    # batching does not change results: tile 0 alone equals tile 0 of the batch (DDIB, CM one step)
    if cls is DDIB:
        assert torch.allclose(fw.translate(he[:1], steps=steps), a[:1], atol=1e-5)
