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
import sys
import time
from pathlib import Path
from typing import Any

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
from her2core.util.progress import Progress, ensure

# TrainConfig fields a resumed run may change without leaving its trajectory's definition.
RESUME_MUTABLE = {"max_steps", "device", "num_workers", "checkpoint_every", "keep_checkpoints", "log_every",
                  "sample_every", "sample_count", "precision"}


class TrainingStopped(UserError):
    """Training gave up (non-finite gradients); the message says where and what to try."""


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
          overrides: dict | None = None, resume: bool = False, progress: Progress | None = None) -> Path:
    """Train `model_name` on the paired tiles under `data_root`; write/continue the run in `out_dir`.

    overrides: framework-config fields to change from the preset (e.g. {"ngf": 32}).
    resume: continue the run in `out_dir` from its latest checkpoint (same trajectory); a run
    killed before its first checkpoint starts again from step 0 (same initial weights).
    progress: told `("train <framework>", step, total)` after each optimiser step (rank 0); a stop
    asked there raises `her2core.util.progress.Cancelled` after that step, checkpoints stay valid.
    Returns `out_dir`.
    """
    from her2core.models import registry
    from her2core.util.outputs import locked

    out = Path(out_dir)
    cls = registry.get(model_name)
    # one writer per run folder: a second `train` into it gets one line (rank 0 holds the lock)
    with locked(out, "her2 train") if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        return _train_locked(cls, data_root, out, preset, train_config, overrides, resume, ensure(progress))


def _train_locked(cls, data_root, out: Path, preset, train_config, overrides, resume, progress: Progress):
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
        return Trainer(framework, preset, tc, Path(data_root), out, env, resume, progress).run()
    finally:
        distributed.teardown(env)


@dataclasses.dataclass
class Trainer:
    """One run of the training loop: the run's state, and one short method per phase.

    `run()` = setup -> resume (or write run.json) -> step per loader item (a micro-batch) ->
    after each optimiser step: report (may raise Cancelled), log, sample, validate, checkpoint ->
    finish. A cancel stops after a step, before that step's log row and checkpoint, so the last
    checkpoint stays the one `--resume` continues from.
    """

    framework: Any
    preset: str
    tc: TrainConfig
    data_root: Path
    out: Path
    env: Any
    resume: bool
    progress: Progress
    # set by setup() / resume_from_checkpoint()
    device: torch.device | None = None
    precision: str = "fp32"
    res: dict = dataclasses.field(default_factory=dict)
    ops: tuple = ()
    train_ds: Any = None
    val_ds: Any = None
    scored: int = 0
    tile_wh: tuple = ()
    total: int = 0
    steps_per_epoch: int = 1
    optimizers: dict = dataclasses.field(default_factory=dict)
    ctx: EngineContext | None = None
    log: MetricsLog | None = None
    selector: _BestSelector | None = None
    start: int = 0
    # the loop's position and the running sums of the current log row
    step: int = 0
    micro: int = 0
    last_saved: int = -1
    skipped_run: int = 0
    sums: dict = dataclasses.field(default_factory=dict)
    count: int = 0
    imgs: int = 0
    t0: float = 0.0

    @property
    def batch_size(self) -> int:
        return int(self.res["batch_size"])

    @property
    def accumulate(self) -> int:
        return int(self.res["accumulate"])

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def run(self) -> Path:
        self.setup()
        if self.resume:
            self.resume_from_checkpoint()
        else:
            self.write_run_json()
        distributed.barrier(self.env)
        self.last_saved = self.start if self.resume else -1
        self.step, self.t0 = self.start, time.perf_counter()
        for batch in self.loader():
            if self.train_step(batch):
                self.after_step()
        self.finish()
        distributed.barrier(self.env)
        return self.out

    def setup(self) -> None:
        """Device, data and resolved recipe; then networks, optimisers, context, log."""
        self.setup_data()
        self.setup_networks()

    def setup_data(self) -> None:
        tc, env, framework = self.tc, self.env, self.framework
        self.device = resolve_device(tc.device, local_rank=env.local_rank)
        self.precision = resolve_precision(tc.precision, self.device)
        if tc.nonfinite not in ("skip", "stop"):
            raise UserError(f"nonfinite={tc.nonfinite!r}: use 'skip' or 'stop'")
        self.res = _resolve(tc, framework)
        if self.batch_size % env.world_size:
            raise UserError(f"batch size {self.batch_size} does not split over {env.world_size} processes; "
                            "use a multiple")
        self.ops = parse_augment(self.res["augment"])
        self.train_ds = _open_split(self.data_root, tc.train_split, tc.include, tc.scores)
        self.scored = _check_scores(framework, self.train_ds, self.data_root)
        self.tile_wh = check_sizes(self.train_ds, self.res["crop"], str(self.data_root), self.res["resize"])
        self.val_ds = _val_dataset(self.data_root, tc, self.train_ds)
        self.steps_per_epoch = max(1, len(self.train_ds) // self.batch_size)
        self.total = (int(tc.max_steps) if tc.max_steps
                      else math.ceil(self.res["epochs"] * self.steps_per_epoch))

    def setup_networks(self) -> None:
        tc, env, framework = self.tc, self.env, self.framework
        framework.to(self.device)
        teacher = getattr(framework.config, "distill_from", None)  # distillation: a trained run
        if teacher:
            from her2core.training.runs import load_run

            framework.attach_teacher(load_run(teacher, device=self.device))
        if env.active and self.device.type == "cuda" and tc.sync_batchnorm:
            for name in list(framework.networks()):
                setattr(framework, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(getattr(framework, name)))
        distributed.broadcast_module(framework, env)
        framework.train()
        self.optimizers = framework.make_optimizers(self.total, self.steps_per_epoch)
        self.ctx = EngineContext(self.device, self.precision, env, {k: v[0] for k, v in self.optimizers.items()},
                                 tc.grad_clip, self.total, self.steps_per_epoch, self.accumulate,
                                 self.res["accumulate_reduction"])
        self.log = MetricsLog(self.out, env.is_main)
        self.selector = _BestSelector(self.ckpt_dir, self.res, self.steps_per_epoch, env) if self.res["select"] else None

    def resume_from_checkpoint(self) -> None:
        """Weights, optimisers, schedulers, scaler and step of the latest checkpoint; the log cut there."""
        weights, record = checkpoint.find(self.ckpt_dir)
        if record.get("framework") != self.framework.name:
            raise UserError(f"{weights}: checkpoint of {record.get('framework')!r}, not {self.framework.name}")
        checkpoint.load_weights(self.framework, weights, self.device)
        checkpoint.load_training_state(weights, record, self.optimizers, self.ctx.scaler, self.device)
        self.start = int(record["step"])
        self.log.truncate(self.start)

    def write_run_json(self) -> None:
        """run.json of a new run (rank 0): what was trained, on what, resolved how."""
        if not self.env.is_main:
            return
        from her2core.util.atomic import write_json
        from her2core.util.configs import to_dict

        framework, res, tc, env = self.framework, self.res, self.tc, self.env
        self.out.mkdir(parents=True, exist_ok=True)
        self.log.truncate(0)  # a run restarted after a kill before its first checkpoint logs afresh
        data_mpp, data_mpp_source = _dataset_mpp(Path(self.data_root))
        write_json(self.out / "run.json", {
            "format": RUN_FORMAT, "framework": framework.name, "family": framework.family, "preset": self.preset,
            "model_config": to_dict(framework.config), "train_config": to_dict(tc),
            "resolved": {"batch_size": self.batch_size, "crop": res["crop"], "resize": res["resize"],
                         "augment": "+".join(self.ops) or "none", "accumulate": self.accumulate,
                         "accumulate_reduction": res["accumulate_reduction"],
                         "effective_batch_size": self.batch_size * self.accumulate, "select": res["select"],
                         "epochs": res["epochs"], "total_steps": self.total,
                         "steps_per_epoch": self.steps_per_epoch,
                         "world_size": env.world_size, "precision": self.precision, "device": str(self.device),
                         "tile_wh": list(self.tile_wh)},
            # the scale the network learnt: inference translates at this µm/px by default
            "working": {"mpp": data_mpp, "mpp_source": data_mpp_source, "tile_wh": list(self.tile_wh)},
            "recipe": framework.resolved_recipe(),
            "data": {"root": str(Path(self.data_root).resolve()), "train_split": tc.train_split,
                     "mpp": data_mpp,
                     "train_pairs": len(self.train_ds), "scored_pairs": self.scored, "include": tc.include,
                     "scores": tc.scores},
            "parameter_counts": framework.parameter_counts(),
            "rng": "torch reseeded before every step from (seed, step, rank); data order and augmentation "
                   "from (seed, run position)",
        })

    def loader(self):
        """One item per micro-batch: micro-step m of the run reads positions m*gb ... (m+1)*gb - 1."""
        dataset = AugmentedPairs(self.train_ds, self.tc.seed, self.ops, self.res["crop"], self.res["resize"])
        return make_loader(dataset, self.start * self.accumulate, self.total * self.accumulate, self.batch_size,
                           self.env.rank, self.env.world_size, self.tc.num_workers,
                           pin=self.device.type == "cuda")

    def train_step(self, batch: dict) -> bool:
        """One micro-batch; True when it completed an optimiser step (then `step` has advanced)."""
        tc, ctx = self.tc, self.ctx
        torch.manual_seed(step_seed(tc.seed, self.step * self.accumulate + self.micro, self.env.rank))
        batch = _to_device(batch, self.device)
        ctx.begin(self.step, self.micro)
        logs = self.framework.training_step(batch, ctx)
        ctx.end()
        for k, v in logs.items():
            self.sums[k] = (self.sums.get(k, 0.0)
                            + torch.as_tensor(v, dtype=torch.float64).detach().cpu() / self.accumulate)
        self.imgs += self.batch_size
        if not ctx.stepping:
            self.micro += 1
            return False
        self.micro = 0
        if ctx.nonfinite:
            self.skipped_run += 1
            msg = (f"{self.out}: non-finite gradient at step {self.step} in {', '.join(ctx.nonfinite)} "
                   f"(losses: {', '.join(f'{k}={float(v):.4g}' for k, v in logs.items())})")
            if tc.nonfinite == "stop" or self.skipped_run >= tc.max_nonfinite:
                raise TrainingStopped(msg + "; training stopped. Lower the learning rate, set --precision fp32 "
                                      "or a grad clip, then --resume from the last checkpoint")
            if self.env.is_main:
                print(msg + "; step skipped", file=sys.stderr)
        else:
            self.skipped_run = 0
        for _opt, sched in self.optimizers.values():
            if sched is not None:
                sched.step()
        for k, v in ctx.grad_norms.items():
            self.sums[f"grad_norm/{k}"] = self.sums.get(f"grad_norm/{k}", 0.0) + torch.tensor(v, dtype=torch.float64)
        self.count += 1
        self.step += 1
        return True

    def after_step(self) -> None:
        """Report the step (a cancel raises here), then log, sample, validate and checkpoint as due."""
        step, tc, total = self.step, self.tc, self.total
        if self.env.is_main:
            self.progress.update(f"train {self.framework.name}", step, total)
        else:
            self.progress.check()
        if step % tc.log_every == 0 or step == total:
            self.log.write(_log_row(self.sums, self.count, self.env, step, self.steps_per_epoch,
                                    self.optimizers, self.imgs, self.t0))
            self.sums, self.count, self.imgs, self.t0 = {}, 0, 0, time.perf_counter()
        if tc.sample_every and step % tc.sample_every == 0 and step != total:
            self.sample()
        if self.selector is not None and self.selector.due(step, total):
            self.validate()
        if step % tc.checkpoint_every == 0 or step == total:
            self.checkpoint()

    def validate(self) -> None:
        """Validation PSNR of the inference weights; a better one is checkpointed and marked best."""
        psnr = self.selector.validate(self.framework, self.val_ds, self.device, self.tc.seed)
        self.log.write({"step": self.step, "val/PSNR": psnr})
        if self.selector.improves(psnr):
            if self.step != self.last_saved:
                self.checkpoint()
            self.selector.mark(self.step, psnr)

    def checkpoint(self) -> None:
        _save(self.framework, self.optimizers, self.ctx, self.ckpt_dir, self.step, self.tc, self.res, self.env,
              self.log, self.preset, self.selector.protected() if self.selector else set())
        self.last_saved = self.step

    def sample(self) -> None:
        from her2core.util.atomic import write_png

        _sample(self.framework, self.val_ds, self.tc, self.out, self.step, self.log, self.env, self.device,
                write_png)

    def finish(self) -> None:
        """The last step checkpointed, a final preview, log.csv."""
        if self.step != self.last_saved and self.step > self.start:
            self.checkpoint()
        if self.step == self.start:  # resumed after the last checkpoint: its final validation is redone
            self.log.forget(self.step, "val/L1")
        self.sample()
        self.log.write_csv()


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
