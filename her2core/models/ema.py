"""Exponential moving averages of a network: the one lerp (`ema_update`) and, on top of it,
ema_pytorch's warm-up schedule (`EMA`, which BCIStainer uses).

The diffusion frameworks keep their shadow networks themselves and call `ema_update` with the
decay their reference code uses; `EMA` holds the shadow copy and its step counter as
submodule/buffer of the framework, so they are saved in checkpoints like any other weights.
Frameworks call `update()` after their generator step; `model` is what inference uses.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def ema_update(shadow: nn.Module, model: nn.Module, decay: float, *, buffers: str = "copy") -> None:
    """shadow <- decay * shadow + (1 - decay) * model (decay 0 copies). Buffers are copied
    (`buffers="copy"`, the diffusion references), or floating-point buffers lerped and integer
    ones copied (`"lerp"`, ema_pytorch)."""
    for s, p in zip(shadow.parameters(), model.parameters()):
        if decay == 0.0:
            s.copy_(p.detach())
        else:
            s.lerp_(p.detach().to(s.dtype), 1.0 - decay)
    for s, b in zip(shadow.buffers(), model.buffers()):
        if buffers == "lerp" and s.is_floating_point() and decay != 0.0:
            s.lerp_(b.detach().to(s.dtype), 1.0 - decay)
        else:
            s.copy_(b)


class EMA(nn.Module):
    """ema_pytorch.EMA (0.0.10, the version BCIStainer pins) semantics: copy weights until
    `update_after_step`, then every `update_every` steps lerp parameters and floating-point
    buffers (BatchNorm running statistics) with decay min(beta, 1 − (1 + t/inv_gamma)^−power),
    t = step − update_after_step − 1. Integer buffers (BatchNorm's batch counter) are copied."""

    def __init__(self, model: nn.Module, beta: float = 0.9999, update_after_step: int = 100,
                 update_every: int = 10, inv_gamma: float = 1.0, power: float = 2 / 3):
        super().__init__()
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.beta, self.update_after_step, self.update_every = beta, update_after_step, update_every
        self.inv_gamma, self.power = inv_gamma, power
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True):  # the shadow stays in eval mode
        super().train(mode)
        self.model.eval()
        return self

    def decay(self) -> float:
        t = int(self.step) - self.update_after_step - 1
        if t <= 0:
            return 0.0
        return min(self.beta, 1 - (1 + t / self.inv_gamma) ** -self.power)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        step = int(self.step)
        self.step += 1
        if step % self.update_every != 0:
            return
        if step <= self.update_after_step:
            self.model.load_state_dict(online.state_dict())
            return
        ema_update(self.model, online, self.decay(), buffers="lerp")
