"""Learning-rate multipliers of the references, as functions of the optimisation step.

Schedules are written against the *reference epoch* e = step / total_steps × epochs, so a
short run (max_steps) keeps the published shape, and a full run reproduces it exactly.
The engine steps every scheduler once after the optimiser steps (the BCI code stepped it
before, skipping the first value).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _epoch(step: int, total_steps: int, epochs: float) -> float:
    return step / max(total_steps, 1) * epochs


def linear_decay(total_steps: int, n_epochs: int, n_epochs_decay: int) -> Callable[[int], float]:
    """pix2pix/CUT 'linear': constant for n_epochs, then linear to ~0 over n_epochs_decay (per epoch)."""
    total = n_epochs + n_epochs_decay

    def f(step: int) -> float:
        e = math.floor(_epoch(step, total_steps, total))
        return 1.0 - max(0, e + 1 - n_epochs) / float(n_epochs_decay + 1)

    return f


def warmup_cosine(total_steps: int, epochs: float, warmup_epochs: float,
                  min_ratio: float = 0.0) -> Callable[[int], float]:
    """BCIStainer (MAE-style, per iteration): linear warm-up, then half-cosine to min_ratio."""

    def f(step: int) -> float:
        e = _epoch(step, total_steps, epochs)
        if e < warmup_epochs:
            return e / warmup_epochs
        span = max(epochs - warmup_epochs, 1e-12)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * (e - warmup_epochs) / span))

    return f


def adam_linear_decay(nets: dict, config, total_steps: int) -> dict:
    """pix2pix/CUT optimisers: one Adam(lr, (beta1, beta2)) per network, each with the
    `linear_decay` schedule of `config.n_epochs` + `config.n_epochs_decay`."""
    import torch

    out = {}
    for name, net in nets.items():
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
        out[name] = (opt, torch.optim.lr_scheduler.LambdaLR(
            opt, linear_decay(total_steps, config.n_epochs, config.n_epochs_decay)))
    return out
