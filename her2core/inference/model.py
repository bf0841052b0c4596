"""The model side of slide inference: a trained run on the best device, as uint8 -> uint8.

Why a wrapper: the slide and batch code want four things from a run and nothing
else — a batch translation at a chosen precision, the microns per pixel the
model was trained at, a fingerprint of its weights (so a resume journal never
mixes outputs of two different models), and a name for the output's metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from her2core.errors import UserError

#: Keys under which a run's config or its dataset manifest may record the working scale.
_MPP_KEYS = ("work_mpp", "working_mpp", "target_mpp", "tile_mpp", "mpp")


def pick_device(device: Any = None):
    """An explicit device, else CUDA (this rank's under torchrun), else MPS, else CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device, precision: str):
    """Autocast context for 'fp32' | 'bf16' | 'fp16' | 'auto' (bf16 on CUDA that has it, else fp32)."""
    import torch

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise UserError(f"--precision {precision!r}: choose fp32, bf16, fp16 or auto")
    return torch.autocast(device_type=device.type, dtype=dtype), precision


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


def find_working_mpp(run_dir: Path) -> float | None:
    """Microns per pixel the run was trained at, from its config or its dataset's manifest."""
    seen: set[Path] = set()

    def search(obj, depth=0):
        if depth > 6:
            return None
        if isinstance(obj, dict):
            for key in _MPP_KEYS:
                v = obj.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                    return float(v)
            for v in obj.values():
                r = search(v, depth + 1)
                if r is not None:
                    return r
        return None

    def from_file(p: Path):
        if p in seen or not p.is_file():
            return None
        seen.add(p)
        try:
            obj = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        found = search(obj)
        if found is not None:
            return found
        # a dataset named in the config: its dataset.json / manifest records the tiles' mpp
        for key in ("data_root", "data", "dataset", "data_dir"):
            d = obj.get(key) if isinstance(obj, dict) else None
            if isinstance(d, dict):  # run.json: "data": {"root": ...}
                d = d.get("root")
            if not isinstance(d, str):
                continue
            d = Path(d) if Path(d).is_absolute() else (p.parent / d if not Path(d).exists() else Path(d))
            cands = [d] if d.is_file() else [d / n for n in ("dataset.json", "manifest.json",
                                                              "manifest.csv")]
            for cand in cands:
                r = _manifest_csv_mpp(cand) if cand.suffix == ".csv" else from_file(cand)
                if r is not None:
                    return r
        return None

    for name in ("run.json", "config.json", "train_config.json", "dataset.json", "manifest.json"):
        r = from_file(run_dir / name)
        if r is not None:
            return r
    for p in sorted(run_dir.glob("*.json")):
        r = from_file(p)
        if r is not None:
            return r
    return None


def _manifest_csv_mpp(path: Path) -> float | None:
    """The `mpp` column of a tile manifest CSV (first row that has one)."""
    import csv

    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            try:
                v = float(row.get("mpp") or "nan")
            except ValueError:
                continue
            if v > 0:
                return v
    return None


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
        self._autocast, self.precision = autocast_for(self.device, self.precision)
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
    dev = pick_device(device)
    if isinstance(run, (str, os.PathLike)):
        from her2core.training import load_run

        run_dir = Path(run)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: run folder not found; give the --out folder of `her2 train`")
        framework = load_run(run_dir, device=dev, step=step)
        if scheduler is not None:
            framework.use_scheduler(scheduler)
        return Translator(framework, dev, steps=steps, precision=precision,
                          work_mpp=find_working_mpp(run_dir),
                          name=getattr(framework, "name", type(framework).__name__),
                          run_name=run_dir.resolve().name)
    framework = run
    if scheduler is not None:
        framework.use_scheduler(scheduler)
    return Translator(framework, dev, steps=steps, precision=precision,
                      work_mpp=getattr(framework, "work_mpp", None),
                      name=getattr(framework, "name", type(framework).__name__))
