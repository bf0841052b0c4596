"""BBDM: a Brownian bridge from the H&E image to the HER2 image, in pixel space.

Faithful to xuekt98/BBDM `configs/Template-BBDM.yaml` + `BrownianBridgeModel.py`
(docs/references.md): linear m_t 0.001 -> 0.999 over 1000 steps, delta_t =
2(m_t - m_t^2) max_var, the "grad" objective with L1 loss, the H&E image concatenated
to the UNet input (6 channels), 200-step skip sampling with eta 1 and x0 clipped to
[-1, 1], Adam 1e-4 with ReduceLROnPlateau, EMA 0.995 every 8 steps from step 30k.

Training as upstream: `weights_init` (runners/utils.py:35-45, applied at
BBDMRunner.py:28) redraws every Conv2d and Linear weight from N(0, 0.02) (biases kept,
the zero-initialised output convolutions overwritten, the Conv1d attention projections
untouched); batch 8 with 2 accumulated micro-batches whose gradients are added, not
averaged (BaseRunner.py:411-415); the whole tile resized to 256 px for training and test,
no flips (Template-BBDM.yaml `flip: False`, datasets/base.py:28), and here the output is
resized back to the tile's size. `input: native` trains on native-scale 256 px crops and
translates whole tiles instead.

Where we differ: the upstream template's `image_size: 64` bug (issue #47) cannot occur
(the UNet takes any size divisible by 4); one sample per input rather than `sample_num: 5`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from her2core.models.base import PRECISION_NOTE, Framework, StepContext
from her2core.models.diffusion.bridge import BrownianBridge
from her2core.models.diffusion.common import (
    PlateauOnLoss,
    eval_mode,
    frozen_copy,
    in_chunks,
    input_defaults,
    resized,
)
from her2core.models.diffusion.unet import UNetConfig, build_unet
from her2core.models.ema import ema_update


def _paper_unet() -> UNetConfig:
    # UNetParams of Template-BBDM.yaml. attention_resolutions (32,16,8) are compared with the
    # downsample factor (1, 2, 4 here), so only the middle block has attention, as upstream.
    return UNetConfig(in_channels=6, out_channels=3, model_channels=128, channel_mult=(1, 4, 8),
                      num_res_blocks=2, attention_ds=(32, 16, 8), num_heads=8, num_head_channels=64,
                      use_scale_shift_norm=True, resblock_updown=True)



_BB = "xuekt98/BBDM:"
_TPL = _BB + "configs/Template-BBDM.yaml:"
#: Settings of runs written before these fields existed (see Framework.LEGACY).
LEGACY = {"init": "unet", "input": "native", "accumulate_reduction": "sum", "accumulate": 1}
#: The reference value and its source for every `paper` setting (see Framework.reference_recipe).
REFERENCE = {
    "precision": ("fp32", _BB + "runners/BaseRunner.py (no autocast)", PRECISION_NOTE),
    "unet": ("UNetParams (pixel)", _TPL + "81-103", "parameter count pinned in docs/references.md"),
    "num_timesteps": (1000, _TPL + "77", ""),
    "max_var": (1.0, _TPL + "79", ""),
    "objective": ("grad", _TPL + "70", ""),
    "loss": ("l1", _TPL + "71", ""),
    "sample_steps": (200, _TPL + "75 (skip_sample, linear)", ""),
    "eta": (1.0, _TPL + "78", ""),
    "clip_denoised": (True, _TPL + "12", ""),
    "sample_batch": (8, _TPL + "31 (test batch)", "memory only; outputs do not depend on it"),
    "lr": (1e-4, _TPL + "58", ""),
    "betas": ((0.9, 0.999), _TPL + "59; runners/utils.py:50-51", ""),
    "weight_decay": (0.0, _TPL + "56", ""),
    "plateau_factor": (0.5, _TPL + "62", ""),
    "plateau_patience": (3000, _TPL + "63", ""),
    "plateau_cooldown": (3000, _TPL + "65", ""),
    "plateau_min_lr": (5e-7, _TPL + "66", ""),
    "plateau_threshold": (1e-4, _TPL + "64", ""),
    "use_ema": (True, _TPL + "44", ""),
    "ema_decay": (0.995, _TPL + "45", ""),
    "ema_every": (8, _TPL + "46; runners/BaseRunner.py:422 (x accumulate micro-batches)", ""),
    "ema_start": (30000, _TPL + "47; runners/BaseRunner.py:174 (global step = micro-batches)", ""),
    "init": ("reference", _BB + "runners/utils.py:35-45, DiffusionBasedModelRunners/BBDMRunner.py:28", ""),
    "batch_size": (8, _TPL + "25", ""),
    "accumulate": (2, _TPL + "9", ""),
    "accumulate_reduction": ("sum", _BB + "runners/BaseRunner.py:411-415 (loss not divided)", ""),
    "input": ("resize", _BB + "datasets/base.py:28 (transforms.Resize(image_size))", ""),
    "image_size": (256, _TPL + "20", ""),
    "crop": (256, _BB + "datasets/custom.py (no crop)", "used only by input 'native'"),
    "augment": ("none", _TPL + "23 (flip False)", ""),
    "epochs": (200, _TPL + "4 (n_steps 400000 caps it)", ""),
}

@dataclass
class BBDMConfig:
    unet: UNetConfig = field(default_factory=_paper_unet)
    num_timesteps: int = 1000
    max_var: float = 1.0
    objective: str = "grad"
    loss: str = "l1"  # "l1" or "l2"
    # sampling (upstream: skip_sample, sample_type linear, sample_step 200, eta 1, clip in pixel space)
    sample_steps: int = 200
    eta: float = 1.0
    clip_denoised: bool = True
    sample_batch: int = 8  # tiles per sampler batch (bounded memory)
    # optimisation (upstream: Adam lr 1e-4, beta1 0.9, wd 0; ReduceLROnPlateau on the training loss)
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 3000
    plateau_cooldown: int = 3000
    plateau_min_lr: float = 5e-7
    plateau_threshold: float = 1e-4
    # EMA: upstream 0.995, updated every 8 optimiser steps; before ema_start the shadow is a plain
    # copy. ema_start counts upstream's global steps, i.e. micro-batches (BaseRunner.py:174, 422)
    use_ema: bool = True
    ema_decay: float = 0.995
    ema_every: int = 8
    ema_start: int = 30000
    init: str = "reference"  # "reference": weights_init N(0, 0.02); "unet": the UNet's own (zero outputs)
    # data (read by the engine via training_defaults): upstream trains batch 8 with 2 accumulated
    # micro-batches (gradients summed) on whole tiles resized to 256 px, no flips
    batch_size: int = 8
    accumulate: int = 2
    accumulate_reduction: str = "sum"
    input: str = "resize"  # "resize": whole tile <-> image_size (upstream); "native": crops of `crop` px
    image_size: int = 256
    crop: int | None = 256  # used by input "native" only
    augment: str = "none"
    epochs: float = 200


def reference_weights_init(net: nn.Module) -> nn.Module:
    """BBDM's `weights_init`: every Conv2d / Linear weight ~ N(0, 0.02); biases, Conv1d, norms kept.

    Upstream's attention projections are Conv1d, which it leaves alone; ours are the Linear
    layers of diffusers' `Attention`, so those are skipped to keep upstream's initialisation.
    """
    attention = {id(m) for a in net.modules() if isinstance(a, Attention) for m in a.modules()}
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in attention:
            nn.init.normal_(m.weight, 0.0, 0.02)
    return net


class BBDM(Framework):
    name = "bbdm"
    REFERENCE = REFERENCE
    LEGACY = LEGACY
    family = "dm"
    config_class = BBDMConfig
    SCHEDULERS = ("bridge",)  # diffusers' schedulers end at noise; the bridge ends at the H&E image

    @classmethod
    def presets(cls):
        return {
            "paper": BBDMConfig(),
            "tiny": BBDMConfig(
                unet=UNetConfig(in_channels=6, out_channels=3, model_channels=16, channel_mult=(1, 2, 4),
                                num_res_blocks=1, attention_ds=(4,), num_heads=2, num_head_channels=-1,
                                use_scale_shift_norm=True, resblock_updown=True, norm_groups=8),
                sample_steps=20, lr=1e-3, plateau_patience=200, plateau_cooldown=200,
                ema_decay=0.95, ema_every=1, ema_start=0, init="unet", input="native",
                batch_size=8, accumulate=1, crop=None, augment="hflip", epochs=50),
        }

    def __init__(self, config: BBDMConfig):
        super().__init__(config)
        self.unet = build_unet(config.unet)
        if config.init == "reference":
            reference_weights_init(self.unet)
        elif config.init != "unet":
            from her2core.errors import UserError
            raise UserError(f"bbdm: init {config.init!r}; use 'reference' or 'unet'")
        self.unet_ema = frozen_copy(self.unet) if config.use_ema else None
        self.bridge = BrownianBridge(config.num_timesteps, config.max_var, config.objective)
        self._scheduler: PlateauOnLoss | None = None

    def training_defaults(self):
        return {**super().training_defaults(), **input_defaults(self.config)}

    def networks(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def ema_networks(self) -> dict[str, nn.Module]:
        return {"unet": self.unet_ema} if self.unet_ema is not None else {}

    def make_optimizers(self, total_steps: int, steps_per_epoch: int):
        c = self.config
        opt = torch.optim.Adam(self.unet.parameters(), lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        self._scheduler = PlateauOnLoss(opt, factor=c.plateau_factor, patience=c.plateau_patience,
                                        cooldown=c.plateau_cooldown, min_lr=c.plateau_min_lr,
                                        threshold=c.plateau_threshold, threshold_mode="rel")
        return {"unet": (opt, self._scheduler)}

    def loss(self, he: torch.Tensor, ihc: torch.Tensor) -> torch.Tensor:
        """Bridge loss at uniform t: x0 = IHC, y = H&E (upstream `p_losses`)."""
        n = ihc.shape[0]
        t = torch.randint(0, self.config.num_timesteps, (n,), device=ihc.device)
        noise = torch.randn_like(ihc)
        x_t, target = self.bridge.q_sample(ihc, he, t, noise)
        pred = self.unet(torch.cat([x_t, he], dim=1), t).float()
        diff = pred - target
        return diff.abs().mean() if self.config.loss == "l1" else diff.pow(2).mean()

    def training_step(self, batch, ctx: StepContext):
        he, ihc = batch["he"].to(ctx.device), batch["ihc"].to(ctx.device)
        with ctx.autocast():
            loss = self.loss(he, ihc)
        ctx.backward(loss)
        ctx.optimizer_step("unet")
        value = float(loss.detach())
        if self._scheduler is not None:
            self._scheduler.last_loss = value
        c = self.config
        if self.unet_ema is not None and ctx.stepping and (ctx.step + 1) % c.ema_every == 0:
            micro_batches = (ctx.step + 1) * ctx.accumulate  # upstream's global step
            ema_update(self.unet_ema, self.unet, c.ema_decay if micro_batches >= c.ema_start else 0.0)
        return {"loss": value}

    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        c = self.config
        net = self.unet_ema if self.unet_ema is not None else self.unet
        multiple = net.downsample_factor

        def run(y):
            def denoise(x_t, t):
                return net(torch.cat([x_t, y], dim=1), t)
            return self.bridge.sample(denoise, y, steps=steps or c.sample_steps, eta=c.eta,
                                      clip_denoised=c.clip_denoised, generator=generator)

        with eval_mode(net):
            return resized(lambda x: in_chunks(run, x, c.sample_batch, multiple), he.float(), c)
