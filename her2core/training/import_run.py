"""`her2 import`'s run folder: reference weights (converted by `models.importing`) written as a
her2 training run (run.json + a step-0 safetensors checkpoint), exactly as training writes one."""

from __future__ import annotations

from pathlib import Path

import torch

from her2core.errors import UserError
from her2core.models.importing import convert_checkpoints
from her2core.util.hashing import sha256_file


class _StateOnly:
    """What checkpoint.save needs of a framework when the checkpoint filled every tensor."""

    def __init__(self, name: str, state: dict):
        self.name, self._state = name, state

    def state_dict(self):
        return self._state


def import_checkpoint(name: str, checkpoints, out, *, preset: str = "paper", overrides: dict | None = None,
                      mpp: float | None = None, overwrite: bool = False) -> Path:
    """Write run folder `out` holding the reference weights in `checkpoints`; returns `out`."""
    from her2core.training import checkpoint
    from her2core.training.config import TrainConfig
    from her2core.training.runs import RUN_FORMAT
    from her2core.util.atomic import write_json
    from her2core.util.configs import to_dict

    out = Path(out)
    if (out / "run.json").exists() and not overwrite:
        raise UserError(f"{out}: already holds a run; choose a new --out or pass --overwrite")
    if mpp is not None and not mpp > 0:
        raise UserError(f"--mpp {mpp}: give the microns per pixel the checkpoint was trained at (> 0)")
    paths = [Path(p) for p in checkpoints]
    cls, cfg, state, plan, skeleton = convert_checkpoints(name, paths, preset=preset, overrides=overrides)
    ours = skeleton.state_dict()
    not_filled = sorted({k.split(".")[0] for k in ours if k not in state})
    if not_filled:  # networks the reference file does not hold (e.g. a discriminator): initialised
        torch.manual_seed(0)
        framework = cls(cfg)
        _missing, unexpected = framework.load_state_dict(state, strict=False)
        assert not unexpected, unexpected
    else:
        framework = _StateOnly(cls.name, state)
    sources = [{"file": str(p.resolve()), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in paths]
    imported = {"sources": sources,
                "parts": [{"from": part.label,
                           "to": part.prefix.rstrip(".") or ", ".join(s.rstrip(".") for s in part.scope or ())}
                          for part in plan.parts],
                "initialised_not_imported": not_filled, "notes": plan.notes,
                "reference_settings": f"preset {preset!r}" + (f" with {overrides}" if overrides else "")}
    ckpt_dir = out / "checkpoints"
    if overwrite and ckpt_dir.exists():
        for p in ckpt_dir.glob("step_*"):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    # run.json first, as training writes it; the checkpoint (and latest.json) after it
    write_json(out / "run.json", {
        "format": RUN_FORMAT, "framework": cls.name, "family": cls.family, "preset": preset,
        "model_config": to_dict(cfg), "train_config": to_dict(TrainConfig()),
        "resolved": {"total_steps": 0, "precision": "fp32", "device": "cpu"},
        "data": {"root": None, "mpp": mpp},
        "working": {"mpp": mpp, "mpp_source": "her2 import --mpp" if mpp else None},
        "parameter_counts": skeleton.parameter_counts(),
        "imported": imported,
    })
    checkpoint.save(ckpt_dir, 0, framework, {}, None,
                    {"preset": preset, "positions": 0, "imported_from": [s["file"] for s in sources]})
    return out
