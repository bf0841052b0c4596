"""The StepContext the engine hands a framework: precision, gradient averaging, clipping, guard.

Frameworks stay free of devices and ranks: they wrap forwards in `ctx.autocast()`, call
`ctx.backward(loss)` and `ctx.optimizer_step(name)`. A non-finite gradient norm (after
averaging over ranks, so every rank decides alike) skips that optimiser's step; the
engine then skips or stops (TrainConfig.nonfinite). With fp16 the GradScaler owns inf
handling instead (it lowers the scale and skips, as usual).

Gradient accumulation (a framework's `accumulate` > 1): the engine runs `accumulate`
micro-batches per optimisation step; `ctx.stepping` is False on all but the last, where
`optimizer_step` leaves the gradients in place, and `backward` divides the loss by
`accumulate` when the reduction is 'mean' (BBDM upstream adds the micro-batch gradients: 'sum').
"""

from __future__ import annotations

import math

import torch

from her2core.training.distributed import DistEnv, average_
from her2core.util.device import autocast


class EngineContext:
    """Implements her2core.models.base.StepContext."""

    def __init__(self, device: torch.device, precision: str, env: DistEnv, optimizers: dict,
                 grad_clip: float | None, total_steps: int, steps_per_epoch: int, accumulate: int = 1,
                 accumulate_reduction: str = "mean"):
        from her2core.errors import UserError

        if accumulate < 1 or accumulate_reduction not in ("mean", "sum"):
            raise UserError(f"accumulate={accumulate}, reduction {accumulate_reduction!r}: use an accumulate "
                            "of 1 or more and a reduction of 'mean' or 'sum'")
        self.accumulate, self.accumulate_reduction = accumulate, accumulate_reduction
        self.micro = 0
        self.stepping = True
        self.device, self.precision, self.env = device, precision, env
        self.optimizers, self.grad_clip = optimizers, grad_clip
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.step = 0
        self.epoch = 0.0
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.grad_norms: dict[str, float] = {}
        self.nonfinite: list[str] = []

    def begin(self, step: int, micro: int = 0) -> None:
        self.step, self.micro = step, micro
        self.stepping = micro == self.accumulate - 1
        self.epoch = step / max(self.steps_per_epoch, 1)
        if micro == 0:
            self.grad_norms, self.nonfinite = {}, []

    def autocast(self):
        return autocast(self.device, self.precision)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accumulate > 1 and self.accumulate_reduction == "mean":
            loss = loss / self.accumulate
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self, name: str) -> None:
        if not self.stepping:  # an accumulated step: keep adding gradients
            return
        opt = self.optimizers[name]
        params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        if self.env.active:  # every rank reduces the same list, even where a grad is missing
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            average_([p.grad for p in params], self.env)
        params = [p for p in params if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        max_norm = self.grad_clip if self.grad_clip else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.grad_norms[name] = norm
        if not math.isfinite(norm) and self.scaler is None:
            self.nonfinite.append(name)
            opt.zero_grad(set_to_none=True)
            return
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    def end(self) -> None:
        if self.scaler is not None and self.stepping:
            self.scaler.update()
