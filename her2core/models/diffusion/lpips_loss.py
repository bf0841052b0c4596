"""The consistency-training LPIPS loss, built only from local weights (never downloaded).

openai/consistency_models trains with `piq.LPIPS(replace_pooling=True, reduction="none")`
(cm/karras_diffusion.py:52): VGG-16 features relu1_2 … relu5_3 with max pooling replaced by
average pooling, ImageNet normalisation of [0, 1] inputs, unit-normalised features, the
LPIPS v0.1 linear heads, squared distance averaged over space. Here the same network is the
`lpips` package's VGG (whose linear heads ship in its wheel; its ScalingLayer on [-1, 1] is
exactly the ImageNet normalisation of (x + 1) / 2) with the torchvision VGG-16 ImageNet
backbone read from a local file: the path given, $HER2_LPIPS_VGG_WEIGHTS, or
`torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`. No file: `find_vgg_weights` says None
and the caller falls back to L2 and records that it did.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from her2core.models.lpips_backbone import (
    BACKBONES,
    build_lpips,
    find_weights,
    hub_path,
    missing_text,
)

VGG_FILE = BACKBONES["vgg"][0]
VGG_ENV = "HER2_LPIPS_VGG_WEIGHTS"


def hub_vgg_path() -> Path:
    return hub_path("vgg")


def find_vgg_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The VGG-16 weight file for LPIPS, or None when there is none (L2 fallback)."""
    return find_weights("vgg", path, VGG_ENV, "the lpips_weights setting")


def missing_message() -> str:
    return missing_text("vgg", VGG_ENV, "--set lpips_weights=")


class LPIPSLoss(nn.Module):
    """Per-sample LPIPS(VGG, v0.1, average pooling) of two batches in [-1, 1], as the reference's piq call."""

    def __init__(self, weights: Path):
        super().__init__()
        model = build_lpips("vgg", weights)
        for sl in range(1, 6):  # piq replace_pooling=True: MaxPool2d -> AvgPool2d(2, 2)
            seq = getattr(model.net, f"slice{sl}")
            for name, m in list(seq.named_children()):
                if isinstance(m, nn.MaxPool2d):
                    setattr(seq, name, nn.AvgPool2d(kernel_size=2, stride=2))
        self.model = model.requires_grad_(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[-1] < 256:  # cm/karras_diffusion.py:220-224
            pred = F.interpolate(pred, size=224, mode="bilinear")
            target = F.interpolate(target, size=224, mode="bilinear")
        return self.model(pred.float(), target.float()).flatten(1).mean(1)
