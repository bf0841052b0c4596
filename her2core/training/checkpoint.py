"""Checkpoints without pickle: tensors in one safetensors file, everything else in JSON.

checkpoints/step_00001000.safetensors
    model.<state_dict key>             every network, EMA shadows and their buffers
    optim.<name>.<param index>.<key>   optimiser state tensors (Adam moments, step counts)
checkpoints/step_00001000.json
    framework, preset, step, positions consumed, optimiser hyper-parameters and non-tensor
    state, scheduler and grad-scaler state, RNG scheme, metrics at that step
checkpoints/latest.json
    {"step": N, "name": "step_0000000N"} — written last, so it always names a complete pair
checkpoints/best.json
    {"step", "name", "val_psnr"} — only for frameworks that select by validation (BCIStainer);
    inference (`load_run`) then uses that checkpoint, resuming still uses latest.json

Every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from her2core.errors import UserError
from her2core.util.atomic import atomic_path, write_json
from her2core.util.safe_io import read_json, require_keys

LATEST = "latest.json"
LATEST_FIX = "resume from an older checkpoint (write its name into latest.json)"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
BEST = "best.json"


def ckpt_name(step: int) -> str:
    return f"step_{step:08d}"


def _split_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    sd = opt.state_dict()
    state_json = {}
    for idx, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{name}.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                entry[k] = v
        state_json[str(idx)] = entry
    return {"state": state_json, "param_groups": sd["param_groups"]}


def _join_optimizer(name: str, meta: dict, tensors: dict, device) -> dict:
    state = {int(i): dict(v) for i, v in meta["state"].items()}
    prefix = f"optim.{name}."
    for key, t in tensors.items():
        if key.startswith(prefix):
            idx, k = key[len(prefix):].split(".", 1)
            st = state.setdefault(int(idx), {})
            st[k] = t if k == "step" else t.to(device)
    return {"state": state, "param_groups": meta["param_groups"]}


def save(ckpt_dir: Path, step: int, framework, optimizers: dict, scaler, meta: dict) -> Path:
    """Write step N's weights + optimiser state; then point latest.json at it."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in framework.state_dict().items()}
    optim_meta, sched_meta = {}, {}
    for name, (opt, sched) in optimizers.items():
        optim_meta[name] = _split_optimizer(name, opt, tensors)
        sched_meta[name] = sched.state_dict() if sched is not None else None
    name = ckpt_name(step)
    with atomic_path(ckpt_dir / f"{name}.safetensors") as tmp:
        # one metadata key: safetensors orders several in a per-process random order, and a
        # resumed run must write the same bytes as an uninterrupted one
        save_file(tensors, str(tmp), metadata={"her2": json.dumps({"framework": framework.name, "step": step},
                                                                  sort_keys=True)})
    record = dict(meta, step=step, framework=framework.name, optimizers=optim_meta, schedulers=sched_meta,
                  scaler=scaler.state_dict() if scaler is not None else None)
    write_json(ckpt_dir / f"{name}.json", record)
    write_json(ckpt_dir / LATEST, {"step": step, "name": name})
    return ckpt_dir / name


def read_best(ckpt_dir: Path) -> dict | None:
    """The best.json record of a run that selects by validation, or None."""
    path = ckpt_dir / BEST
    if not path.is_file():
        return None
    record = read_json(path, "best-checkpoint record", finite=False,
                       fix="delete it to use the latest checkpoint")
    require_keys(record, {"step": int}, str(path), fix="delete it to use the latest checkpoint")
    return record


def write_best(ckpt_dir: Path, record: dict) -> None:
    write_json(ckpt_dir / BEST, record)


def find(ckpt_dir: Path, step: int | None = None) -> tuple[Path, dict]:
    """(weights path, JSON record) of `step` or of the latest checkpoint."""
    if step is None:
        latest = ckpt_dir / LATEST
        if not latest.exists():
            raise UserError(f"{ckpt_dir.parent}: no checkpoint yet (missing {latest.name})")
        fix = f"delete it and {LATEST_FIX}"
        pointer = read_json(latest, "latest-checkpoint pointer", finite=False, fix=fix)
        name = require_keys(pointer, {"name": str}, str(latest), fix=fix)["name"]
        if not _PLAIN_NAME.fullmatch(name) or name.startswith("."):
            raise UserError(f"{latest}: names {name!r}, not a checkpoint of this folder; {fix}")
    else:
        name = ckpt_name(step)
    weights, record = ckpt_dir / f"{name}.safetensors", ckpt_dir / f"{name}.json"
    if not weights.exists() or not record.exists():
        have = sorted(p.stem for p in ckpt_dir.glob("step_*.json"))
        raise UserError(f"{ckpt_dir}: no checkpoint {name}; available: {', '.join(have) or 'none'}")
    meta = read_json(record, "checkpoint record", finite=False,
                     fix="the checkpoint is damaged; delete the pair and resume from an older one")
    return weights, meta


def load_weights(framework, weights: Path, device=None) -> None:

    tensors = read_tensors(weights, device)
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    bad = [k for k, v in model.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{weights}: {len(bad)} of {len(model)} tensors hold NaN/inf (e.g. {bad[0]}); "
                        "the checkpoint is damaged: resume or load an earlier one")
    try:
        missing, unexpected = framework.load_state_dict(model, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: torch lists every one, keep the first
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln),
                     str(exc).splitlines()[0])
        raise UserError(f"{weights}: does not fit {framework.name} with this config ({first[:200]}); "
                        "was it written with other settings or by another version?") from None
    if missing or unexpected:
        raise UserError(f"{weights}: does not fit {framework.name} with this config "
                        f"(missing {len(missing)}, unexpected {len(unexpected)} tensors, e.g. "
                        f"{(missing or unexpected)[0]}); was it written by another version?")


def read_tensors(weights: Path, device=None) -> dict:
    """The tensors of a safetensors file, or one UserError when it is random, truncated or not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights), device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights}: not a readable safetensors checkpoint ({str(exc)[:120]}); the "
                        "file is truncated or damaged: delete the pair, or copy it again") from None


def load_training_state(weights: Path, record: dict, optimizers: dict, scaler, device) -> None:

    tensors = {k: v for k, v in read_tensors(weights).items() if k.startswith("optim.")}
    for name, (opt, sched) in optimizers.items():
        if name not in record["optimizers"]:
            raise UserError(f"{weights}: no state for optimiser '{name}'")
        try:
            opt.load_state_dict(_join_optimizer(name, record["optimizers"][name], tensors, device))
        except ValueError as exc:  # e.g. a diffusion run written with the former own-ADM UNet layout
            raise UserError(f"{weights}: optimiser '{name}' state does not fit this version's network "
                            f"({exc}); its weights still load for translate/evaluate, but training must "
                            "start a new run") from None
        if sched is not None and record["schedulers"].get(name) is not None:
            sched.load_state_dict(record["schedulers"][name])
    if scaler is not None and record.get("scaler"):
        scaler.load_state_dict(record["scaler"])


def prune(ckpt_dir: Path, keep: int, protect: set[str]) -> None:
    """Delete all but the newest `keep` step checkpoints (never those in `protect`)."""
    names = sorted(p.stem for p in ckpt_dir.glob("step_*.json"))
    for name in names[:-keep] if keep > 0 else []:
        if name in protect:
            continue
        for suffix in (".safetensors", ".json"):
            (ckpt_dir / f"{name}{suffix}").unlink(missing_ok=True)
