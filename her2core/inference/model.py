"""The model side of slide inference: a trained run on the best device, as uint8 -> uint8.

Why a wrapper: the slide and batch code want four things from a run and nothing
else — a batch translation at a chosen precision, the microns per pixel the
model was trained at, a fingerprint of its weights (so a resume journal never
mixes outputs of two different models), and a name for the output's metadata.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from her2core.errors import UserError
from her2core.util.device import autocast, resolve_device, resolve_precision


def weights_fingerprint(module) -> str:
    """sha256 over every tensor of the state dict (names, shapes, dtypes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Translator:
    """A framework ready for tiles: `translator(uint8 (N, H, W, 3), seed) -> uint8 (N, H, W, 3)`."""

    framework: Any
    device: Any
    steps: int | None = None
    precision: str = "auto"
    work_mpp: float | None = None
    name: str = "model"
    run_name: str = ""
    fingerprint: str = field(default="", repr=False)

    def __post_init__(self):
        self.tiles_translated = 0  # tiles that went through the network (for reports)
        self.framework = self.framework.to(self.device).eval()
        self.precision = resolve_precision(self.precision, self.device)
        self._autocast = autocast(self.device, self.precision)
        if not self.fingerprint:
            self.fingerprint = weights_fingerprint(self.framework)

    def __call__(self, batch: np.ndarray, seed: int) -> np.ndarray:
        import torch

        from her2core.inference.tiles import translate_batch

        self.tiles_translated += len(batch)
        with torch.inference_mode(), self._autocast:
            return translate_batch(self.framework, batch, steps=self.steps, seed=seed,
                                   device=self.device)

    def describe(self) -> dict:
        return {"model": self.name, "run": self.run_name, "weights_sha256": self.fingerprint,
                "steps": self.steps, "scheduler": getattr(self.framework, "scheduler_name", None),
                "precision": self.precision,
                "inference_mode": getattr(self.framework, "inference_mode", None)}


def load_translator(run, *, device=None, steps: int | None = None, precision: str = "auto",
                    step: int | None = None, scheduler: str | None = None) -> Translator:
    """A Translator from a run folder (EMA weights, eval mode) or an already built framework.

    scheduler: the diffusion sampler (`Framework.use_scheduler`); None keeps the reference's.
    """
    if isinstance(run, Translator):
        if scheduler is not None:
            run.framework.use_scheduler(scheduler)
        return run
    dev = resolve_device(device)
    if isinstance(run, (str, os.PathLike)):
        from her2core.training import load_run
        from her2core.training.runs import read_run, working_mpp

        run_dir = Path(run)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: run folder not found; give the --out folder of `her2 train`")
        framework = load_run(run_dir, device=dev, step=step)
        if scheduler is not None:
            framework.use_scheduler(scheduler)
        return Translator(framework, dev, steps=steps, precision=precision,
                          work_mpp=working_mpp(read_run(run_dir)),
                          name=getattr(framework, "name", type(framework).__name__),
                          run_name=run_dir.resolve().name)
    framework = run
    if scheduler is not None:
        framework.use_scheduler(scheduler)
    return Translator(framework, dev, steps=steps, precision=precision,
                      work_mpp=getattr(framework, "work_mpp", None),
                      name=getattr(framework, "name", type(framework).__name__))
