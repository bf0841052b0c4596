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

from her2core.errors import UserError

VGG_FILE = "vgg16-397923af.pth"
VGG_ENV = "HER2_LPIPS_VGG_WEIGHTS"
#: torchvision vgg16.features index -> lpips slice holding it (lpips.pretrained_networks.vgg16).
_SLICE_OF = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}


def hub_vgg_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILE


def find_vgg_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The VGG-16 weight file for LPIPS, or None when there is none (L2 fallback)."""
    for given, source in ((path, "the lpips_weights setting"), (os.environ.get(VGG_ENV), f"${VGG_ENV}")):
        if given:
            p = Path(given)
            if not p.is_file():
                raise UserError(f"{p} (from {source}): VGG-16 weight file not found; give torchvision's {VGG_FILE}")
            return p
    p = hub_vgg_path()
    return p if p.is_file() else None


def missing_message() -> str:
    return (f"LPIPS VGG-16 weights not found ({hub_vgg_path()} is missing; copy torchvision's {VGG_FILE} "
            f"there or set ${VGG_ENV}=FILE or --set lpips_weights=FILE)")


class LPIPSLoss(nn.Module):
    """Per-sample LPIPS(VGG, v0.1, average pooling) of two batches in [-1, 1], as the reference's piq call."""

    def __init__(self, weights: Path):
        super().__init__()
        import lpips

        state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only, no code
        model = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        own = model.net.state_dict()
        new = {}
        for idx, sl in _SLICE_OF.items():
            for kind in ("weight", "bias"):
                src, dst = f"features.{idx}.{kind}", f"slice{sl}.{idx}.{kind}"
                if src not in state or tuple(state[src].shape) != tuple(own[dst].shape):
                    raise UserError(f"{weights}: not torchvision VGG-16 weights ({src} missing or of wrong shape)")
                new[dst] = state[src]
        model.net.load_state_dict(new, strict=True)
        for sl in range(1, 6):  # piq replace_pooling=True: MaxPool2d -> AvgPool2d(2, 2)
            seq = getattr(model.net, f"slice{sl}")
            for name, m in list(seq.named_children()):
                if isinstance(m, nn.MaxPool2d):
                    setattr(seq, name, nn.AvgPool2d(kernel_size=2, stride=2))
        self.model = model.eval().requires_grad_(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[-1] < 256:  # cm/karras_diffusion.py:220-224
            pred = F.interpolate(pred, size=224, mode="bilinear")
            target = F.interpolate(target, size=224, mode="bilinear")
        return self.model(pred.float(), target.float()).flatten(1).mean(1)
