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

import contextlib
import math

import torch

from her2core.training.distributed import DistEnv, average_


def resolve_device(spec: str, env: DistEnv) -> torch.device:
    from her2core.errors import UserError

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", env.local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available here; use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", env.local_rank)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {spec}: MPS is not available here; use --device cpu or auto")
    return dev


def resolve_precision(spec: str, device: torch.device) -> str:
    from her2core.errors import UserError

    if spec not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"--precision {spec}: use fp32, bf16, fp16 or auto")
    if spec == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if spec == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return spec


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
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

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
