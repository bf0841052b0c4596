"""Pyramid pix2pix (Liu et al., CVPRW 2022; bupt-ai-cz/BCI `PyramidPix2pix`), see models.md §3.1.

ResNet-9 generator (BatchNorm, dropout 0.5), conditional 70×70 PatchGAN on (H&E ‖ IHC),
vanilla GAN loss, L1 ×25 on the full image and ×25 on each of three Gaussian-pyramid
octaves (pattern `L1_L2_L3_L4`), Adam 2e-4 β(0.5, 0.999), 100 + 100 epochs linear decay,
batch 2 at full tile size with horizontal flips.

Where we deliberately differ from the reference:
- `translate` runs in eval mode (BatchNorm running stats, no dropout); the BCI README's test
  command omits `--eval`, so its published outputs used batch statistics and live dropout.
- the LR scheduler is stepped after the optimiser (the BCI code stepped it first).
- kornia is replaced by an equivalent blur pyramid that runs on any device.
- unused/broken loss patterns (fft, perc, contextual, conv, sobel) are not carried over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from her2core.models.base import Framework
from her2core.models.gan_blocks.init import init_weights
from her2core.models.gan_blocks.losses import gan_loss
from her2core.models.gan_blocks.patchgan import NLayerDiscriminator
from her2core.models.gan_blocks.pyramid import blur_pyramid
from her2core.models.gan_blocks.resnet import ResnetGenerator


@dataclass
class PyramidPix2PixConfig:
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    n_layers_D: int = 3
    norm: str = "batch"
    use_dropout: bool = True
    gan_mode: str = "vanilla"
    lambda_L1: float = 25.0
    pyramid_weights: tuple[float, ...] = (25.0, 25.0, 25.0)  # weight_L2, weight_L3, weight_L4
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_epochs: int = 100
    n_epochs_decay: int = 100
    batch_size: int = 2
    crop: int | None = None
    augment: str = "hflip"
    init_type: str = "normal"
    init_gain: float = 0.02

    @property
    def epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay


class PyramidPix2Pix(Framework):
    name = "pyramid_pix2pix"
    family = "gan"
    config_class = PyramidPix2PixConfig

    @classmethod
    def presets(cls):
        return {
            "paper": PyramidPix2PixConfig(),
            # seconds on a CPU: narrow, 3 blocks, 2-layer D, crops of 64 px; same losses.
            "tiny": PyramidPix2PixConfig(ngf=16, ndf=16, n_blocks=3, n_layers_D=2, use_dropout=False,
                                         lr=1e-3, n_epochs=3, n_epochs_decay=3, batch_size=4, crop=64,
                                         augment="hflip+vflip+rot90"),
        }

    def __init__(self, config: PyramidPix2PixConfig):
        super().__init__(config)
        c = config
        self.G = init_weights(ResnetGenerator(3, 3, c.ngf, c.norm, c.use_dropout, c.n_blocks),
                              c.init_type, c.init_gain)
        self.D = init_weights(NLayerDiscriminator(6, c.ndf, c.n_layers_D, c.norm), c.init_type, c.init_gain)

    def networks(self):
        return {"G": self.G, "D": self.D}

    def make_optimizers(self, total_steps, steps_per_epoch):
        from her2core.training.schedules import adam_linear_decay

        return adam_linear_decay({"D": self.D, "G": self.G}, self.config, total_steps)

    def training_step(self, batch, ctx):
        c = self.config
        he, ihc = batch["he"], batch["ihc"]
        with ctx.autocast():
            fake = self.G(he)
        # D: conditional, fake and real in separate forwards (separate BatchNorm statistics).
        self.D.requires_grad_(True)
        with ctx.autocast():
            d_fake = gan_loss(self.D(torch.cat([he, fake.detach()], 1)), False, c.gan_mode)
            d_real = gan_loss(self.D(torch.cat([he, ihc], 1)), True, c.gan_mode)
            loss_d = 0.5 * (d_fake + d_real)
        ctx.backward(loss_d)
        ctx.optimizer_step("D")
        # G: fool D + L1 at four pyramid scales.
        self.D.requires_grad_(False)
        with ctx.autocast():
            g_gan = gan_loss(self.D(torch.cat([he, fake], 1)), True, c.gan_mode)
        levels = 1 + len(c.pyramid_weights)
        l1 = [F.l1_loss(f, r) for f, r in zip(blur_pyramid(fake.float(), levels), blur_pyramid(ihc.float(), levels))]
        loss_g = g_gan + c.lambda_L1 * l1[0] + sum(w * v for w, v in zip(c.pyramid_weights, l1[1:]))
        ctx.backward(loss_g)
        ctx.optimizer_step("G")
        self.D.requires_grad_(True)
        logs = {"D_fake": d_fake, "D_real": d_real, "G_GAN": g_gan, "G": loss_g}
        logs.update({f"G_L{i + 1}": v for i, v in enumerate(l1)})
        return {k: v.detach() for k, v in logs.items()}

    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        was = self.G.training
        self.G.eval()
        try:
            return self.G(he).float().clamp(-1, 1)
        finally:
            self.G.train(was)
