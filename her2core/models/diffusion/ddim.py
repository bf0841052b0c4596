"""Gaussian diffusion with guided-diffusion's schedule and respacing, DDIM encode and decode (DDIB).

The reference sampler ("ddim", the default) is written out rather than taken from diffusers'
DDIMScheduler/DDIMInverseScheduler because DDIB's translation depends on guided-diffusion's exact conventions: `ddimN` respacing
(stride 1000//N from t=0), the model always seeing the *original* timestep, the reverse ODE
running over all respaced steps up to alphā_next = 0, and clip False/True for encode/decode.
DDIM inversion amplifies float32 rounding ~1000x over 250+250 steps, so the arithmetic follows
guided-diffusion's order too: the respaced schedule rebuilt from its betas in float64, every
coefficient cast to float32 before use (`_extract_into_tensor`), square roots taken in float32,
and eps re-derived from x0 in both directions (`_predict_eps_from_xstart`). diffusers'
DDIMInverseScheduler also steps from t - stride to t with the model evaluated at t, where
guided-diffusion evaluates at the level it leaves, and it cannot end at alphā = 0.

The decode can be swapped for diffusers' schedulers (`DECODERS`, `her2 translate --scheduler`):
they solve the same probability-flow ODE of the same epsilon model from the latent the encode
reached, so fewer steps trade accuracy for time (see benchmarks/diffusion_sampling.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from her2core.models.diffusion.common import extract


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """guided-diffusion 'linear': beta 1e-4 -> 0.02, scaled by 1000/T so any T matches the T=1000 process."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def respaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """guided-diffusion `space_timesteps`: 'ddimN' (integer stride from 0) if one exists, else evenly spaced."""
    if steps >= num_timesteps:
        return list(range(num_timesteps))
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == steps:
            return list(range(0, num_timesteps, stride))
    if steps == 1:
        return [0]
    frac = (num_timesteps - 1) / (steps - 1)
    return sorted({round(i * frac) for i in range(steps)})


class GaussianDiffusion:
    """epsilon-prediction DDPM over T steps (training) with DDIM over a respaced subset (sampling)."""

    def __init__(self, num_timesteps: int = 1000):
        self.T = num_timesteps
        acp = np.cumprod(1.0 - linear_betas(num_timesteps))
        self.alphas_cumprod = acp
        self.sqrt_acp = torch.tensor(np.sqrt(acp), dtype=torch.float32)
        self.sqrt_1m_acp = torch.tensor(np.sqrt(1.0 - acp), dtype=torch.float32)

    def q_sample(self, x0, t, noise):
        return extract(self.sqrt_acp, t, x0.ndim) * x0 + extract(self.sqrt_1m_acp, t, x0.ndim) * noise

    def _respaced(self, steps: int):
        """Respaced timesteps and alphā, prev, next as guided-diffusion's SpacedDiffusion builds them."""
        ts = respaced_timesteps(self.T, steps)
        keep, last, betas = set(ts), 1.0, []
        for i, a in enumerate(self.alphas_cumprod):
            if i in keep:
                betas.append(1.0 - a / last)
                last = a
        acp = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        prev = np.append(1.0, acp[:-1])
        nxt = np.append(acp[1:], 0.0)
        return ts, acp, prev, nxt

    @staticmethod
    def _x0_eps(eps_model, x, t_orig, a, clip):
        n = x.shape[0]
        t = torch.full((n,), t_orig, device=x.device, dtype=torch.float32)
        eps = eps_model(x, t).float()
        recip, recipm1 = _f32(np.sqrt(1.0 / a), x), _f32(np.sqrt(1.0 / a - 1.0), x)
        x0 = recip * x - recipm1 * eps
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        return x0, (recip * x - x0) / recipm1  # eps re-derived from x0, as upstream

    @torch.no_grad()
    def ddim_encode(self, eps_model: Callable, x0: torch.Tensor, *, steps: int, clip: bool = False,
                    to_zero: bool = False) -> torch.Tensor:
        """Reverse ODE x_0 -> x_T (upstream `ddim_reverse_sample_loop`, eta 0).

        Upstream runs all `steps` steps, the last one to alphā_next = 0 (x_T = predicted eps), but
        its decoder starts at the last respaced level alphā_T' (~4e-5 for the linear schedule), so
        the first decode step divides a model error by sqrt(alphā_T') ~ 0.006. A perfect model hides
        that; a real one loses the image (measured on a tiny trained model at 50 steps: 8.8 dB
        reconstruction vs 29 dB). By default (to_zero=False) we stop at alphā_T', the level the
        decoder starts from: steps - 1 evaluations, an exactly matching ODE. to_zero=True is upstream.
        """
        ts, acp, _, nxt = self._respaced(steps)
        x = x0.float()
        last = len(ts) if to_zero else len(ts) - 1
        for i in range(last):
            x0_hat, eps = self._x0_eps(eps_model, x, ts[i], acp[i], clip)
            a_next = _f32(nxt[i], x)
            x = x0_hat * torch.sqrt(a_next) + torch.sqrt(1 - a_next) * eps
        return x

    @torch.no_grad()
    def ddim_decode(self, eps_model: Callable, x_T: torch.Tensor, *, steps: int, clip: bool = True,
                    eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM x_T -> x_0 (upstream `ddim_sample_loop`); eta 0 is deterministic."""
        from her2core.models.diffusion.common import randn

        ts, acp, prev, _ = self._respaced(steps)
        x = x_T.float()
        for i in reversed(range(len(ts))):
            x0_hat, eps = self._x0_eps(eps_model, x, ts[i], acp[i], clip)
            a, a_prev = _f32(acp[i], x), _f32(prev[i], x)
            sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
            x = x0_hat * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev - sigma ** 2) * eps
            if eta > 0 and i > 0:
                x = x + sigma * randn(x.shape, generator, x.device)
        return x


#: decode samplers: "ddim" (guided-diffusion's, exact) or a diffusers scheduler over the same ODE
DECODERS = ("ddim", "ddim-diffusers", "dpmsolver++", "euler")


def diffusers_scheduler(name: str, num_timesteps: int, clip: bool):
    """A diffusers scheduler for DDIB's epsilon model: its linear betas, 'leading' spacing (ddimN's).

    clip: x0 clipped to [-1, 1] (DDIM's clip_sample; for DPM-Solver++ dynamic thresholding with
    sample_max_value 1, which is the same clamp). Euler has no x0 clipping.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    common = {"num_train_timesteps": num_timesteps, "trained_betas": linear_betas(num_timesteps),
              "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 0}
    if name == "ddim-diffusers":
        return DDIMScheduler(**common, clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=True)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           thresholding=clip, sample_max_value=1.0)
    if name == "euler":
        return EulerDiscreteScheduler(**common)
    from her2core.errors import UserError
    raise UserError(f"--scheduler {name!r}: DDIB decodes with one of {', '.join(DECODERS)}")


@torch.no_grad()
def scheduler_decode(eps_model: Callable, x_T: torch.Tensor, scheduler, *, steps: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """x_T (the encode's latent) -> x_0 with a diffusers scheduler (the diffusers sampling loop)."""
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T.float() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = eps_model(scheduler.scale_model_input(x, t), t.float().expand(x.shape[0])).float()
        x = scheduler.step(eps, t, x, generator=generator, return_dict=False)[0]
    return x


def _f32(value, like: torch.Tensor) -> torch.Tensor:
    """A float64 schedule value as guided-diffusion uses it: cast to a float32 tensor."""
    return torch.tensor(float(value), dtype=torch.float64).to(torch.float32).to(like.device)
