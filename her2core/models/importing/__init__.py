"""`her2 import`: a checkpoint written by one of the six reference repositories -> a her2 run folder.

    from her2core.training.import_run import import_checkpoint
    import_checkpoint("bbdm", ["last_model.pth"], "runs/bbdm_ref")       # paper preset settings
    import_checkpoint("ddib", ["ema_he.pt", "ema_ihc.pt"], "runs/ddib_ref")

One module per framework says what the reference code saves and how its names map onto
ours (`plan(objects, paths, config) -> Plan`); `core` reads, renames and checks, and
`convert_checkpoints` (here) gives the framework's state dict. `training.import_run` writes
the run folder exactly as training does, so `translate`, `evaluate`, `batch`, napari and
QuPath use it like any other run.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from her2core.errors import UserError
from her2core.models.importing.core import convert, load_reference

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
