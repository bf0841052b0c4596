"""Brownian-bridge diffusion between two images (BBDM, Li et al. CVPR 2023; xuekt98/BBDM).

No library implements the bridge, so the mathematics of upstream
`model/BrownianBridge/BrownianBridgeModel.py` is written out here:
x_t = (1 - m_t) x0 + m_t y + sqrt(delta_t) eps, with x0 the target (IHC) and y the
source (H&E) the bridge starts from when sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from her2core.models.diffusion.common import extract, randn


class BrownianBridge:
    """Schedule of a linear-m_t bridge: m_t = linspace(0.001, 0.999, T), delta_t = 2(m_t - m_t^2) max_var."""

    def __init__(self, num_timesteps: int = 1000, max_var: float = 1.0, objective: str = "grad",
                 m_min: float = 0.001, m_max: float = 0.999):
        if objective not in ("grad", "noise", "ysubx"):
            raise ValueError(f"unknown BBDM objective {objective!r}")
        self.T, self.objective = num_timesteps, objective
        m_t = np.linspace(m_min, m_max, num_timesteps)
        self.m_t = torch.tensor(m_t, dtype=torch.float32)
        self.variance_t = torch.tensor(2.0 * (m_t - m_t ** 2) * max_var, dtype=torch.float32)

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

    @torch.no_grad()
    def sample(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor, *,
               steps: int = 200, eta: float = 1.0, clip_denoised: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Upstream `p_sample_loop`: start at x_T = y, the last step returns the x0 prediction.

        `denoise(x_t, t)` returns the objective (the UNet sees x_t ‖ y; the caller binds y).
        """
        ts = self.sample_steps(steps)
        x = y
        n = y.shape[0]
        for i, step in enumerate(ts):
            t = torch.full((n,), step, device=y.device, dtype=torch.long)
            x0 = self.predict_x0(x, y, t, denoise(x, t).float())
            if clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            if i == len(ts) - 1:
                return x0
            nt = torch.full((n,), ts[i + 1], device=y.device, dtype=torch.long)
            m_t, m_nt = extract(self.m_t, t, x.ndim), extract(self.m_t, nt, x.ndim)
            var_t, var_nt = extract(self.variance_t, t, x.ndim), extract(self.variance_t, nt, x.ndim)
            sigma2_t = (var_t - var_nt * (1.0 - m_t) ** 2 / (1.0 - m_nt) ** 2) * var_nt / var_t
            mean = ((1.0 - m_nt) * x0 + m_nt * y
                    + ((var_nt - sigma2_t) / var_t).clamp_min(0).sqrt() * (x - (1.0 - m_t) * x0 - m_t * y))
            x = mean
            if eta > 0:
                x = x + sigma2_t.clamp_min(0).sqrt() * eta * randn(x.shape, generator, x.device)
        return x
