"""Conditional consistency model: one- or few-step H&E -> HER2 by consistency training.

Faithful to openai/consistency_models (docs/references.md), LSUN-256 CT settings: ADM
UNet (256 ch, mult (1,1,2,2,4,4), attention at ds 8/16/32, 64-channel heads,
resblock_updown, no scale-shift), Karras/EDM preconditioning with the boundary condition
(sigma_min 0.002, sigma_max 80, rho 7, sigma_data 0.5, network time 250 ln sigma),
consistency training with progressive N(k) 2 -> 150 and adaptive target EMA from 0.95, LPIPS
loss, RAdam lr 5e-5 (wd 0), sampling onestep or multistep ts (0, 67, 150) on 151 points.

Schedule (`schedule`): the reference sizes N(k) for its 1M steps and samples from an EMA of
rate 0.9999432189950708 (a 17,606-step window, 1.76 % of the run). `run` (default) stretches
N(k) over this run's real length and keeps the EMA window the same fraction of the run, so a
2k-step run reaches N = 150 and its EMA forgets the initialisation as the reference's does by
its end; `reference` is the literal 1M-step schedule and rate (`ct_total_steps`, `ema_rate`
override either). Both resolved values are recorded in run.json ("recipe").

Where we differ:
- conditioning (not in the reference repo): the H&E image is concatenated to the c_in-scaled
  noisy input (6 input channels); the condition is not scaled;
- loss: LPIPS as the reference (see lpips_loss.py) whenever the VGG-16 weights are on this
  machine; without them L2 (the reference's `loss_norm=l2`), recorded in run.json as a fallback;
  never an LPIPS with a random backbone;
- one EMA shadow (the one the reference samples from) instead of three, to keep the 526M
  model's memory bounded;
- distillation: instead of CD along a diffusion teacher's PF-ODE (the reference needs an EDM
  teacher of the same noise process, which BBDM is not), `distill_from` names a trained run
  (e.g. BBDM) whose translations replace the IHC target in consistency training — the model
  then learns the teacher's output distribution in one step. Documented, optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from her2core.models.base import PRECISION_NOTE, Framework, StepContext
from her2core.models.diffusion import karras
from her2core.models.diffusion.common import (
    eval_mode,
    frozen_copy,
    in_chunks,
    input_defaults,
    resized,
)
from her2core.models.diffusion.unet import UNetConfig, build_unet
from her2core.models.ema import ema_update

REFERENCE_STEPS = 1_000_000  # scripts/launch.sh:41 (CT LSUN-256: --total_training_steps 1000000)
REFERENCE_EMA_RATE = 0.9999432189950708  # scripts/launch.sh:41 (--ema_rate ...,0.9999432189950708)


def resolve_schedule(c, total_steps: int) -> tuple[int, float]:
    """(steps N(k) grows over, sampling EMA rate) for a run of `total_steps` (see module docstring)."""
    if c.schedule not in ("run", "reference"):
        from her2core.errors import UserError
        raise UserError(f"consistency: schedule {c.schedule!r}; use 'run' or 'reference'")
    length = REFERENCE_STEPS if c.schedule == "reference" else max(int(total_steps), 1)
    ct_steps = c.ct_total_steps or length
    if c.ema_rate is not None:
        return ct_steps, c.ema_rate
    if c.schedule == "reference":
        return ct_steps, REFERENCE_EMA_RATE
    # same averaging window 1 / (1 - rate) as a fraction of the run as the reference's
    window = length / (REFERENCE_STEPS / (1.0 / (1.0 - REFERENCE_EMA_RATE)))
    return ct_steps, (1.0 - 1.0 / window) if window > 1.0 else 0.0


def _paper_unet() -> UNetConfig:
    return UNetConfig(in_channels=6, out_channels=3, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4),
                      num_res_blocks=2, attention_ds=(8, 16, 32), num_heads=4, num_head_channels=64,
                      use_scale_shift_norm=False, resblock_updown=True, dropout=0.0)



_CM = "openai/consistency_models:"
_CT = _CM + "scripts/launch.sh:41 (CT LSUN-256) "
#: Settings of runs written before these fields existed (see Framework.LEGACY).
LEGACY = {"input": "native", "schedule": "reference"}
#: The reference value and its source for every `paper` setting (see Framework.reference_recipe).
REFERENCE = {
    "precision": ("fp16", _CT + "--use_fp16 True", PRECISION_NOTE),
    "unet": ("LSUN-256 flags, 6 input channels", _CT,
             ("conditioning (H&E concatenated) is ours; parameter count pinned in docs/references.md")),
    "karras": ("sigma_min 0.002, sigma_max 80, rho 7, sigma_data 0.5", _CM + "cm/karras_diffusion.py:36-40", ""),
    "start_scales": (2, _CT + "--start_scales 2", ""),
    "end_scales": (150, _CT + "--end_scales 150", ""),
    "start_ema": (0.95, _CT + "--start_ema 0.95 (target_ema_mode adaptive)", ""),
    "schedule": ("reference", _CT + "--total_training_steps 1000000",
                 "'run': N(k) and the EMA window scaled to this run's length ('reference' available)"),
    "ct_total_steps": (1_000_000, _CT + "--total_training_steps 1000000", "None: from `schedule`"),
    "loss": ("lpips", _CT + "--loss_norm lpips; cm/karras_diffusion.py:52",
             "L2 when the VGG-16 weights are not on this machine (recorded in run.json)"),
    "lpips_weights": (None, _CM + "cm/karras_diffusion.py:52 (piq downloads them)", "a local file only"),
    "optimizer": ("radam", _CM + "cm/train_util.py:82", ""),
    "lr": (5e-5, _CT + "--lr 0.00005", ""),
    "weight_decay": (0.0, _CT + "--weight_decay 0.0", ""),
    "ema_rate": (0.9999432189950708, _CT + "--ema_rate 0.9999,0.99994,0.9999432189950708",
                 "None: the same window as a fraction of the run (one shadow instead of three)"),
    "sample_steps": (1, _CM + "scripts/launch.sh:51 (onestep)", ""),
    "sample_grid": (151, _CM + "scripts/launch.sh:89 (--steps 151)", ""),
    "sample_ts": ((0, 67, 150), _CM + "scripts/launch.sh:89 (--ts 0,67,150)", ""),
    "sample_batch": (32, _CM + "scripts/launch.sh:89 (--batch_size 32)", "memory only"),
    "distill_from": (None, _CM + "cm_train.py (CD needs an EDM teacher)", "optional, ours"),
    "teacher_steps": (None, _CM + "cm_train.py", "optional, ours"),
    "batch_size": (256, _CT + "--global_batch_size 256", ""),
    "input": ("resize", _CM + "cm/image_datasets.py:126-137 (center_crop_arr at image_size)", ""),
    "image_size": (256, _CT + "--image_size 256", ""),
    "crop": (None, _CM + "cm/image_datasets.py (no crop of the resized image)", "used only by input 'native'"),
    "augment": ("hflip", _CM + "cm/image_datasets.py:115 (random_flip)", ""),
    "epochs": (None, _CT + "counts steps, not epochs", "100 epochs is ours; the schedule follows the run"),
}

@dataclass
class ConsistencyConfig:
    unet: UNetConfig = field(default_factory=_paper_unet)
    karras: karras.KarrasConfig = field(default_factory=karras.KarrasConfig)
    # consistency training (reference LSUN-256 CT: progressive 2 -> 150 over 1M steps, adaptive EMA 0.95)
    start_scales: int = 2
    end_scales: int = 150
    start_ema: float = 0.95
    schedule: str = "run"  # "run": N(k) and EMA window scaled to this run's length; "reference": 1M steps
    ct_total_steps: int | None = None  # explicit N(k) length; None: from `schedule`
    # "lpips" (reference; L2 fallback when the VGG-16 weights are missing), "l2" or "pseudo_huber"
    loss: str = "lpips"
    lpips_weights: str | None = None  # torchvision vgg16-397923af.pth; None: $HER2_LPIPS_VGG_WEIGHTS / hub
    # RAdam as the reference; its rectification acts as a warm-up over ~1/(1 - beta2) = 1000 steps,
    # longer than a tiny run, so `tiny` uses Adam
    optimizer: str = "radam"  # "radam" or "adam"
    lr: float = 5e-5
    weight_decay: float = 0.0
    ema_rate: float | None = None  # None: from `schedule` (reference: 0.9999432189950708 over 1M steps)
    # sampling: NFE (1 = onestep); the reference's tuned multistep ts on a 151-point grid
    sample_steps: int = 1
    sample_grid: int = 151
    sample_ts: tuple = (0, 67, 150)
    sample_batch: int = 8
    # optional distillation from a trained run (see module docstring)
    distill_from: str | None = None
    teacher_steps: int | None = None
    # data (engine defaults): the reference LSUN-256 CT run uses global batch 256 for 1M steps on
    # whole images resized to 256 (cm/image_datasets.py center_crop_arr) with random flips; it
    # counts steps, not epochs (epochs is our default; the schedule follows the run's length).
    batch_size: int = 256
    input: str = "resize"  # "resize": whole tile <-> image_size (reference); "native": crops of `crop` px
    image_size: int = 256
    crop: int | None = 256  # used by input "native" only
    augment: str = "hflip"
    epochs: float = 100


class ConsistencyModel(Framework):
    name = "consistency"
    REFERENCE = REFERENCE
    LEGACY = LEGACY
    family = "dm"
    config_class = ConsistencyConfig
    # upstream's stochastic_iterative_sampler (onestep at one evaluation): ours, or diffusers'
    # CMStochasticIterativeScheduler (equal to float rounding; see karras.sample_cm_scheduler)
    SCHEDULERS = ("multistep", "cm-diffusers")

    @classmethod
    def presets(cls):
        return {
            "paper": ConsistencyConfig(),
            "tiny": ConsistencyConfig(
                unet=UNetConfig(in_channels=6, out_channels=3, model_channels=16, channel_mult=(1, 2, 4),
                                num_res_blocks=1, attention_ds=(4,), num_heads=2, use_scale_shift_norm=False,
                                resblock_updown=True, norm_groups=8),
                start_ema=0.0, end_scales=10, loss="l2", optimizer="adam", lr=1e-3, ema_rate=0.95,
                sample_grid=21, sample_ts=(0, 9, 20),
                batch_size=8, crop=None, input="native", epochs=50),
        }

    def __init__(self, config: ConsistencyConfig):
        super().__init__(config)
        if isinstance(config.karras, dict):  # tolerate a plain dict from hand-written JSON
            config.karras = karras.KarrasConfig(**config.karras)
        self.unet = build_unet(config.unet)
        self.target = frozen_copy(self.unet)  # the CT target network (adaptive EMA mu(k))
        self.unet_ema = frozen_copy(self.unet)  # the sampling EMA
        self._teacher: Framework | None = None
        self._total_steps = config.ct_total_steps or 1
        self._ema_rate = config.ema_rate if config.ema_rate is not None else REFERENCE_EMA_RATE
        self._loss_used = config.loss
        self._lpips: list = []  # the LPIPS network, kept out of state_dict (not a submodule)

    def training_defaults(self):
        return {**super().training_defaults(), **input_defaults(self.config)}

    def networks(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def ema_networks(self) -> dict[str, nn.Module]:
        return {"unet": self.unet_ema}

    def make_optimizers(self, total_steps: int, steps_per_epoch: int):
        c = self.config
        self._total_steps, self._ema_rate = resolve_schedule(c, total_steps)
        self._loss_used = self._resolve_loss()
        if c.optimizer not in ("radam", "adam"):
            from her2core.errors import UserError
            raise UserError(f"consistency: optimizer {c.optimizer!r}; use 'radam' or 'adam'")
        cls = torch.optim.RAdam if c.optimizer == "radam" else torch.optim.Adam
        opt = cls(self.unet.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        return {"unet": (opt, None)}

    def _resolve_loss(self) -> str:
        c = self.config
        if c.loss != "lpips":
            return c.loss
        from her2core.models.diffusion import lpips_loss

        weights = lpips_loss.find_vgg_weights(c.lpips_weights)
        if weights is None:
            import warnings

            warnings.warn(f"consistency: {lpips_loss.missing_message()}; training with L2 instead", stacklevel=2)
            return "l2"
        self._lpips = [lpips_loss.LPIPSLoss(weights)]
        return "lpips"

    def resolved_recipe(self) -> dict:
        c = self.config
        out = {"ct_total_steps": self._total_steps, "ema_rate": self._ema_rate, "loss": self._loss_used}
        if c.loss == "lpips" and self._loss_used != "lpips":
            from her2core.models.diffusion import lpips_loss

            out["loss_fallback"] = f"l2, because {lpips_loss.missing_message()}"
        return out

    def _loss(self, pred, target):
        if self._loss_used == "lpips":
            net = self._lpips[0].to(pred.device)
            return net(pred, target)
        return karras.consistency_loss(pred, target, self._loss_used)

    # -- distillation (optional) -------------------------------------
    def attach_teacher(self, teacher: Framework) -> None:
        """Use `teacher.translate` outputs as training targets (see module docstring)."""
        self._teacher = teacher.eval().requires_grad_(False)

    def _targets(self, he, ihc):
        if self._teacher is None and self.config.distill_from:  # the training engine attaches it
            raise RuntimeError(f"distill_from={self.config.distill_from!r}: no teacher attached; "
                               "call attach_teacher(load_run(...)) before training")
        if self._teacher is None:
            return ihc
        return self._teacher.translate(he, steps=self.config.teacher_steps).to(ihc.dtype)

    # -- training -----------------------------------------------------
    def scales_and_target_ema(self, step: int) -> tuple[int, float]:
        c = self.config
        return karras.ct_scales_and_ema(step, self._total_steps, c.start_scales, c.end_scales, c.start_ema)

    def training_step(self, batch, ctx: StepContext):
        he, ihc = batch["he"].to(ctx.device), batch["ihc"].to(ctx.device)
        x0 = self._targets(he, ihc)
        num_scales, mu = self.scales_and_target_ema(ctx.step)
        k = self.config.karras
        x_t, t, x_t2, t2 = karras.ct_pair(x0, num_scales, k)
        with ctx.autocast():
            pred = karras.denoise(self.unet, x_t, t, he, k)
            with torch.no_grad():
                # dropout RNG state is not re-synchronised: dropout is 0 as in the reference CT runs
                target = karras.denoise(self.target, x_t2, t2, he, k)
            loss = self._loss(pred, target.detach()).mean()
        ctx.backward(loss)
        ctx.optimizer_step("unet")
        if ctx.stepping:  # once per optimiser step when the engine accumulates micro-batches
            ema_update(self.target, self.unet, mu)
            ema_update(self.unet_ema, self.unet, self._ema_rate)
        return {"loss": float(loss.detach()), "num_scales": float(num_scales), "target_ema": mu}

    # -- inference ----------------------------------------------------
    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        c = self.config
        nfe = steps or c.sample_steps
        ts = karras.multistep_ts(nfe, c.sample_grid, tuple(c.sample_ts))
        net = self.unet_ema

        sampler = karras.sample_cm_scheduler if self.scheduler_name == "cm-diffusers" else karras.sample

        def run(cond):
            return sampler(net, cond, c.karras, ts=ts, grid=c.sample_grid, generator=generator)

        with eval_mode(net):
            return resized(lambda x: in_chunks(run, x, c.sample_batch, net.downsample_factor), he.float(), c)
