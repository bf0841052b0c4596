"""The small interface every framework implements; the training engine sees only this.

A framework is an `nn.Module` holding its networks. It is built from a typed
config (a dataclass), names its presets (`paper`: reference hyper-parameters,
`tiny`: seconds on a CPU), owns its optimisers, and runs one training step
through a `StepContext` that the engine provides (mixed precision, gradient
all-reduce across ranks, clipping, non-finite guard, grad-norm logging).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

#: The engine setting every recipe table lists (not a framework config field).
PRECISION_NOTE = ("engine --precision, recorded in run.json: auto = bf16 on CUDA, fp32 elsewhere; "
                  "pass the reference's value to match it")


class StepContext(Protocol):
    """What the engine hands a framework for one optimisation step."""

    step: int  # global optimisation step, 0-based
    stepping: bool  # False on the first micro-batches of an accumulated step (optimizer_step then waits)
    accumulate: int  # micro-batches per optimisation step
    total_steps: int
    epoch: float  # fractional epoch (step / steps_per_epoch)
    device: torch.device

    def autocast(self):  # context manager: bf16/fp16 where enabled, else no-op
        ...

    def backward(self, loss: torch.Tensor) -> None:  # scaled backward
        ...

    def optimizer_step(self, name: str) -> None:
        """All-reduce grads of optimiser `name` across ranks, unscale, clip, guard, step, zero."""
        ...


class Framework(nn.Module, abc.ABC):
    """Base class of the six frameworks (see docs/references.md)."""

    name: ClassVar[str]
    family: ClassVar[str]  # "gan" or "dm"
    config_class: ClassVar[type]

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    # -- construction -------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def presets(cls) -> dict[str, Any]:
        """Named configs; must contain 'paper' and 'tiny'."""

    @classmethod
    def preset(cls, name: str) -> Any:
        from her2core.errors import UserError

        presets = cls.presets()
        if name not in presets:
            raise UserError(f"{cls.name}: unknown preset '{name}'; choose one of {', '.join(presets)}")
        return presets[name]

    #: {config field: the value runs had before the field existed}; `build_framework` applies them
    #: to a run.json that lacks any of them, so an older run translates (and resumes) as trained.
    LEGACY: ClassVar[dict[str, Any]] = {}

    @classmethod
    def reference_recipe(cls) -> dict[str, tuple]:
        """{setting: (reference value, source "repo:path:line", note[, our value])} for every field of
        the `paper` config (and behaviours that are not fields, with our value as a 4th element); the
        note says why ours differs ("" when it does not). Printed by `her2 models --recipe`."""
        return dict(getattr(cls, "REFERENCE", {}))

    @abc.abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Named networks, for parameter counts and checkpoints (EMA copies excluded)."""

    def ema_networks(self) -> dict[str, nn.Module]:
        """EMA shadows used for inference, keyed like `networks()`; empty if none."""
        return {}

    def training_defaults(self) -> dict[str, Any]:
        """What the engine uses when TrainConfig leaves a field unset (None).

        Keys: batch_size (global, all ranks, per micro-batch), crop (random paired crop in pixels,
        None = whole tile), resize (whole tile resized to this many pixels first, None = native
        scale), epochs (run length when max_steps is None), augment ('hflip+vflip+rot90',
        'hflip', 'none', ...), accumulate (micro-batches per optimiser step), accumulate_reduction
        ('mean': losses divided by accumulate, 'sum': gradients added as they come), select
        ('val_psnr': keep the EMA/inference weights of the best validation PSNR, checked every
        `validate_every` epochs; None: the last). By default read from config attributes of
        those names.
        """
        keys = ("batch_size", "crop", "resize", "epochs", "augment", "accumulate", "accumulate_reduction",
                "select", "validate_every")
        return {k: getattr(self.config, k, None) for k in keys}

    def needs_scores(self) -> bool:
        """True when training uses the HER2 scores (the engine refuses a dataset without any)."""
        return False

    def resolved_recipe(self) -> dict[str, Any]:
        """Settings resolved at `make_optimizers` (e.g. from the run length), recorded in run.json."""
        return {}

    # -- training -----------------------------------------------------
    @abc.abstractmethod
    def make_optimizers(self, total_steps: int, steps_per_epoch: int) -> dict[str, tuple]:
        """{name: (optimizer, scheduler or None)}; schedulers are stepped once per step."""

    @abc.abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """One step on a batch {'he': (N,3,H,W) in [-1,1], 'ihc': ..., 'her2_score': (N,) long}.

        Returns scalar logs (losses). Must call ctx.backward / ctx.optimizer_step.
        """

    # -- inference ----------------------------------------------------
    @abc.abstractmethod
    @torch.no_grad()
    def translate(self, he: torch.Tensor, *, steps: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """H&E (N,3,H,W) in [-1,1] -> virtual HER2 in [-1,1]; eval mode, EMA weights if any."""

    #: samplers `translate` can use (`her2 translate --scheduler`), the reference's first; () = none
    SCHEDULERS: ClassVar[tuple[str, ...]] = ()

    @property
    def scheduler_name(self) -> str | None:
        """The sampler `translate` uses (recorded with every output); None for one-pass networks."""
        return getattr(self, "_scheduler_name", None) or (self.SCHEDULERS[0] if self.SCHEDULERS else None)

    def use_scheduler(self, name: str | None) -> None:
        """Choose the sampler `translate` uses; None keeps the reference's."""
        if name is None:
            return
        if name not in self.SCHEDULERS:
            from her2core.errors import UserError
            have = ", ".join(self.SCHEDULERS) or "none (it translates in one pass)"
            raise UserError(f"--scheduler {name}: {self.name} samples with {have}")
        self._scheduler_name = name

    def parameter_counts(self) -> dict[str, int]:
        return {k: sum(p.numel() for p in m.parameters() if p.requires_grad)
                for k, m in self.networks().items()}
