"""LPIPS networks whose ImageNet backbone comes from a local file only (never downloaded).

WHY: offline, `lpips.LPIPS(net=...)` cannot download torchvision's backbone weights, and
`pnet_rand=True` silently gives a *random* backbone whose distances look plausible but mean
nothing. Both users of LPIPS — the LPIPS metric (AlexNet, `her2core.evaluation.perceptual`) and
the consistency-training loss (VGG-16, `her2core.models.diffusion.lpips_loss`) — build their
network here: the linear heads (v0.1) ship inside the `lpips` wheel, the backbone is torchvision's
file found at, in order, the path the user gives, an environment variable, or
`torch.hub.get_dir()/checkpoints/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from her2core.errors import UserError

#: lpips net name -> (torchvision file, readable name, torchvision `features` index -> lpips slice)
BACKBONES = {
    "alex": ("alexnet-owt-7be5be79.pth", "AlexNet", {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}),
    "vgg": ("vgg16-397923af.pth", "VGG-16",
            {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}),
}


def hub_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONES[net][0]


def find_weights(net: str, path: str | os.PathLike | None, env_var: str,
                 given_by: str = "the option") -> Path | None:
    """The backbone file to use: `path`, else $env_var, else the torch hub file; None if none exists."""
    file, label, _ = BACKBONES[net]
    for given, source in ((path, given_by), (os.environ.get(env_var), f"${env_var}")):
        if given:
            p = Path(given)
            if not p.is_file():
                raise UserError(f"{p} (from {source}): LPIPS {label} weight file not found; "
                                f"give torchvision's {file}")
            return p
    p = hub_path(net)
    return p if p.is_file() else None


def missing_text(net: str, env_var: str, option: str) -> str:
    """What is missing and the three ways to provide it."""
    file, label, _ = BACKBONES[net]
    return (f"LPIPS {label} ImageNet weights not found ({hub_path(net)} is missing). Copy torchvision's "
            f"{file} there, set ${env_var}=FILE, or pass {option} FILE")


def _load_state(path: Path, label: str) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path}: not a readable {label} state dict ({exc.__class__.__name__})") from None


def build_lpips(net: str, weights: str | os.PathLike):
    """lpips.LPIPS(net=net, version='0.1') whose backbone is torchvision's state dict in `weights`."""
    import lpips

    _, label, slice_of = BACKBONES[net]
    path = Path(weights)
    state = _load_state(path, label)
    model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    own = model.net.state_dict()
    new = {}
    for idx, sl in slice_of.items():
        for kind in ("weight", "bias"):
            src, dst = f"features.{idx}.{kind}", f"slice{sl}.{idx}.{kind}"
            if src not in state or tuple(state[src].shape) != tuple(own[dst].shape):
                raise UserError(f"{path}: not torchvision {label} weights ({src} missing or of wrong shape)")
            new[dst] = state[src]
    model.net.load_state_dict(new, strict=True)
    return model.eval()
