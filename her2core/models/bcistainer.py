"""BCIStainer (quqixun/BCIStainer, BCI Grand Challenge 2nd place; `stainer_basic_cmp/exp3`); see docs/references.md.

Generator: 7×7 in-conv → 3 stride-2 convs (encoder1) → style branch (4 more stride-2 convs
at 1024², global average pool → 256-d style, dropout + linear HER2-level head) → 9
StyleGAN2-modulated ResNet blocks with SimAM (decoder1) → low-res 3×3 head (tanh) and 3
transposed convs → 7×7 high-res head (tanh). BatchNorm, LeakyReLU 0.2, N(0, 0.02) init.
D: 2-scale unconditional PatchGAN (IHC only). C (comparator): stride-2 conv encoder + head,
trained with focal loss on real IHC until `start_cmp`, then frozen and used for a cosine
feature loss between fake and real.
Losses: 10·L1 + 10·L1(low-res vs bilinear-downsized target) + 1·(1−SSIM) + 1·LSGAN
(D targets smoothed by U(0, 0.1)) + 5·focal(level) + 1·(1−cos) comparator (from start_cmp).
AdamW 1e-3 β(0.5, 0.9) wd 0.05, per-iteration 50-epoch warm-up + cosine to 0, 150 epochs,
batch 8 at full size, EMA of G (ema_pytorch 0.0.10: β 0.99 after 100 steps, every step, power
1.0, BatchNorm statistics averaged; libs/utils/base.py:70-77) used for inference, and the EMA
generator of the best validation PSNR kept (`select`; libs/train_basic/trainer.py:24-36).
Initialisation: N(0, 0.02) for every conv/linear weight, the 18 modulated convolutions
included through their equalised weight (libs/models/utils.py init_weights reaches
`EqualizedWeight.data`), so their effective weight is N(0, 0.02)/sqrt(fan_in).
HER2 scores are required (classifier and comparator); a dataset without any is refused.

Where we deliberately differ from the reference:
- augmentation is the dihedral group (flips, rot90 — transposes included) of the engine; the
  RandomResizedCrop and grid/elastic/optical distortions are not reproduced.
- `full_size` (1024 in `paper`) fixes the style-encoder depth, as upstream; any tile size can
  be fed since the style branch pools globally.
- HER2 scores < 0 (unknown) are left out of the classification losses.
- where SimAM sits inside `attention: true` upstream is not recorded in our notes; we put it
  at the end of each modulated ResNet block (parameter-free, counts unaffected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from her2core.models.base import PRECISION_NOTE, Framework
from her2core.models.gan_blocks.init import init_weights
from her2core.models.gan_blocks.losses import focal_loss, gan_loss, ssim_loss
from her2core.models.gan_blocks.patchgan import ConvNormAct, MultiscaleDiscriminator
from her2core.models.gan_blocks.stylemod import ResnetModBlock

_BS = "quqixun/BCIStainer:"
_EXP = _BS + "configs/stainer_basic_cmp/exp3.yaml:"
#: Settings of runs written before these fields existed (see Framework.LEGACY).
LEGACY = {"ema_power": 2 / 3, "select": None}
#: The reference value and its source for every `paper` setting (see Framework.reference_recipe).
REFERENCE = {
    "precision": ("fp32", _BS + "libs/train_basic/trainer.py (no autocast)", PRECISION_NOTE),
    "full_size": (1024, _EXP + "17", ""),
    "init_channels": (32, _EXP + "20", ""),
    "levels": (4, _EXP + "21", ""),
    "encoder1_blocks": (3, _EXP + "22", ""),
    "style_blocks": (9, _EXP + "25 (style_type mod, linear)", ""),
    "norm": ("batch", _EXP + "26, 40, 54", ""),
    "dropout": (0.2, _EXP + "27, 55", ""),
    "attention": (True, _EXP + "29 (SimAM)", "SimAM placed at the end of each modulated block"),
    "d_channels": (32, _EXP + "38", ""),
    "d_layers": (3, _EXP + "39", ""),
    "d_depths": (2, _EXP + "41", ""),
    "c_channels": (32, _EXP + "51", ""),
    "c_max_channels": (256, _EXP + "52", ""),
    "w_rec": (10.0, _EXP + "66 (mae)", ""),
    "low_weight": (1.0, _EXP + "93", ""),
    "w_sim": (1.0, _EXP + "69 (ssim)", ""),
    "w_gan": (1.0, _EXP + "72 (lsgan)", ""),
    "w_cls": (5.0, _EXP + "63 (focal)", ""),
    "w_cmp": (1.0, _EXP + "75 (csim)", ""),
    "focal_alpha": ((0.5, 0.2, 0.2, 0.1), _BS + "libs/utils/losses.py:160", ""),
    "focal_gamma": (2.0, _BS + "libs/utils/losses.py:160", ""),
    "label_smooth": (0.1, _BS + "libs/utils/losses.py:104 (U(0, 0.1))", ""),
    "lr": (1e-3, _EXP + "80", ""),
    "betas": ((0.5, 0.9), _EXP + "81", ""),
    "weight_decay": (0.05, _EXP + "82", ""),
    "c_lr": (1e-4, _BS + "libs/utils/base.py:114", ""),
    "c_betas": ((0.9, 0.99), _BS + "libs/utils/base.py:114", ""),
    "epochs": (150, _EXP + "89", ""),
    "warmup_epochs": (50, _EXP + "86", ""),
    "start_cmp": (50, _EXP + "95", ""),
    "ema_beta": (0.99, _BS + "libs/utils/base.py:73", ""),
    "ema_after": (100, _BS + "libs/utils/base.py:74", ""),
    "ema_every": (1, _BS + "libs/utils/base.py:75", ""),
    "ema_power": (1.0, _BS + "libs/utils/base.py:76", ""),
    "select": ("val_psnr", _BS + "libs/train_basic/trainer.py:24-36 (best EMA PSNR each epoch)", ""),
    "validate_every": (1.0, _BS + "libs/train_basic/trainer.py:21-26", ""),
    "batch_size": (8, _EXP + "9", ""),
    "crop": (None, _BS + "libs/train_basic/dataset.py:37 (whole 1024 tile)",
             "RandomResizedCrop (p 0.2) is not reproduced"),
    "augment": ("flip+transpose+rot90 (+ resized crop, grid/elastic/optical distortion)",
                _BS + "libs/train_basic/dataset.py:34-44",
                "the dihedral group only; the crop and distortions are not reproduced"),
    "init_gain": (0.02, _EXP + "32, 44, 58 (normal, modulated convs included)", ""),
    "comparator_grad": ("accumulated over steps", _BS + "libs/train_basic/trainer.py:73-74 (C_opt never zeroed)",
                        "an upstream bug, not kept: C's gradient is zeroed after each of its steps",
                        "zeroed every step"),
}

@dataclass
class BCIStainerConfig:
    full_size: int = 1024
    init_channels: int = 32
    levels: int = 4
    encoder1_blocks: int = 3
    style_blocks: int = 9
    norm: str = "batch"
    dropout: float = 0.2
    attention: bool = True
    d_channels: int = 32
    d_layers: int = 3
    d_depths: int = 2
    c_channels: int = 32
    c_max_channels: int = 256
    w_rec: float = 10.0
    low_weight: float = 1.0
    w_sim: float = 1.0
    w_gan: float = 1.0
    w_cls: float = 5.0
    w_cmp: float = 1.0
    focal_alpha: tuple[float, ...] = (0.5, 0.2, 0.2, 0.1)
    focal_gamma: float = 2.0
    label_smooth: float = 0.1
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.05
    c_lr: float = 1e-4
    c_betas: tuple[float, float] = (0.9, 0.99)
    epochs: int = 150
    warmup_epochs: float = 50
    start_cmp: float = 50
    ema_beta: float = 0.99
    ema_after: int = 100
    ema_every: int = 1
    ema_power: float = 1.0
    select: str | None = "val_psnr"  # keep the EMA generator of the best validation PSNR; None: the last
    validate_every: float = 1.0  # epochs between validations (upstream: every epoch)
    batch_size: int = 8
    crop: int | None = None
    augment: str = "hflip+vflip+rot90"
    init_gain: float = 0.02


class Comparator(nn.Module):
    """ComparatorBasic: 7×7 s2 conv, log2(full/16) stride-2 convs (≤ max ch), GAP → latent, head."""

    def __init__(self, full_size, init_ch=32, max_ch=256, levels=4, norm="batch", dropout=0.2):
        super().__init__()
        layers = [ConvNormAct(3, init_ch, 7, 2, 3, norm)]
        out = init_ch
        for i in range(int(math.log2(full_size / 2 / 8))):
            cin, out = min(init_ch * 2 ** i, max_ch), min(init_ch * 2 ** (i + 1), max_ch)
            layers.append(ConvNormAct(cin, out, 3, 2, 1, norm))
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classify_head = nn.Sequential(*([nn.Dropout(dropout)] if dropout > 0 else []), nn.Linear(out, levels))

    def forward(self, x):
        latent = self.encoder(x)
        return self.classify_head(latent), latent


class StainerGenerator(nn.Module):
    """BCIStainerBasic (style_type 'mod'); returns (high-res IHC, low-res IHC, level logits)."""

    def __init__(self, c: BCIStainerConfig):
        super().__init__()
        bias = c.norm != "batch"
        ch = c.init_channels
        self.inconv = ConvNormAct(3, ch, 7, 1, 3, c.norm)
        self.encoder1 = nn.Sequential(*[ConvNormAct(ch * 2 ** i, ch * 2 ** (i + 1), 3, 2, 1, c.norm)
                                        for i in range(c.encoder1_blocks)])
        dims = ch * 2 ** c.encoder1_blocks
        n2 = int(math.log2(c.full_size / 8)) - c.encoder1_blocks
        self.encoder2 = nn.Sequential(*[ConvNormAct(dims, dims, 3, 2, 1, c.norm) for _ in range(n2)],
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classify_head = nn.Sequential(*([nn.Dropout(c.dropout)] if c.dropout > 0 else []),
                                           nn.Linear(dims, c.levels))
        self.decoder1 = nn.ModuleList(ResnetModBlock(dims, dims, bias, c.attention) for _ in range(c.style_blocks))
        self.lowres_outconv = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dims, 3, 3), nn.Tanh())
        self.decoder2 = nn.Sequential(*[ConvNormAct(ch * 2 ** (c.encoder1_blocks - i),
                                                    ch * 2 ** (c.encoder1_blocks - i - 1), 3, 2, 1, c.norm,
                                                    transpose=True) for i in range(c.encoder1_blocks)])
        self.highres_outconv = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7), nn.Tanh())

    def forward(self, he):
        enc1 = self.encoder1(self.inconv(he))
        style = self.encoder2(enc1)
        level = self.classify_head(style)
        x = enc1
        for block in self.decoder1:
            x = block(x, style)
        return self.highres_outconv(self.decoder2(x)), self.lowres_outconv(x), level


class BCIStainer(Framework):
    name = "bcistainer"
    REFERENCE = REFERENCE
    LEGACY = LEGACY
    family = "gan"
    config_class = BCIStainerConfig

    @classmethod
    def presets(cls):
        return {
            "paper": BCIStainerConfig(),
            # seconds on a CPU: 16 base channels, 3 style blocks, style encoder sized for 128 px.
            "tiny": BCIStainerConfig(full_size=128, init_channels=8, encoder1_blocks=2, style_blocks=3,
                                     d_channels=16, c_channels=8, c_max_channels=64, lr=2e-3, c_lr=1e-3,
                                     epochs=6, warmup_epochs=0.5, start_cmp=2, ema_after=20, ema_every=1,
                                     ema_beta=0.95, ema_power=2 / 3, select=None, batch_size=4, crop=64),
        }

    def __init__(self, config: BCIStainerConfig):
        super().__init__(config)
        from her2core.models.ema import EMA

        c = config
        self.G = init_weights(StainerGenerator(c), "normal", c.init_gain)
        self.D = init_weights(MultiscaleDiscriminator(3, c.d_channels, c.d_layers, c.norm, c.d_depths),
                              "normal", c.init_gain)
        self.C = init_weights(Comparator(c.full_size, c.c_channels, c.c_max_channels, c.levels, c.norm,
                                         c.dropout), "normal", c.init_gain)
        self.G_ema = EMA(self.G, beta=c.ema_beta, update_after_step=c.ema_after, update_every=c.ema_every,
                         power=c.ema_power)

    def needs_scores(self) -> bool:
        return self.config.w_cls > 0 or self.config.w_cmp > 0

    def networks(self):
        return {"G": self.G, "D": self.D, "C": self.C}

    def ema_networks(self):
        return {"G": self.G_ema.model}

    def make_optimizers(self, total_steps, steps_per_epoch):
        from her2core.models.schedules import warmup_cosine

        c = self.config
        out = {}
        for name, net in (("D", self.D), ("G", self.G)):
            opt = torch.optim.AdamW(net.parameters(), lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
            out[name] = (opt, torch.optim.lr_scheduler.LambdaLR(
                opt, warmup_cosine(total_steps, c.epochs, c.warmup_epochs)))
        out["C"] = (torch.optim.AdamW(self.C.parameters(), lr=c.c_lr, betas=tuple(c.c_betas)), None)
        return out

    def training_step(self, batch, ctx):
        c = self.config
        he, ihc, score = batch["he"], batch["ihc"], batch["her2_score"]
        known = score >= 0
        epoch = ctx.step / max(ctx.total_steps, 1) * c.epochs
        with ctx.autocast():
            fake, fake_lr, level = self.G(he)
        logs = {}
        # D (unconditional, smoothed LSGAN targets), loss = mean of fake and real terms.
        self.D.requires_grad_(True)
        with ctx.autocast():
            d_fake = gan_loss(self.D(fake.detach()), False, "lsgan", c.label_smooth)
            d_real = gan_loss(self.D(ihc), True, "lsgan", c.label_smooth)
        ctx.backward(0.5 * (d_fake + d_real))
        ctx.optimizer_step("D")
        logs.update(D_fake=d_fake, D_real=d_real)
        # C: learns HER2 level from real IHC until start_cmp, then frozen.
        use_cmp = epoch >= c.start_cmp
        if not use_cmp and bool(known.any()):
            self.C.train()
            with ctx.autocast():
                logits, _ = self.C(ihc[known])
                c_cls = focal_loss(logits, score[known], c.focal_alpha, c.focal_gamma)
            ctx.backward(c_cls)
            ctx.optimizer_step("C")
            logs["C_cls"] = c_cls
        # G
        self.D.requires_grad_(False)
        with ctx.autocast():
            g_gan = gan_loss(self.D(fake), True, "lsgan")
        low = F.interpolate(ihc, size=fake_lr.shape[-2:], mode="bilinear", align_corners=True)
        g_rec = c.w_rec * (F.l1_loss(fake.float(), ihc) + c.low_weight * F.l1_loss(fake_lr.float(), low))
        g_sim = c.w_sim * ssim_loss(fake, ihc)
        g_cls = (c.w_cls * focal_loss(level[known], score[known], c.focal_alpha, c.focal_gamma)
                 if bool(known.any()) else fake.new_zeros(()))
        loss_g = c.w_gan * g_gan + g_rec + g_sim + g_cls
        if use_cmp and c.w_cmp > 0:
            self.C.eval().requires_grad_(False)
            with ctx.autocast():
                _, lat_fake = self.C(fake)
                _, lat_real = self.C(ihc)
            g_cmp = c.w_cmp * (1 - F.cosine_similarity(lat_fake.float(), lat_real.float().detach(), dim=1)).mean()
            loss_g = loss_g + g_cmp
            logs["G_cmp"] = g_cmp
        ctx.backward(loss_g)
        ctx.optimizer_step("G")
        self.D.requires_grad_(True)
        self.C.requires_grad_(True)
        if ctx.stepping:  # once per optimiser step (upstream: after G_opt.step, trainer.py:130-134)
            self.G_ema.update(self.G)
        logs.update(G_GAN=g_gan, G_rec=g_rec, G_sim=g_sim, G_cls=g_cls, G=loss_g)
        return {k: v.detach() for k, v in logs.items()}

    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        return self.G_ema.model.eval()(he)[0].float().clamp(-1, 1)
