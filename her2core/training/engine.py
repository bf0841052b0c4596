"""The training loop shared by every framework: `train()` (see runs.py for the folder it writes).

Trajectory = f(seed, step): the data order and augmentation are pure functions of the run
position (data.py) and the torch RNG is reseeded from (seed, step, rank) before every step,
so a run resumed from a checkpoint (weights, optimiser, scheduler, scaler, step) follows the
uninterrupted run exactly. `torchrun --nproc_per_node N -m her2core train ...` trains on N
processes; the global batch is split between them and gradients are averaged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from her2core.errors import UserError
from her2core.training import checkpoint, distributed
from her2core.training.config import TrainConfig
from her2core.training.context import EngineContext
from her2core.training.data import AugmentedPairs, check_sizes, make_loader, parse_augment
from her2core.training.metrics_log import MetricsLog
from her2core.training.runs import RUN_FORMAT, build_framework, read_run
from her2core.util.device import resolve_device, resolve_precision

# TrainConfig fields a resumed run may change without leaving its trajectory's definition.
RESUME_MUTABLE = {"max_steps", "device", "num_workers", "checkpoint_every", "keep_checkpoints", "log_every",
                  "sample_every", "sample_count", "precision"}


class TrainingStopped(UserError):
    """Training gave up (non-finite gradients); the message says where and what to try."""


class Cancelled(KeyboardInterrupt):
    """The cancel callback asked to stop; the last checkpoint stays valid for --resume."""


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.default_rng([seed, 3, step + 1, rank]).integers(2 ** 62))  # step -1: init


def _framework_config(cls, preset: str, overrides: dict | None):
    from her2core.util.configs import from_dict, to_dict

    if overrides and any("." in k for k in overrides):  # nested, e.g. unet.gradient_checkpointing=true
        from her2core.models.importing import framework_config

        return framework_config(cls, preset, overrides)
    cfg = cls.preset(preset)
    if overrides:
        data = to_dict(cfg)
        unknown = sorted(set(overrides) - set(data))
        if unknown:
            raise UserError(f"{cls.name}: unknown setting(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(data))}")
        data.update(overrides)
        cfg = from_dict(cls.config_class, data, source=f"{cls.name} overrides")
    return cfg


def _open_split(data_root, split, include=None, scores=None):
    from her2core.datasets import open_paired

    return open_paired(data_root, split, include=include, scores=scores)


def _val_dataset(data_root, tc: TrainConfig, train_ds):
    for split in (tc.val_split, "test"):
        try:
            return _open_split(data_root, split, scores=tc.scores)
        except UserError:
            continue
    return train_ds


def _resolve(tc: TrainConfig, framework) -> dict:
    d = framework.training_defaults()
    return {"batch_size": tc.batch_size or d.get("batch_size") or 1,
            "crop": tc.crop if tc.crop is not None else d.get("crop"),
            "resize": d.get("resize"),
            "augment": tc.augment if tc.augment is not None else (d.get("augment") or "hflip+vflip+rot90"),
            "epochs": d.get("epochs") or 1,
            "accumulate": int(tc.accumulate or d.get("accumulate") or 1),
            "accumulate_reduction": d.get("accumulate_reduction") or "mean",
            "select": d.get("select"),
            "validate_every": d.get("validate_every") or 1}


def _check_scores(framework, train_ds, data_root) -> int:
    """How many training pairs carry a HER2 score; a UserError when the framework needs them and none do."""
    known = sum(1 for s in train_ds.scores if s >= 0)
    if framework.needs_scores() and known == 0:
        raise UserError(f"{data_root}: {framework.name} trains its HER2 classifier and comparator on the tiles' "
                        f"HER2 scores, but none of the {len(train_ds)} training pairs has one; add a her2_score "
                        "column (0, 1+, 2+, 3+) to manifest.csv, use BCI file names (NNNNN_train_2+.png), "
                        "or pass --scores FILE.csv with columns name,her2_score")
    return known


def _prepare_out(out: Path, resume: bool) -> None:
    if resume:
        return
    # hidden entries are a killed writer's temporaries (.run.<random>.part.json), not a run
    if out.exists() and (not out.is_dir() or any(not p.name.startswith(".") for p in out.iterdir())):
        raise UserError(f"{out}: exists and is not empty; use --resume to continue that run or choose a new --out")


def _check_resume_config(stored: TrainConfig, given: TrainConfig | None, out: Path) -> TrainConfig:
    if given is None:
        return stored
    changes = {}
    for f in dataclasses.fields(TrainConfig):
        a, b = getattr(stored, f.name), getattr(given, f.name)
        if a != b:
            if f.name not in RESUME_MUTABLE:
                raise UserError(f"{out}: was trained with {f.name}={a!r}, resume asked for {b!r}; drop the option "
                                f"or start a new run")
            changes[f.name] = b
    return dataclasses.replace(stored, **changes)


def _dataset_mpp(root: Path) -> tuple[float | None, str | None]:
    """(microns per pixel of the tiles, where it was read): the dataset's dataset.json, or the
    `mpp` column of manifest.csv for datasets made before dataset.json existed."""
    import csv

    from her2core.util.dataset_meta import NAME, read_dataset_meta

    meta = read_dataset_meta(root)
    if meta is not None:
        return float(meta["mpp"]), NAME
    try:
        with (root / "manifest.csv").open(newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                if row.get("mpp"):
                    return float(row["mpp"]), "manifest.csv"
    except (OSError, ValueError):
        pass
    return None, None


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def train(model_name: str, data_root, out_dir, *, preset: str = "tiny", train_config: TrainConfig | None = None,
          overrides: dict | None = None, resume: bool = False, progress: bool = True,
          cancel: Callable[[int], bool] | None = None) -> Path:
    """Train `model_name` on the paired tiles under `data_root`; write/continue the run in `out_dir`.

    overrides: framework-config fields to change from the preset (e.g. {"ngf": 32}).
    resume: continue the run in `out_dir` from its latest checkpoint (same trajectory); a run
    killed before its first checkpoint starts again from step 0 (same initial weights).
    cancel(step) -> True stops after that step (raises Cancelled); checkpoints stay valid.
    Returns `out_dir`.
    """
    from her2core.models import registry
    from her2core.util.outputs import locked

    out = Path(out_dir)
    cls = registry.get(model_name)
    # one writer per run folder: a second `train` into it gets one line (rank 0 holds the lock)
    with locked(out, "her2 train") if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        return _train_locked(cls, data_root, out, preset, train_config, overrides, resume, progress, cancel)


def _train_locked(cls, data_root, out: Path, preset, train_config, overrides, resume, progress, cancel):
    from her2core.util.configs import from_dict

    _prepare_out(out, resume)
    restart = resume and not (out / "checkpoints" / checkpoint.LATEST).exists()
    if resume:
        run = read_run(out)
        if run["framework"] != cls.name:
            raise UserError(f"{out}: is a {run['framework']} run; resume it with --model {run['framework']}")
        tc = _check_resume_config(from_dict(TrainConfig, run["train_config"], source=str(out / "run.json")),
                                  train_config, out)
        if restart:  # killed before its first checkpoint: start it again, same initial weights
            torch.manual_seed(step_seed(tc.seed, -1, 0))
        framework = build_framework(run, str(out / "run.json"))
        preset = run["preset"]
        data_root = data_root or run["data"]["root"]
        resume = not restart
    else:
        tc = train_config or TrainConfig()
        torch.manual_seed(step_seed(tc.seed, -1, 0))  # initial weights depend on the seed only
        framework = cls(_framework_config(cls, preset, overrides))
    if data_root is None:
        raise UserError("no dataset given; pass --data DATASET")

    want_cuda = tc.device.startswith("cuda") or (tc.device == "auto" and torch.cuda.is_available())
    env = distributed.setup("cuda" if want_cuda else "cpu")
    try:
        return _run(framework, cls, preset, tc, Path(data_root), out, env, resume, progress, cancel)
    finally:
        distributed.teardown(env)


def _run(framework, cls, preset, tc, data_root, out, env, resume, progress, cancel) -> Path:
    from her2core.util.atomic import write_json, write_png
    from her2core.util.configs import to_dict

    device = resolve_device(tc.device, local_rank=env.local_rank)
    precision = resolve_precision(tc.precision, device)
    if tc.nonfinite not in ("skip", "stop"):
        raise UserError(f"nonfinite={tc.nonfinite!r}: use 'skip' or 'stop'")
    res = _resolve(tc, framework)
    gb = int(res["batch_size"])
    if gb % env.world_size:
        raise UserError(f"batch size {gb} does not split over {env.world_size} processes; use a multiple")
    ops = parse_augment(res["augment"])
    train_ds = _open_split(data_root, tc.train_split, tc.include, tc.scores)
    scored = _check_scores(framework, train_ds, data_root)
    tile_wh = check_sizes(train_ds, res["crop"], str(data_root), res["resize"])
    val_ds = _val_dataset(data_root, tc, train_ds)
    accumulate = res["accumulate"]
    steps_per_epoch = max(1, len(train_ds) // gb)
    total = int(tc.max_steps) if tc.max_steps else math.ceil(res["epochs"] * steps_per_epoch)

    framework.to(device)
    teacher = getattr(framework.config, "distill_from", None)  # distillation: a trained run
    if teacher:
        from her2core.training.runs import load_run

        framework.attach_teacher(load_run(teacher, device=device))
    if env.active and device.type == "cuda" and tc.sync_batchnorm:
        for name in list(framework.networks()):
            setattr(framework, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(getattr(framework, name)))
    distributed.broadcast_module(framework, env)
    framework.train()
    optimizers = framework.make_optimizers(total, steps_per_epoch)
    ctx = EngineContext(device, precision, env, {k: v[0] for k, v in optimizers.items()}, tc.grad_clip,
                        total, steps_per_epoch, accumulate, res["accumulate_reduction"])
    ckpt_dir = out / "checkpoints"
    log = MetricsLog(out, env.is_main)

    start = 0
    if resume:
        weights, record = checkpoint.find(ckpt_dir)
        if record.get("framework") != framework.name:
            raise UserError(f"{weights}: checkpoint of {record.get('framework')!r}, not {framework.name}")
        checkpoint.load_weights(framework, weights, device)
        checkpoint.load_training_state(weights, record, optimizers, ctx.scaler, device)
        start = int(record["step"])
        log.truncate(start)
    elif env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        log.truncate(0)  # a run restarted after a kill before its first checkpoint logs afresh
        data_mpp, data_mpp_source = _dataset_mpp(Path(data_root))
        write_json(out / "run.json", {
            "format": RUN_FORMAT, "framework": framework.name, "family": framework.family, "preset": preset,
            "model_config": to_dict(framework.config), "train_config": to_dict(tc),
            "resolved": {"batch_size": gb, "crop": res["crop"], "resize": res["resize"],
                         "augment": "+".join(ops) or "none", "accumulate": accumulate,
                         "accumulate_reduction": res["accumulate_reduction"],
                         "effective_batch_size": gb * accumulate, "select": res["select"],
                         "epochs": res["epochs"], "total_steps": total, "steps_per_epoch": steps_per_epoch,
                         "world_size": env.world_size, "precision": precision, "device": str(device),
                         "tile_wh": list(tile_wh)},
            # the scale the network learnt: inference translates at this µm/px by default
            "working": {"mpp": data_mpp, "mpp_source": data_mpp_source, "tile_wh": list(tile_wh)},
            "recipe": framework.resolved_recipe(),
            "data": {"root": str(Path(data_root).resolve()), "train_split": tc.train_split,
                     "mpp": data_mpp,
                     "train_pairs": len(train_ds), "scored_pairs": scored, "include": tc.include,
                     "scores": tc.scores},
            "parameter_counts": framework.parameter_counts(),
            "rng": "torch reseeded before every step from (seed, step, rank); data order and augmentation "
                   "from (seed, run position)",
        })
    distributed.barrier(env)

    dataset = AugmentedPairs(train_ds, tc.seed, ops, res["crop"], res["resize"])
    # one loader item per micro-batch: micro-step m of the run reads positions m*gb ... (m+1)*gb - 1
    loader = make_loader(dataset, start * accumulate, total * accumulate, gb, env.rank, env.world_size,
                         tc.num_workers, pin=device.type == "cuda")
    selector = _BestSelector(ckpt_dir, res, steps_per_epoch, env) if res["select"] else None
    bar = None
    if progress and env.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=f"train {framework.name}", unit="step", dynamic_ncols=True)

    sums: dict[str, torch.Tensor] = {}
    count, skipped_run, t0, imgs = 0, 0, time.perf_counter(), 0
    last_saved = start if resume else -1
    step = start
    micro = 0
    try:
        for batch in loader:
            torch.manual_seed(step_seed(tc.seed, step * accumulate + micro, env.rank))
            batch = _to_device(batch, device)
            ctx.begin(step, micro)
            logs = framework.training_step(batch, ctx)
            ctx.end()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64).detach().cpu() / accumulate
            imgs += gb
            if not ctx.stepping:
                micro += 1
                continue
            micro = 0
            if ctx.nonfinite:
                skipped_run += 1
                msg = (f"{out}: non-finite gradient at step {step} in {', '.join(ctx.nonfinite)} "
                       f"(losses: {', '.join(f'{k}={float(v):.4g}' for k, v in logs.items())})")
                if tc.nonfinite == "stop" or skipped_run >= tc.max_nonfinite:
                    raise TrainingStopped(msg + "; training stopped. Lower the learning rate, set --precision fp32 "
                                          "or a grad clip, then --resume from the last checkpoint")
                if bar is not None:
                    bar.write(msg + "; step skipped")
            else:
                skipped_run = 0
            for opt_sched in optimizers.values():
                if opt_sched[1] is not None:
                    opt_sched[1].step()
            for k, v in ctx.grad_norms.items():
                sums[f"grad_norm/{k}"] = sums.get(f"grad_norm/{k}", 0.0) + torch.tensor(v, dtype=torch.float64)
            count += 1
            step += 1
            if cancel is not None and cancel(step):
                raise Cancelled(f"cancelled after step {step}")
            if step % tc.log_every == 0 or step == total:
                row = _log_row(sums, count, env, step, steps_per_epoch, optimizers, imgs, t0)
                log.write(row)
                if bar is not None:
                    bar.set_postfix({k: f"{row[k]:.3g}" for k in list(logs)[:4] if k in row})
                sums, count, imgs, t0 = {}, 0, 0, time.perf_counter()
            if tc.sample_every and step % tc.sample_every == 0 and step != total:
                _sample(framework, val_ds, tc, out, step, log, env, device, write_png)
            if selector is not None and selector.due(step, total):
                psnr = selector.validate(framework, val_ds, device, tc.seed)
                log.write({"step": step, "val/PSNR": psnr})
                if selector.improves(psnr):
                    if step != last_saved:
                        _save(framework, optimizers, ctx, ckpt_dir, step, tc, res, env, log, preset,
                              selector.protected())
                        last_saved = step
                    selector.mark(step, psnr)
            if step % tc.checkpoint_every == 0 or step == total:
                _save(framework, optimizers, ctx, ckpt_dir, step, tc, res, env, log, preset,
                      selector.protected() if selector else set())
                last_saved = step
            if bar is not None:
                bar.update(1)
        if step != last_saved and step > start:
            _save(framework, optimizers, ctx, ckpt_dir, step, tc, res, env, log, preset,
                  selector.protected() if selector else set())
        if step == start:  # resumed after the last checkpoint: its final validation is redone
            log.forget(step, "val/L1")
        _sample(framework, val_ds, tc, out, step, log, env, device, write_png)
        log.write_csv()
    finally:
        if bar is not None:
            bar.close()
    distributed.barrier(env)
    return out


def _log_row(sums, count, env, step, steps_per_epoch, optimizers, imgs, t0) -> dict:
    keys = sorted(sums)
    vals = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64) for k in keys]) / max(count, 1)
    if env.active:
        import torch.distributed as dist

        vals = vals.float()
        dist.all_reduce(vals)
        vals = vals.double() / env.world_size
    row = {k: float(v) for k, v in zip(keys, vals)}
    row.update(step=step, epoch=step / steps_per_epoch,
               images_per_s=imgs / max(time.perf_counter() - t0, 1e-9))
    for name, (opt, _s) in optimizers.items():
        row[f"lr/{name}"] = opt.param_groups[0]["lr"]
    return row


def _save(framework, optimizers, ctx, ckpt_dir, step, tc, res, env, log, preset, protect=frozenset()) -> None:
    if env.is_main:
        meta = {"preset": preset, "positions": step * int(res["batch_size"]) * int(res["accumulate"]),
                "seed": tc.seed, "world_size": env.world_size}
        checkpoint.save(ckpt_dir, step, framework, optimizers, ctx.scaler, meta)
        checkpoint.prune(ckpt_dir, tc.keep_checkpoints, protect={checkpoint.ckpt_name(step), *protect})
        log.write_csv()
    distributed.barrier(env)


class _BestSelector:
    """Keeps the checkpoint whose inference weights have the best validation PSNR (BCIStainer upstream:
    the EMA generator of the best epoch, libs/train_basic/trainer.py:24-36).

    PSNR as upstream's EvalMetrics: per image on [0, 255] (predictions not rounded), averaged over
    the validation tiles; checked every `validate_every` epochs and at the end. The chosen step is
    written to checkpoints/best.json; `load_run` then uses it.
    """

    def __init__(self, ckpt_dir: Path, res: dict, steps_per_epoch: int, env):
        if res["select"] != "val_psnr":
            raise UserError(f"select={res['select']!r}: the only selection is 'val_psnr'")
        self.ckpt_dir, self.env = ckpt_dir, env
        self.every = max(1, round(float(res["validate_every"]) * steps_per_epoch))
        self.best = checkpoint.read_best(ckpt_dir)

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    @torch.no_grad()
    def validate(self, framework, val_ds, device, seed: int) -> float:
        values = []
        gen = torch.Generator(device=device).manual_seed(seed)
        for i in range(len(val_ds)):
            item = val_ds[i]
            fake = framework.translate(item["he"][None].to(device), generator=gen).float()
            mse = ((fake - item["ihc"][None].to(device)) * 127.5).pow(2).mean()
            values.append(float(10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))))
        framework.train()
        value = float(np.mean(values)) if values else float("nan")
        if self.env.active:
            import torch.distributed as dist

            t = torch.tensor([value], device=device)
            dist.broadcast(t, 0)
            value = float(t)
        return value

    def improves(self, psnr: float) -> bool:
        return math.isfinite(psnr) and (self.best is None or psnr > self.best["val_psnr"])

    def mark(self, step: int, psnr: float) -> None:
        self.best = {"step": step, "name": checkpoint.ckpt_name(step), "val_psnr": psnr}
        if self.env.is_main:
            checkpoint.write_best(self.ckpt_dir, self.best)

    def protected(self) -> set[str]:
        return {self.best["name"]} if self.best else set()


def _sample(framework, val_ds, tc, out, step, log, env, device, write_png) -> None:
    """Translate the first validation tiles; write a preview grid and log their L1 (0–255)."""
    if not env.is_main or tc.sample_count <= 0 or val_ds is None or len(val_ds) == 0:
        return
    items = [val_ds[i] for i in range(min(tc.sample_count, len(val_ds)))]
    he = torch.stack([it["he"] for it in items]).to(device)
    ihc = torch.stack([it["ihc"] for it in items]).to(device)
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    fake = framework.translate(he, generator=gen)
    framework.train()

    def u8(x):
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    h, f, r = u8(he), u8(fake), u8(ihc)
    l1 = float(np.abs(f.astype(np.int16) - r.astype(np.int16)).mean())
    grid = np.concatenate([np.concatenate([a, b, c], axis=1) for a, b, c in zip(h, f, r)], axis=0)
    write_png(out / "samples" / f"step_{step:08d}.png", grid)
    log.write({"step": step, "val/L1": l1, "val/tiles": len(items)})
