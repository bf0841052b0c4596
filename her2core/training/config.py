"""TrainConfig: the engine's settings (the framework's own settings live in its config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """One training run. `None` means "the framework's default" (see Framework.training_defaults)."""

    max_steps: int | None = None        # None: framework epochs × steps per epoch
    batch_size: int | None = None       # global batch (all ranks together) of one micro-batch
    accumulate: int | None = None       # micro-batches per optimiser step; None: framework default (1)
    crop: int | None = None             # random paired crop (px); None: framework default / whole tile
    augment: str | None = None          # 'hflip+vflip+rot90', 'hflip', 'none'; None: framework default
    num_workers: int = 0                # DataLoader workers per rank
    seed: int = 0
    precision: str = "auto"             # fp32 | bf16 | fp16 | auto (bf16 on CUDA that has it, else fp32)
    device: str = "auto"                # auto | cpu | cuda | cuda:N | mps
    checkpoint_every: int = 500         # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2           # newest step checkpoints kept (the final one always stays)
    log_every: int = 10
    sample_every: int = 0               # steps between validation samples (0: only at the end)
    sample_count: int = 4
    grad_clip: float | None = None      # max global grad norm per optimiser; None: no clipping
    nonfinite: str = "skip"             # skip | stop: what a non-finite gradient does
    max_nonfinite: int = 20             # consecutive skipped steps before giving up
    train_split: str = "train"
    val_split: str = "val"              # falls back to 'test', then to the training split
    include: str | None = None          # include-list file selecting training tiles (e.g. BCI-clean)
    scores: str | None = None           # CSV (name, her2_score) overriding the dataset's HER2 scores
    sync_batchnorm: bool = True         # SyncBatchNorm across CUDA ranks (CPU/gloo keeps per-rank BN)
