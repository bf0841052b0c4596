"""LPIPS (AlexNet, v0.1) with ImageNet backbone weights from a local file only.

WHY so careful: offline, `lpips.LPIPS(net='alex')` cannot download the torchvision
AlexNet weights, and `pnet_rand=True` silently gives a *random* backbone whose
numbers look plausible but mean nothing. Here the backbone comes from
`alexnet-owt-7be5be79.pth` (torchvision's file) found at, in order:
the path the user gives (`--lpips-weights`), $HER2_LPIPS_WEIGHTS, or
`torch.hub.get_dir()/checkpoints/`. When none exists the LPIPS column is left out
and `lpips_missing_message()` says which file is missing and how to provide it.
The linear heads (v0.1) ship inside the `lpips` wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from her2core.errors import UserError

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_ENV = "HER2_LPIPS_WEIGHTS"
#: torchvision alexnet.features index -> lpips slice holding it (see lpips.pretrained_networks).
_SLICE_OF = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def hub_alexnet_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def find_alexnet_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The AlexNet weight file to use, or None when there is none (LPIPS then left out)."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: LPIPS AlexNet weight file not found; give torchvision's {ALEXNET_FILE}")
        return p
    env = os.environ.get(LPIPS_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise UserError(f"{p} (from ${LPIPS_ENV}): LPIPS AlexNet weight file not found")
        return p
    p = hub_alexnet_path()
    return p if p.is_file() else None


def lpips_missing_message() -> str:
    return (
        f"LPIPS left out: AlexNet ImageNet weights not found ({hub_alexnet_path()} is missing). "
        f"Copy torchvision's {ALEXNET_FILE} there, set ${LPIPS_ENV}=FILE, or pass --lpips-weights FILE."
    )


def _load_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path}: not a readable AlexNet state dict ({exc.__class__.__name__})") from None


def load_lpips(weights: str | os.PathLike, device="cpu"):
    """lpips.LPIPS(net='alex', version='0.1') whose backbone is the state dict in `weights`."""
    import lpips

    path = Path(weights)
    state = _load_state(path)
    model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    own = model.net.state_dict()
    new = {}
    for idx, sl in _SLICE_OF.items():
        for kind in ("weight", "bias"):
            src, dst = f"features.{idx}.{kind}", f"slice{sl}.{idx}.{kind}"
            if src not in state or tuple(state[src].shape) != tuple(own[dst].shape):
                raise UserError(f"{path}: not torchvision AlexNet weights ({src} missing or of wrong shape)")
            new[dst] = state[src]
    model.net.load_state_dict(new, strict=True)
    return model.eval().to(device)


@torch.no_grad()
def lpips_batch(model, pred: np.ndarray, target: np.ndarray, device="cpu") -> np.ndarray:
    """LPIPS distances of (N, H, W, 3) uint8 batches (inputs scaled to [-1, 1])."""
    def t(a):
        x = torch.from_numpy(np.ascontiguousarray(a)).to(device).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0

    return model(t(pred), t(target)).flatten().double().cpu().numpy()
