"""`her2 import`: a checkpoint written by one of the six reference repositories -> a her2 run folder.

    from her2core.models.importing import import_checkpoint
    import_checkpoint("bbdm", ["last_model.pth"], "runs/bbdm_ref")       # paper preset settings
    import_checkpoint("ddib", ["ema_he.pt", "ema_ihc.pt"], "runs/ddib_ref")

One module per framework says what the reference code saves and how its names map onto
ours (`plan(objects, paths, config) -> Plan`); `core` reads, renames, checks and
`write` (here) writes the run folder exactly as training does, so `translate`,
`evaluate`, `batch`, napari and QuPath use it like any other run.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from her2core.errors import UserError
from her2core.models.importing.core import convert, load_reference
from her2core.util.hashing import sha256_file

#: framework name -> importer module (her2core.models.importing.<module>)
IMPORTERS: dict[str, str] = {
    "pyramid_pix2pix": "pix2pix",
    "asp": "asp",
    "bcistainer": "bcistainer",
    "bbdm": "bbdm",
    "ddib": "ddib",
    "consistency": "consistency",
}


def importer(name: str):
    from her2core.models import registry

    cls = registry.get(name)
    return cls, importlib.import_module(f"her2core.models.importing.{IMPORTERS[cls.name]}")


def framework_config(cls, preset: str, overrides: dict | None):
    """The preset's config with `overrides` applied; keys may be dotted ('unet.model_channels')."""
    from her2core.util.configs import from_dict, to_dict

    data = to_dict(cls.preset(preset))
    for key, value in (overrides or {}).items():
        node, parts = data, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                raise UserError(f"{cls.name}: unknown setting '{'.'.join(parts[:i + 1])}'; known: {known}")
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return from_dict(cls.config_class, data, source=f"{cls.name} settings")


def convert_checkpoints(name: str, checkpoints, *, preset: str = "paper", overrides: dict | None = None):
    """(framework class, config, our state dict {key: tensor}, plan) for the reference files."""
    cls, mod = importer(name)
    paths = [Path(p) for p in checkpoints]
    if len(paths) != len(mod.FILES):
        raise UserError(f"{cls.name}: give {len(mod.FILES)} checkpoint file(s) ({', '.join(mod.FILES)}), "
                        f"got {len(paths)}")
    cfg = framework_config(cls, preset, overrides)
    with torch.device("meta"):
        skeleton = cls(cfg)
    ours = skeleton.state_dict()
    plan = mod.plan([load_reference(p) for p in paths], paths, cfg)
    state: dict[str, torch.Tensor] = {}
    for part in plan.parts:
        target = part.target(ours)
        if not target:
            raise AssertionError(f"{cls.name} importer: no tensors under '{part.prefix}'")
        converted = convert(part.tensors, target, part.rules, source=part.label, hint=mod.HINT)
        for k, v in part.land(converted).items():
            state[part.prefix + k] = v
        part.tensors = {}  # free the reference copy early (paper diffusion nets are GBs)
    return cls, cfg, state, plan, skeleton


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
        "parameter_counts": skeleton.parameter_counts(),
        "imported": imported,
    })
    checkpoint.save(ckpt_dir, 0, framework, {}, None,
                    {"preset": preset, "positions": 0, "imported_from": [s["file"] for s in sources]})
    return out
