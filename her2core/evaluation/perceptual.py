"""LPIPS (AlexNet, v0.1) with ImageNet backbone weights from a local file only.

WHY so careful: offline, `lpips.LPIPS(net='alex')` cannot download the torchvision
AlexNet weights, and `pnet_rand=True` silently gives a *random* backbone whose
numbers look plausible but mean nothing. Here the backbone comes from
`alexnet-owt-7be5be79.pth` (torchvision's file) found at, in order:
the path the user gives (`--lpips-weights`), $HER2_LPIPS_WEIGHTS, or
`torch.hub.get_dir()/checkpoints/` (`her2core.models.lpips_backbone` builds it). When none exists the LPIPS column is left out
and `lpips_missing_message()` says which file is missing and how to provide it.
The linear heads (v0.1) ship inside the `lpips` wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from her2core.models.lpips_backbone import (
    BACKBONES,
    build_lpips,
    find_weights,
    hub_path,
    missing_text,
)

ALEXNET_FILE = BACKBONES["alex"][0]
LPIPS_ENV = "HER2_LPIPS_WEIGHTS"


def hub_alexnet_path() -> Path:
    return hub_path("alex")


def find_alexnet_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The AlexNet weight file to use, or None when there is none (LPIPS then left out)."""
    return find_weights("alex", path, LPIPS_ENV, "--lpips-weights")


def lpips_missing_message() -> str:
    return "LPIPS left out: " + missing_text("alex", LPIPS_ENV, "--lpips-weights") + "."


def load_lpips(weights: str | os.PathLike, device="cpu"):
    """lpips.LPIPS(net='alex', version='0.1') whose backbone is the state dict in `weights`."""
    return build_lpips("alex", weights).to(device)


@torch.no_grad()
def lpips_batch(model, pred: np.ndarray, target: np.ndarray, device="cpu") -> np.ndarray:
    """LPIPS distances of (N, H, W, 3) uint8 batches (inputs scaled to [-1, 1])."""
    def t(a):
        x = torch.from_numpy(np.ascontiguousarray(a)).to(device).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0

    return model(t(pred), t(target)).flatten().double().cpu().numpy()
