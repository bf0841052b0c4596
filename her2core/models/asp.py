"""ASP — Adaptive Supervised PatchNCE (Li et al., MICCAI 2023; lifangda01/AdaptiveSupervisedPatchNCE); see docs/references.md.

CUT in FastCUT mode plus a supervised PatchNCE between the real and the virtual IHC:
ResNet-6 generator (InstanceNorm, spectral norm on every conv, antialiased resampling),
an MLP patch sampler F (nce_layers 0,4,8,12,16, 256 patches, 256-d), an unconditional
5-layer PatchGAN (ndf 32, spectral, antialiased). Loss = LSGAN + 10·PatchNCE(H&E→fake)
+ 10·ASP(real IHC↔fake, `lambda_linear` weighting) + 10·Gaussian-pyramid L1
(LPTN, 6 levels, weights 1/64…1). Adam 2e-4 β(0.5, 0.999), 30 + 10 epochs linear decay,
batch 1, random 512 crops of 1024 tiles.

Where we deliberately differ from the reference:
- F is built at construction (upstream: lazily at the first forward) so that it is in the
  optimiser and the checkpoint from step 0; same layers and parameter count.
- the Gaussian-pyramid kernel follows the module's device (upstream: created on 'cuda').
- the ASP schedule reads training progress from the engine (step / total steps) instead of
  an epoch counter, which gives the same curve for a full-length run.
- the LR scheduler is stepped after the optimisers.
- the `tiny` preset weights the H&E PatchNCE 0.5 instead of 10 (see `presets`); `paper` is unchanged.
- the fake's encoder features are computed once for both NCE terms, and the key features
  (H&E, real IHC) without autograd: identical gradients, fewer passes (spectral-norm power
  iterations therefore run fewer times per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from her2core.models.base import PRECISION_NOTE, Framework
from her2core.models.gan_blocks.init import init_weights
from her2core.models.gan_blocks.losses import gan_loss
from her2core.models.gan_blocks.patchgan import NLayerDiscriminator
from her2core.models.gan_blocks.patchnce import PatchSampleF, asp_schedule, asp_weights, patch_nce
from her2core.models.gan_blocks.pyramid import GaussPyramid
from her2core.models.gan_blocks.resnet import ResnetGenerator

_ASP = "lifangda01/AdaptiveSupervisedPatchNCE:"
_MIST = _ASP + "experiments/mist_launcher.py:"
#: The reference value and its source for every `paper` setting (see Framework.reference_recipe).
REFERENCE = {
    "precision": ("fp32", _ASP + "train.py (no autocast)", PRECISION_NOTE),
    "ngf": (64, _ASP + "options/base_options.py:35", ""),
    "ndf": (32, _MIST + "19", ""),
    "n_blocks": (6, _MIST + "20 (netG resnet_6blocks)", ""),
    "n_layers_D": (5, _MIST + "21 (netD n_layers)", ""),
    "norm": ("instance", _MIST + "22-23 (normG, normD)", ""),
    "spectral": (True, _MIST + "24 (weight_norm spectral)", ""),
    "antialias": (True, _ASP + "options/base_options.py:46-47 (no_antialias, no_antialias_up off)", ""),
    "nce_layers": ((0, 4, 8, 12, 16), _MIST + "28", ""),
    "netF_nc": (256, _ASP + "models/cpt_model.py:29", ""),
    "num_patches": (256, _MIST + "30", ""),
    "nce_T": (0.07, _MIST + "29", ""),
    "gan_mode": ("lsgan", _ASP + "options/train_options.py:38", ""),
    "lambda_GAN": (1.0, _MIST + "26", ""),
    "lambda_NCE": (10.0, _MIST + "27", ""),
    "lambda_asp": (10.0, _MIST + "35", ""),
    "lambda_gp": (10.0, _MIST + "33", ""),
    "asp_loss_mode": ("lambda_linear", _MIST + "36", ""),
    "gp_num_high": (5, _ASP + "models/cpt_model.py:95", ""),
    "gp_weights": ((0.015625, 0.03125, 0.0625, 0.125, 0.25, 1.0), _MIST + "34", ""),
    "lr": (2e-4, _ASP + "options/train_options.py:37", ""),
    "beta1": (0.5, _ASP + "options/train_options.py:35", ""),
    "beta2": (0.999, _ASP + "options/train_options.py:36", ""),
    "n_epochs": (30, _MIST + "15", ""),
    "n_epochs_decay": (10, _MIST + "16", ""),
    "batch_size": (1, _MIST + "42", ""),
    "crop": (512, _MIST + "43-45 (load 1024, preprocess crop, crop 512)", ""),
    "augment": ("hflip", _MIST + "46 (no_flip not set)", ""),
    "init_type": ("xavier", _ASP + "options/base_options.py:42", ""),
    "init_gain": (0.02, _ASP + "options/base_options.py:43", ""),
}

@dataclass
class ASPConfig:
    ngf: int = 64
    ndf: int = 32
    n_blocks: int = 6
    n_layers_D: int = 5
    norm: str = "instance"
    spectral: bool = True
    antialias: bool = True
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    netF_nc: int = 256
    num_patches: int = 256
    nce_T: float = 0.07
    gan_mode: str = "lsgan"
    lambda_GAN: float = 1.0
    lambda_NCE: float = 10.0
    lambda_asp: float = 10.0
    lambda_gp: float = 10.0
    asp_loss_mode: str = "lambda_linear"
    gp_num_high: int = 5
    gp_weights: tuple[float, ...] = (0.015625, 0.03125, 0.0625, 0.125, 0.25, 1.0)
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_epochs: int = 30
    n_epochs_decay: int = 10
    batch_size: int = 1
    crop: int | None = 512
    augment: str = "hflip"
    init_type: str = "xavier"
    init_gain: float = 0.02

    @property
    def epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay


class ASP(Framework):
    name = "asp"
    REFERENCE = REFERENCE
    family = "gan"
    config_class = ASPConfig

    @classmethod
    def presets(cls):
        return {
            "paper": ASPConfig(),
            # seconds on a CPU: narrow G/D, 3 blocks (NCE layers remapped to 0,4,8,12,14), 64 px crops.
            # lambda_NCE 0.5 instead of 10: in a run of a few hundred steps the unsupervised
            # PatchNCE to the H&E dominates and keeps H&E-only texture (eosin stripes) that the
            # IHC lacks; the full-length paper schedule balances it with the ramped ASP term.
            # Measured on the embedded same-section tiles, 600 steps, seeds 0/1/2: SSIM
            # 0.70/0.64/0.69 with 0.5 vs 0.42 (400 steps) with 10; mean-colour baseline 0.56.
            "tiny": ASPConfig(ngf=16, ndf=16, n_blocks=3, n_layers_D=3, nce_layers=(0, 4, 8, 12, 14),
                              netF_nc=64, num_patches=64, gp_num_high=3, lambda_NCE=0.5,
                              gp_weights=(0.125, 0.25, 0.5, 1.0), lr=2e-3, n_epochs=3, n_epochs_decay=1,
                              batch_size=2, crop=64, augment="hflip+vflip+rot90"),
        }

    def __init__(self, config: ASPConfig):
        super().__init__(config)
        c = config
        if len(c.gp_weights) != c.gp_num_high + 1:
            raise ValueError(f"asp: gp_weights needs {c.gp_num_high + 1} entries (gp_num_high + 1)")
        self.G = init_weights(ResnetGenerator(3, 3, c.ngf, c.norm, False, c.n_blocks, antialias=c.antialias,
                                              spectral=c.spectral), c.init_type, c.init_gain)
        self.F = init_weights(PatchSampleF(self.G.feature_channels(list(c.nce_layers)), c.netF_nc),
                              c.init_type, c.init_gain)
        self.D = init_weights(NLayerDiscriminator(3, c.ndf, c.n_layers_D, c.norm, antialias=c.antialias,
                                                  spectral=c.spectral), c.init_type, c.init_gain)
        self.gauss = GaussPyramid(c.gp_num_high)

    def networks(self):
        return {"G": self.G, "F": self.F, "D": self.D}

    def make_optimizers(self, total_steps, steps_per_epoch):
        from her2core.models.schedules import adam_linear_decay

        return adam_linear_decay({"D": self.D, "G": self.G, "F": self.F}, self.config, total_steps)

    def _nce(self, feat_q, src, progress: float | None):
        """Mean over layers of the PatchNCE between query features `feat_q` (of the fake) and
        key features of `src` at the same sampled locations; ASP-weighted when `progress` is given."""
        c = self.config
        with torch.no_grad():  # keys are detached in the loss: no graph needed (same gradients)
            feat_k = self.G(src, list(c.nce_layers), encode_only=True)
        pool_k, ids = self.F(feat_k, c.num_patches)
        pool_q, _ = self.F(feat_q, c.num_patches, ids)
        total = 0.0
        for q, k in zip(pool_q, pool_k):
            loss, l_pos = patch_nce(q, k, src.shape[0], c.nce_T)
            if progress is not None:
                scheduler, lookup = c.asp_loss_mode.split("_")[:2]
                decay_fraction = c.n_epochs_decay / max(c.epochs, 1)
                loss = loss * asp_weights(l_pos, asp_schedule(progress, scheduler, decay_fraction), lookup)
            total = total + loss.mean()
        return total / len(pool_q)

    def training_step(self, batch, ctx):
        c = self.config
        real_a, real_b = batch["he"], batch["ihc"]
        with ctx.autocast():
            fake_b = self.G(real_a)
        self.D.requires_grad_(True)
        with ctx.autocast():
            d_fake = gan_loss(self.D(fake_b.detach()), False, c.gan_mode)
            d_real = gan_loss(self.D(real_b), True, c.gan_mode)
            loss_d = 0.5 * (d_fake + d_real)
        ctx.backward(loss_d)
        ctx.optimizer_step("D")

        self.D.requires_grad_(False)
        progress = ctx.step / max(ctx.total_steps, 1)
        with ctx.autocast():
            g_gan = gan_loss(self.D(fake_b), True, c.gan_mode) * c.lambda_GAN
            # the fake's encoder features serve both NCE terms (upstream encodes it twice)
            feat_q = self.G(fake_b, list(c.nce_layers), encode_only=True)
            nce = self._nce(feat_q, real_a, None) * c.lambda_NCE
            asp = self._nce(feat_q, real_b, progress) * c.lambda_asp
        pf, pr = self.gauss(fake_b.float()), self.gauss(real_b.float())
        gp = torch.stack([F.l1_loss(a, b) * w for a, b, w in zip(pf, pr, c.gp_weights)]).mean() * c.lambda_gp
        loss_g = g_gan + nce + asp + gp
        ctx.backward(loss_g)
        ctx.optimizer_step("G")
        ctx.optimizer_step("F")
        self.D.requires_grad_(True)
        logs = {"D_fake": d_fake, "D_real": d_real, "G_GAN": g_gan, "NCE": nce, "ASP": asp, "GP": gp, "G": loss_g}
        return {k: v.detach() for k, v in logs.items()}

    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        was = self.G.training
        self.G.eval()
        try:
            return self.G(he).float().clamp(-1, 1)
        finally:
            self.G.train(was)
