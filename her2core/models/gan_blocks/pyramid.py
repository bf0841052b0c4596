"""Gaussian pyramids for multi-scale L1 losses.

- `blur_pyramid` (Pyramid pix2pix, BCI): per octave 4× Gaussian blur 3×3 σ=1 (reflect), then
  take every second pixel (kornia `gaussian_blur2d` ×4 + `blur_pool2d(x, 1, stride=2)`).
- `GaussPyramid` (ASP, from LPTN): 5×5 binomial/256 blur (reflect) then stride-2 subsample;
  the reference builds its kernel on 'cuda' (CPU runs fail) — here it is a buffer that follows
  the module's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _gauss1d(size: int, sigma: float, device=None, dtype=None) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype or torch.float32)


def gaussian_blur(x: torch.Tensor, size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (kornia.filters.gaussian_blur2d)."""
    c = x.shape[1]
    g = _gauss1d(size, sigma, x.device, x.dtype)
    p = size // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, size).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).repeat(c, 1, 1, 1), groups=c)


def blur_octave(x: torch.Tensor) -> torch.Tensor:
    """One octave down as in BCI's pix2pix_model.py (4 blurs, then 2× subsample)."""
    for _ in range(4):
        x = gaussian_blur(x, 3, 1.0)
    return x[:, :, ::2, ::2]


def blur_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[x, ½, ¼, …] with `levels` entries in all."""
    out = [x]
    for _ in range(levels - 1):
        out.append(blur_octave(out[-1]))
    return out


class GaussPyramid(nn.Module):
    """LPTN Gaussian pyramid: `num_high` blurred levels then the coarsest residual (num_high+1 maps)."""

    def __init__(self, num_high: int = 5, channels: int = 3):
        super().__init__()
        self.num_high = num_high
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        kernel = (k[:, None] * k[None, :]) / 256.0
        self.register_buffer("kernel", kernel[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        pyr, cur = [], img
        for _ in range(self.num_high):
            f = F.conv2d(F.pad(cur, (2, 2, 2, 2), mode="reflect"), self.kernel.to(cur.dtype), groups=cur.shape[1])
            pyr.append(f)
            cur = f[:, :, ::2, ::2]
        pyr.append(cur)
        return pyr


def max_levels(size: int, min_size: int = 4) -> int:
    """How many octaves fit in a tile of `size` pixels before it gets smaller than `min_size`."""
    return max(1, int(math.log2(max(size, 1) / min_size)) + 1)
