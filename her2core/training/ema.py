"""Exponential moving average of a network, with ema_pytorch's warm-up (BCIStainer uses it).

The shadow copy and its step counter are submodule/buffer of the framework, so they are
saved in checkpoints like any other weights. Frameworks call `update()` after their
generator step; `model` is what inference uses.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


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
        d = self.decay()
        for e, o in zip(self.model.parameters(), online.parameters()):
            e.lerp_(o.detach(), 1 - d)
        for e, o in zip(self.model.buffers(), online.buffers()):
            if e.is_floating_point():
                e.lerp_(o.detach().to(e.dtype), 1 - d)
            else:
                e.copy_(o)
