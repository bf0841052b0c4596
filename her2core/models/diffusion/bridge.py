"""Brownian-bridge diffusion between two images (BBDM, Li et al. CVPR 2023; xuekt98/BBDM).

No library implements the bridge, so the mathematics of upstream
`model/BrownianBridge/BrownianBridgeModel.py` is written out here, once, as a diffusers-style
scheduler (`SchedulerMixin` + `ConfigMixin`: `set_timesteps`, `step`, `save_pretrained`):
x_t = (1 - m_t) x0 + m_t y + sqrt(delta_t) eps, with x0 the target (IHC) and y the
source (H&E) the bridge starts from when sampling. diffusers' own schedulers cannot stand
in for it: they all end at Gaussian noise, the bridge ends at the H&E image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from her2core.models.diffusion.common import extract, randn


class BrownianBridge(SchedulerMixin, ConfigMixin):
    """Schedule of a linear-m_t bridge: m_t = linspace(0.001, 0.999, T), delta_t = 2(m_t - m_t^2) max_var."""

    order = 1

    @register_to_config
    def __init__(self, num_timesteps: int = 1000, max_var: float = 1.0, objective: str = "grad",
                 m_min: float = 0.001, m_max: float = 0.999):
        if objective not in ("grad", "noise", "ysubx"):
            raise ValueError(f"unknown BBDM objective {objective!r}")
        self.T, self.objective = num_timesteps, objective
        m_t = np.linspace(m_min, m_max, num_timesteps)
        self.m_t = torch.tensor(m_t, dtype=torch.float32)
        self.variance_t = torch.tensor(2.0 * (m_t - m_t ** 2) * max_var, dtype=torch.float32)
        self.timesteps = torch.arange(num_timesteps - 1, -1, -1)

    # -- training ----------------------------------------------------
    def q_sample(self, x0, y, t, noise):
        """(x_t, objective) for timesteps t (long, (N,))."""
        m = extract(self.m_t, t, x0.ndim)
        sigma = extract(self.variance_t, t, x0.ndim).sqrt()
        x_t = (1.0 - m) * x0 + m * y + sigma * noise
        if self.objective == "grad":
            target = m * (y - x0) + sigma * noise
        elif self.objective == "noise":
            target = noise
        else:  # ysubx
            target = y - x0
        return x_t, target

    def predict_x0(self, x_t, y, t, objective):
        if self.objective == "grad":
            return x_t - objective
        m = extract(self.m_t, t, x_t.ndim)
        if self.objective == "noise":
            sigma = extract(self.variance_t, t, x_t.ndim).sqrt()
            return (x_t - m * y - sigma * objective) / (1.0 - m)
        return y - objective  # ysubx

    # -- sampling ----------------------------------------------------
    def sample_steps(self, steps: int) -> list[int]:
        """Upstream `skip_sample`/'linear' timesteps: arange(T-1 -> 1, stride (T-1)/(steps-2)) ∪ {1, 0}.

        200 steps give upstream's 200 NFE exactly. Below 3 steps (not defined upstream):
        1 -> [T-1] (one jump to the x0 prediction), 2 -> [T-1, 0].
        """
        if steps < 1:
            raise ValueError("BBDM needs at least one sampling step")
        if steps >= self.T:
            return list(range(self.T - 1, -1, -1))
        if steps == 1:
            return [self.T - 1]
        if steps == 2:
            return [self.T - 1, 0]
        mid = torch.arange(self.T - 1, 1, step=-((self.T - 1) / (steps - 2))).long().tolist()
        return mid + [1, 0]

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """The sampling timesteps (`sample_steps`), T-1 first."""
        self.timesteps = torch.tensor(self.sample_steps(num_inference_steps), dtype=torch.long, device=device)

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, y: torch.Tensor, *,
             eta: float = 1.0, clip_denoised: bool = True, generator: torch.Generator | None = None):
        """One bridge step x_t -> x_{next} (upstream `p_sample`); returns (x_next, x0 prediction).

        `model_output` is the network's objective for (x_t ‖ y, t); at the last timestep x_next is
        the x0 prediction, as upstream returns it.
        """
        ts = self.timesteps.tolist()
        i = ts.index(int(timestep))
        n = y.shape[0]
        t = torch.full((n,), int(timestep), device=y.device, dtype=torch.long)
        x0 = self.predict_x0(sample, y, t, model_output.float())
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        if i == len(ts) - 1:
            return x0, x0
        x = sample
        nt = torch.full((n,), ts[i + 1], device=y.device, dtype=torch.long)
        m_t, m_nt = extract(self.m_t, t, x.ndim), extract(self.m_t, nt, x.ndim)
        var_t, var_nt = extract(self.variance_t, t, x.ndim), extract(self.variance_t, nt, x.ndim)
        sigma2_t = (var_t - var_nt * (1.0 - m_t) ** 2 / (1.0 - m_nt) ** 2) * var_nt / var_t
        x = ((1.0 - m_nt) * x0 + m_nt * y
             + ((var_nt - sigma2_t) / var_t).clamp_min(0).sqrt() * (x - (1.0 - m_t) * x0 - m_t * y))
        if eta > 0:
            x = x + sigma2_t.clamp_min(0).sqrt() * eta * randn(x.shape, generator, x.device)
        return x, x0

    @torch.no_grad()
    def sample(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor, *,
               steps: int = 200, eta: float = 1.0, clip_denoised: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Upstream `p_sample_loop`: start at x_T = y, the last step returns the x0 prediction.

        `denoise(x_t, t)` returns the objective (the UNet sees x_t ‖ y; the caller binds y).
        """
        self.set_timesteps(steps, device=y.device)
        x = y
        for step in self.timesteps.tolist():
            t = torch.full((y.shape[0],), step, device=y.device, dtype=torch.long)
            x, _ = self.step(denoise(x, t), step, x, y, eta=eta, clip_denoised=clip_denoised,
                             generator=generator)
        return x
