"""Karras/EDM preconditioning with the consistency boundary condition, CT schedules and samplers.

Follows openai/consistency_models `cm/karras_diffusion.py` (`KarrasDenoiser.denoise`,
`consistency_losses`, `karras_sample` onestep/multistep) and `cm/script_util.py`
(`create_ema_and_scales_fn`, progressive scales + adaptive target EMA), with an image
condition concatenated to the c_in-scaled input (the condition itself is not scaled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from her2core.models.diffusion.common import randn


@dataclass
class KarrasConfig:
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5


def boundary_scalings(sigma: torch.Tensor, k: KarrasConfig):
    """c_skip, c_out, c_in with f(x, sigma_min) = x exactly (the consistency boundary condition)."""
    sd2 = k.sigma_data ** 2
    c_skip = sd2 / ((sigma - k.sigma_min) ** 2 + sd2)
    c_out = (sigma - k.sigma_min) * k.sigma_data / (sigma ** 2 + sd2).sqrt()
    c_in = 1.0 / (sigma ** 2 + sd2).sqrt()
    return c_skip, c_out, c_in


def denoise(net, x_t: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None, k: KarrasConfig) -> torch.Tensor:
    """Consistency function f(x_t, sigma | cond): the network sees (c_in x_t ‖ cond) and time 250 ln sigma."""
    c_skip, c_out, c_in = (c[:, None, None, None] for c in boundary_scalings(sigma, k))
    inp = c_in * x_t
    if cond is not None:
        inp = torch.cat([inp, cond.to(inp.dtype)], dim=1)
    out = net(inp, 250.0 * torch.log(sigma + 1e-44)).float()
    return c_out * out + c_skip * x_t.float()


def karras_sigma(i, n: int, k: KarrasConfig):
    """sigma of index i on an n-point Karras grid running from sigma_max (i=0) to sigma_min (i=n-1)."""
    a, b = k.sigma_max ** (1 / k.rho), k.sigma_min ** (1 / k.rho)
    return (a + i / (n - 1) * (b - a)) ** k.rho


def ct_scales_and_ema(step: int, total_steps: int, start_scales: int, end_scales: int, start_ema: float):
    """Progressive discretisation N(k) and adaptive target EMA mu(k) (upstream 'adaptive'/'progressive')."""
    frac = min(step, total_steps) / max(total_steps, 1)
    scales = math.ceil(math.sqrt(frac * ((end_scales + 1) ** 2 - start_scales ** 2) + start_scales ** 2) - 1)
    scales = max(scales, 1)
    if start_ema <= 0.0:  # improved CT (Song & Dhariwal 2023): the target is the online network itself
        return scales + 1, 0.0
    c = -math.log(start_ema) * start_scales
    return scales + 1, math.exp(-c / scales)


def ct_pair(x0: torch.Tensor, num_scales: int, k: KarrasConfig, generator=None):
    """(x_t, sigma_t, x_t2, sigma_t2) on adjacent grid points, sharing one noise (CT's Euler step with x0)."""
    n = x0.shape[0]
    if generator is None:
        idx = torch.randint(0, num_scales - 1, (n,), device=x0.device).float()
        noise = torch.randn_like(x0)
    else:
        idx = torch.randint(0, num_scales - 1, (n,), generator=generator).to(x0.device).float()
        noise = randn(x0.shape, generator, x0.device)
    t = karras_sigma(idx, num_scales, k)
    t2 = karras_sigma(idx + 1, num_scales, k)
    x_t = x0 + noise * t[:, None, None, None]
    # upstream euler_to_denoiser(x_t, t, x0, t2) = x_t + (t2 - t) (x_t - x0)/t = x0 + noise * t2
    x_t2 = x0 + noise * t2[:, None, None, None]
    return x_t, t, x_t2, t2


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample loss. The reference's LPIPS needs pretrained VGG weights that are not available
    offline, so 'l2' (the reference's other option) or 'pseudo_huber' (Song & Dhariwal 2023) is used."""
    diff = (pred - target).float()
    if norm == "l2":
        return diff.pow(2).flatten(1).mean(1)
    if norm == "pseudo_huber":
        c = 0.00054 * math.sqrt(diff[0].numel())
        return (diff.pow(2).flatten(1).sum(1) + c ** 2).sqrt() - c
    raise ValueError(f"unknown consistency loss {norm!r}")


@torch.no_grad()
def sample(net, cond: torch.Tensor, k: KarrasConfig, *, ts: list[int], grid: int,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Upstream onestep (ts=[0]) / multistep (`stochastic_iterative_sampler`) on a `grid`-point Karras grid.

    NFE = max(1, len(ts) - 1) as upstream: ts=(0, 67, 150) with grid 151 is two evaluations.
    """
    n = cond.shape[0]
    shape = (n, 3, *cond.shape[2:])
    x = randn(shape, generator, cond.device) * k.sigma_max
    if len(ts) == 1:
        return denoise(net, x, torch.full((n,), k.sigma_max, device=cond.device), cond, k).clamp(-1, 1)
    for i in range(len(ts) - 1):
        t = float(karras_sigma(ts[i], grid, k))
        # each x0 clipped as upstream's karras_sample denoiser (clip_denoised True, image_sample.py's default)
        x0 = denoise(net, x, torch.full((n,), t, device=cond.device), cond, k).clamp(-1, 1)
        next_t = float(np.clip(karras_sigma(ts[i + 1], grid, k), k.sigma_min, k.sigma_max))
        x = x0 + randn(shape, generator, cond.device) * math.sqrt(max(next_t ** 2 - k.sigma_min ** 2, 0.0))
    return x.clamp(-1, 1)


@torch.no_grad()
def sample_cm_scheduler(net, cond: torch.Tensor, k: KarrasConfig, *, ts: list[int], grid: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """`sample` through diffusers' `CMStochasticIterativeScheduler` (the same sampler, to float rounding).

    diffusers counts grid indices from sigma_min (so the reference's ts go in reversed) and
    evaluates the network at every timestep, the last one at sigma_min too, where the boundary
    condition makes the consistency function the identity; upstream stops before it, so the
    loop here does as well (NFE = len(ts) - 1 as upstream). Each x0 is clipped, as `sample`.
    """
    from diffusers import CMStochasticIterativeScheduler

    sched = CMStochasticIterativeScheduler(num_train_timesteps=grid, sigma_min=k.sigma_min, sigma_max=k.sigma_max,
                                           sigma_data=k.sigma_data, rho=k.rho, clip_denoised=True)
    n = cond.shape[0]
    shape = (n, 3, *cond.shape[2:])
    x = randn(shape, generator, cond.device) * sched.init_noise_sigma
    if len(ts) == 1:
        return denoise(net, x, torch.full((n,), k.sigma_max, device=cond.device), cond, k).clamp(-1, 1)
    sched.set_timesteps(timesteps=list(reversed(ts)), device=cond.device)
    for t in sched.timesteps[:-1]:
        inp = torch.cat([sched.scale_model_input(x, t), cond.to(x.dtype)], dim=1)
        out = net(inp, t.float().expand(n)).float()
        x = sched.step(out, t, x.float(), generator=generator, return_dict=False)[0]
    return x.clamp(-1, 1)


def multistep_ts(nfe: int, grid: int, reference: tuple | None = None) -> list[int]:
    """Grid indices for `nfe` evaluations: the reference's tuned ts when its length fits, else evenly spaced."""
    if nfe <= 1:
        return [0]
    if reference is not None and len(reference) == nfe + 1:
        return list(reference)
    return [round(i * (grid - 1) / nfe) for i in range(nfe + 1)]
