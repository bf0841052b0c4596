"""The one training engine for all six frameworks (it imports none of them).

    from her2core.training import train, load_run, TrainConfig
    run = train("pyramid_pix2pix", "data/HER2match", "runs/p2p", preset="tiny",
                train_config=TrainConfig(max_steps=200))
    model = load_run(run)          # eval mode; model.translate(he) uses EMA weights if any

Run-folder layout: see her2core.training.runs; checkpoint format: her2core.training.checkpoint;
data order and augmentation: her2core.training.data; multi-GPU: her2core.training.distributed.
"""

from her2core.training.config import TrainConfig
from her2core.training.engine import TrainingStopped, train
from her2core.training.runs import load_run, read_run
from her2core.util.progress import Cancelled  # what a stopped `train(progress=...)` raises

__all__ = ["Cancelled", "TrainConfig", "TrainingStopped", "load_run", "read_run", "train"]
