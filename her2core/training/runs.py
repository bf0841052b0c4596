"""The run folder: what a training run leaves behind, and reading it back.

    RUN/
      run.json                 framework, preset, model config, train config, resolved settings
                               (batch, crop, steps, world size, precision), data root, parameter counts
      log.jsonl                one JSON object per logged step (losses, lr/<opt>, grad_norm/<opt>,
                               images_per_s, val/L1 at sample steps)
      log.csv                  the same table as CSV (rewritten at each checkpoint and at the end)
      checkpoints/
        step_00000500.safetensors + step_00000500.json   (see her2core.training.checkpoint)
        latest.json            names the newest complete checkpoint
      samples/
        step_00000500.png      rows of H&E | virtual HER2 | real HER2 for the first validation tiles

Only rank 0 writes. `load_run` rebuilds the framework from run.json and a checkpoint, in
eval mode; inference then uses the EMA weights where the framework keeps any.
"""

from __future__ import annotations

from pathlib import Path

import torch

from her2core.errors import UserError
from her2core.util.safe_io import read_json, require_keys

RUN_FORMAT = "her2-run/1"


def read_run(run_dir) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a training run (no run.json); give the --out folder of `her2 train`")
    fix = "the run folder is damaged; train it again or restore run.json"
    run = read_json(path, "run record", finite=False, fix=fix)
    if run.get("format") != RUN_FORMAT:
        raise UserError(f"{path}: not a her2 training run (format {run.get('format')!r})")
    require_keys(run, {"framework": str, "model_config": dict}, str(path), fix=fix)
    if not isinstance(run.get("train_config", {}), dict):
        require_keys(run, {"train_config": dict}, str(path), fix=fix)
    return run


def working_mpp(run: dict) -> float | None:
    """Microns per pixel the run's network learnt at (run.json `working`, or `data` in runs written
    before it); None when its dataset recorded none."""
    for section in ("working", "data"):
        v = (run.get(section) or {}).get("mpp")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
    return None


def run_fingerprint(run_dir) -> str:
    """sha256 over run.json and the checkpoint `load_run` would use: recorded beside outputs so a
    rerun with another run (or the same run trained further) is told apart from a resume."""
    import hashlib

    from her2core.training import checkpoint
    from her2core.util.hashing import sha256_file

    run_dir = Path(run_dir)
    read_run(run_dir)
    best = checkpoint.read_best(run_dir / "checkpoints")
    weights, _ = checkpoint.find(run_dir / "checkpoints", best["step"] if best else None)
    both = sha256_file(run_dir / "run.json") + sha256_file(weights)
    return hashlib.sha256(both.encode()).hexdigest()


def build_framework(run: dict, source: str):
    from her2core.models import registry
    from her2core.util.configs import from_dict

    cls = registry.get(run["framework"])
    stored = dict(run["model_config"])
    if any(key not in stored for key in cls.LEGACY):  # written before those fields: keep its behaviour
        stored.update(cls.LEGACY)
    return cls(from_dict(cls.config_class, stored, source=source))


def load_run(run_dir, device=None, step: int | None = None, model_name: str | None = None):
    """The framework of RUN with the weights of `step` (default: the best-validation checkpoint of a
    run that selects one, else the latest), eval mode, on `device`."""
    from her2core.models import registry
    from her2core.training import checkpoint

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if model_name is not None:
        want = registry.get(model_name).name
        if want != run["framework"]:
            raise UserError(f"{run_dir}: is a {run['framework']} run, not {want}")
    best = checkpoint.read_best(run_dir / "checkpoints") if step is None else None
    weights, record = checkpoint.find(run_dir / "checkpoints", best["step"] if best else step)
    if record.get("framework") != run["framework"]:
        raise UserError(f"{weights}: checkpoint of framework {record.get('framework')!r} in a "
                        f"{run['framework']} run; the run folder is mixed up")
    device = torch.device(device) if device is not None else torch.device("cpu")
    framework = build_framework(run, str(run_dir / "run.json"))
    checkpoint.load_weights(framework, weights)
    framework.to(device).eval()
    framework.run_info = {"run_dir": str(run_dir), "step": record["step"], "framework": run["framework"],
                          "preset": run.get("preset"), "selected": "val_psnr" if best else "latest"}
    return framework


def combine_ddib_runs(he_run, ihc_run, device=None):
    """One DDIB translating H&E -> HER2 from two single-stain DDIB runs (models.ddib.DDIB.combine)."""
    from her2core.models.ddib import DDIB

    return DDIB.combine(load_run(he_run, device=device), load_run(ihc_run, device=device),
                        sources=(str(he_run), str(ihc_run)))
