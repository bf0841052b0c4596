"""`her2 train`: train one framework on a paired tile dataset (any layout `her2core.datasets` reads).

Multi-GPU / multi-node: `torchrun --nproc_per_node N -m her2core train ...` (the global
--batch-size is split across the processes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="framework name (see `her2 models`)")
    p.add_argument("--data", type=Path, default=None, help="dataset folder (HER2match, BCI, A/B or manifest)")
    p.add_argument("--out", type=Path, required=True, help="run folder (new, or existing with --resume)")
    p.add_argument("--preset", type=opt.preset, default="tiny", help="tiny (seconds on a CPU) or paper (reference settings)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--max-steps", type=opt.positive_int, default=None, help="optimisation steps (default: the preset's epochs)")
    p.add_argument("--batch-size", type=opt.positive_int, default=None, help="global batch size (default: the preset's)")
    p.add_argument("--crop", type=opt.int_range(16), default=None, help="random paired crop in pixels (default: the preset's)")
    p.add_argument("--seed", type=opt.seed_int, default=None)
    p.add_argument("--device", type=opt.device, default=None, help=opt.DEVICE_HELP)
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--num-workers", type=opt.int_range(0, 64), default=None, help="data-loading processes per rank")
    p.add_argument("--checkpoint-every", type=opt.positive_int, default=None)
    p.add_argument("--log-every", type=opt.positive_int, default=None)
    p.add_argument("--sample-every", type=opt.non_negative_int, default=None)
    p.add_argument("--include", default=None, help="text file listing the training tiles to use")
    p.add_argument("--scores", default=None,
                   help="CSV with columns name,her2_score (0, 1+, 2+, 3+) giving the tiles' HER2 scores")
    p.add_argument("--accumulate", type=opt.positive_int, default=None,
                   help="micro-batches per optimiser step (default: the preset's; BBDM paper: 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one framework setting of the preset (JSON value), e.g. --set ngf=32")
    p.add_argument("--no-progress", action="store_true")


_FLAGS = {"max_steps": "max_steps", "batch_size": "batch_size", "crop": "crop", "seed": "seed",
          "device": "device", "precision": "precision", "num_workers": "num_workers",
          "checkpoint_every": "checkpoint_every", "log_every": "log_every", "sample_every": "sample_every",
          "include": "include", "scores": "scores", "accumulate": "accumulate"}


def _overrides(items: list[str]) -> dict:
    from her2core.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item}: use KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from contextlib import nullcontext

    from her2core.errors import UserError
    from her2core.training import TrainConfig, read_run, train
    from her2core.util.configs import from_dict
    from her2core.util.progress import tqdm_bars

    given = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    if args.resume:
        if args.set:
            raise UserError("--set cannot change a run being resumed; start a new run")
        stored = from_dict(TrainConfig, read_run(args.out)["train_config"], source=str(args.out / "run.json"))
        tc = dataclasses.replace(stored, **given)
    else:
        if args.data is None:
            raise UserError("--data is required for a new run")
        tc = TrainConfig(**given)
    with nullcontext() if args.no_progress else tqdm_bars("step") as progress:
        out = train(args.model, args.data, args.out, preset=args.preset, train_config=tc,
                    overrides=_overrides(args.set), resume=args.resume, progress=progress)
    print(f"run: {out}")
    return 0
