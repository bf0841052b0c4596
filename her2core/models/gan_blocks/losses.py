"""GAN, focal and SSIM losses shared by the GAN frameworks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from her2core.models.gan_blocks.pyramid import _gauss1d


def gan_loss(pred, target_is_real: bool, mode: str = "lsgan", smooth: float = 0.0) -> torch.Tensor:
    """vanilla (BCE with logits) or lsgan (MSE) against 1/0 targets; lists (multi-scale D) averaged.

    smooth>0 draws targets 1-U(0,smooth) for real and U(0,smooth) for fake (BCIStainer's D).
    """
    if isinstance(pred, (list, tuple)):
        return sum(gan_loss(p, target_is_real, mode, smooth) for p in pred) / len(pred)
    pred = pred.float()
    if smooth > 0:
        noise = torch.rand_like(pred) * smooth
        target = 1.0 - noise if target_is_real else noise
    else:
        target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(pred, target)
    if mode == "lsgan":
        return F.mse_loss(pred, target)
    raise ValueError(f"unknown gan mode {mode}")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha=(0.5, 0.2, 0.2, 0.1),
               gamma: float = 2.0) -> torch.Tensor:
    """-α_t (1-p_t)^γ log p_t, averaged; α per class (BCIStainer: rare HER2 levels weigh more)."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    a = torch.as_tensor(alpha, device=logits.device, dtype=logp.dtype)[target]
    return (-a * (1 - logp.exp()).pow(gamma) * logp).mean()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 9, sigma: float = 2.375,
         value_range: float = 1.0) -> torch.Tensor:
    """Gaussian-window SSIM per image (valid convolution, channel mean), as piqa.SSIM."""
    x, y = x.float(), y.float()
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    g = _gauss1d(window, sigma, x.device)

    def blur(t):
        t = F.conv2d(t, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(t, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)

    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ss = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs
    return ss.mean(dim=(1, 2, 3))


def ssim_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - SSIM on [0, 1] images given in [-1, 1] (BCIStainer `sim`)."""
    return 1 - ssim((fake + 1) / 2, (real + 1) / 2).mean()
