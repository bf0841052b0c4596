"""Pyramid pix2pix (Liu et al., CVPRW 2022; bupt-ai-cz/BCI `PyramidPix2pix`); see docs/references.md.

ResNet-9 generator (BatchNorm, dropout 0.5), conditional 70×70 PatchGAN on (H&E ‖ IHC),
vanilla GAN loss, L1 ×25 on the full image and ×25 on each of three Gaussian-pyramid
octaves (pattern `L1_L2_L3_L4`), Adam 2e-4 β(0.5, 0.999), 100 + 100 epochs linear decay,
batch 2 at full tile size with horizontal flips.

Inference (`inference`): "reference" (the `paper` default) is the BCI README's test command,
`test.py` without `--eval` (PyramidPix2pix/test.py:57-58 calls `model.eval()` only with `--eval`;
test.py:41 forces batch size 1): every image normalised by its own BatchNorm statistics and dropout 0.5 live; the
running statistics are left untouched and the dropout masks come from the translation seed.
"eval" uses the running statistics and no dropout. The mode is recorded with every translation.

Where we deliberately differ from the reference:
- the LR scheduler is stepped after the optimiser (the BCI code stepped it first).
- kornia is replaced by an equivalent blur pyramid that runs on any device.
- unused/broken loss patterns (fft, perc, contextual, conv, sobel) are not carried over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from her2core.models.base import PRECISION_NOTE, Framework
from her2core.models.gan_blocks.init import init_weights
from her2core.models.gan_blocks.losses import gan_loss
from her2core.models.gan_blocks.patchgan import NLayerDiscriminator
from her2core.models.gan_blocks.pyramid import blur_pyramid
from her2core.models.gan_blocks.resnet import ResnetGenerator

_BCI = "bupt-ai-cz/BCI:PyramidPix2pix/"
#: Settings of runs written before these fields existed (see Framework.LEGACY).
LEGACY = {"inference": "eval"}
#: The reference value and its source for every `paper` setting (see Framework.reference_recipe).
REFERENCE = {
    "precision": ("fp32", _BCI + "train.py (no autocast)", PRECISION_NOTE),
    "ngf": (64, _BCI + "options/base_options.py:31", ""),
    "ndf": (64, _BCI + "options/base_options.py:32", ""),
    "n_blocks": (9, _BCI + "options/base_options.py:34 (netG resnet_9blocks)", ""),
    "n_layers_D": (3, _BCI + "options/base_options.py:35", ""),
    "norm": ("batch", _BCI + "options/base_options.py:36", ""),
    "use_dropout": (True, _BCI + "options/base_options.py:39 (no_dropout off)", ""),
    "gan_mode": ("vanilla", _BCI + "models/pix2pix_model.py:38", ""),
    "lambda_L1": (25.0, _BCI + "models/pix2pix_model.py:39", ""),
    "pyramid_weights": ((25.0, 25.0, 25.0), _BCI + "options/train_options.py:48-50", ""),
    "lr": (2e-4, _BCI + "options/train_options.py:33", ""),
    "beta1": (0.5, _BCI + "options/train_options.py:32", ""),
    "beta2": (0.999, _BCI + "models/pix2pix_model.py:117", ""),
    "n_epochs": (100, _BCI + "options/train_options.py:30", ""),
    "n_epochs_decay": (100, _BCI + "options/train_options.py:31", ""),
    "batch_size": (2, _BCI + "options/base_options.py:45", ""),
    "crop": (None, _BCI + "options/base_options.py:49 (preprocess none: whole tile)", ""),
    "augment": ("hflip", _BCI + "options/base_options.py:50 (no_flip off)", ""),
    "init_type": ("normal", _BCI + "options/base_options.py:37", ""),
    "init_gain": (0.02, _BCI + "options/base_options.py:38", ""),
    "inference": ("reference", _BCI + "test.py:41, 57-58 (batch 1, model.eval() only with --eval)", ""),
}


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
    inference: str = "reference"  # "reference": test.py without --eval; "eval": model.eval()

    @property
    def epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay


class PyramidPix2Pix(Framework):
    name = "pyramid_pix2pix"
    family = "gan"
    REFERENCE = REFERENCE
    LEGACY = LEGACY
    config_class = PyramidPix2PixConfig

    @classmethod
    def presets(cls):
        return {
            "paper": PyramidPix2PixConfig(),
            # seconds on a CPU: narrow, 3 blocks, 2-layer D, crops of 64 px; same losses.
            "tiny": PyramidPix2PixConfig(ngf=16, ndf=16, n_blocks=3, n_layers_D=2, use_dropout=False,
                                         lr=1e-3, n_epochs=3, n_epochs_decay=3, batch_size=4, crop=64,
                                         augment="hflip+vflip+rot90", inference="eval"),
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
        from her2core.models.schedules import adam_linear_decay

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

    @property
    def inference_mode(self) -> str:
        return self.config.inference

    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        mode = self.config.inference
        if mode not in ("reference", "eval"):
            from her2core.errors import UserError
            raise UserError(f"pyramid_pix2pix: inference {mode!r}; use 'reference' or 'eval'")
        was = self.G.training
        if mode == "eval":
            self.G.eval()
            try:
                return self.G(he).float().clamp(-1, 1)
            finally:
                self.G.train(was)
        return self._translate_reference(he, generator)

    def _translate_reference(self, he, generator):
        """One image at a time in train mode (batch statistics, dropout), BatchNorm buffers restored."""
        buffers = {k: v.clone() for k, v in self.G.state_dict().items() if "running" in k or "num_batches" in k}
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device)) \
            if generator is not None else int(torch.randint(0, 2 ** 62, (1,)))
        devices = [he.device] if he.device.type == "cuda" else []
        was = self.G.training
        self.G.train()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                return torch.cat([self.G(x[None]).float() for x in he]).clamp(-1, 1)
        finally:
            self.G.train(was)
            self.G.load_state_dict(buffers, strict=False)
