"""DDIB: two unconditional diffusion models, one per stain, bridged through latent noise.

Faithful to suxuann/ddib (docs/references.md): guided-diffusion UNets
(`model_and_diffusion_defaults()` at 256²: 128 ch, mult (1,1,2,2,4,4), attention at ds 16
and 32, 4 heads, scale-shift norm), epsilon prediction with MSE over 1000 linear-beta
steps, AdamW lr 1e-4 (wd 0), EMA 0.9999. Translation: DDIM reverse ODE with the H&E model
(eta 0, no clipping) to x_T, then deterministic DDIM with the HER2 model (clipping), both
over a respaced step count (`ddimN`). The encode runs on to alphā = 0 as upstream
(`encode_to_zero`, the `paper` default); `encode_to_zero: false` stops it at the level the
decode starts from, which an imperfect model reconstructs much better (see `ddim_encode`).
Tiles are resized to `image_size` (the whole tile, as guided-diffusion's loader) and back.

Pairs are never used: each model learns its own stain, so the two can be trained from
unpaired folders. `domains` selects which model(s) a run trains; a batch missing a stain
key (an unpaired loader) trains only the models whose stain it carries.
`training.runs.combine_ddib_runs(he_model_run, ihc_model_run)` joins two single-stain runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from her2core.models.base import PRECISION_NOTE, Framework, StepContext
from her2core.models.diffusion.common import (
    eval_mode,
    frozen_copy,
    in_chunks,
    input_defaults,
    resized,
)
from her2core.models.diffusion.ddim import (
    DECODERS,
    GaussianDiffusion,
    diffusers_scheduler,
    scheduler_decode,
)
from her2core.models.diffusion.unet import UNet, UNetConfig, build_unet
from her2core.models.ema import ema_update

STAINS = ("he", "ihc")


def _paper_unet() -> UNetConfig:
    return UNetConfig(in_channels=3, out_channels=3, model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4),
                      num_res_blocks=2, attention_ds=(16, 32), num_heads=4, num_head_channels=-1,
                      use_scale_shift_norm=True, resblock_updown=False)



_GD = "suxuann/ddib:guided_diffusion/"
#: Settings of runs written before these fields existed (see Framework.LEGACY).
LEGACY = {"input": "native"}
#: The reference value and its source for every `paper` setting (see Framework.reference_recipe).
REFERENCE = {
    "precision": ("fp32", _GD + "script_util.py:64 (use_fp16 False)", PRECISION_NOTE),
    "unet": ("model_and_diffusion_defaults() at 256 px", _GD + "script_util.py:48-66",
             "parameter count pinned in docs/references.md"),
    "num_timesteps": (1000, _GD + "script_util.py:18 (noise_schedule linear)", ""),
    "domains": (("he", "ihc"), "suxuann/ddib:scripts/imagenet_translation.py:120-145 (source, target model)", ""),
    "encode_steps": (None, _GD + "script_util.py:20 (timestep_respacing '' = all 1000)",
                     "250 respaced DDIM steps (upstream's --timestep_respacing ddim250)"),
    "decode_steps": (None, _GD + "script_util.py:20 (timestep_respacing '' = all 1000)",
                     "250 respaced DDIM steps (upstream's --timestep_respacing ddim250)"),
    "encode_to_zero": (True, _GD + "gaussian_diffusion.py ddim_reverse_sample_loop (all respaced steps)",
                       "False (tiny): the encode stops where the decode starts"),
    "sample_batch": (None, "suxuann/ddib:scripts/imagenet_translation.py", "memory only"),
    "lr": (1e-4, "suxuann/ddib:scripts/synthetic_train.py:59", ""),
    "weight_decay": (0.0, "suxuann/ddib:scripts/synthetic_train.py:60", ""),
    "ema_rate": (0.9999, "suxuann/ddib:scripts/synthetic_train.py:64", ""),
    "batch_size": (None, "suxuann/ddib (no image training script)",
                   "no reference value for images; 8 is ours"),
    "input": ("resize", _GD + "image_datasets.py center_crop_arr (whole image at image_size)", ""),
    "image_size": (256, "docs/references.md (256 px configuration)", ""),
    "crop": (None, _GD + "image_datasets.py (no crop of the resized image)", "used only by input 'native'"),
    "augment": ("hflip", _GD + "image_datasets.py:20 (random_flip True)", ""),
    "epochs": (None, _GD + "train_util.py (runs until stopped)", "no reference length; 100 epochs is ours"),
}

@dataclass
class DDIBConfig:
    unet: UNetConfig = field(default_factory=_paper_unet)
    num_timesteps: int = 1000
    domains: tuple = ("he", "ihc")  # which stain model(s) this run trains
    # respaced DDIM steps for encoding (H&E model) and decoding (HER2 model); `steps=` overrides both
    encode_steps: int = 250
    decode_steps: int = 250
    # True: upstream's last step to alphā = 0; False: stop the encode at the level the decode
    # starts from (see GaussianDiffusion.ddim_encode)
    encode_to_zero: bool = True
    sample_batch: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rate: float = 0.9999
    # data (engine defaults): guided-diffusion trains on whole images resized to image_size
    # (image_datasets.py center_crop_arr) with random horizontal flips and has no epoch count (it
    # runs until stopped); 100 epochs is our default, not the reference's.
    batch_size: int = 8
    input: str = "resize"  # "resize": whole tile <-> image_size (reference); "native": crops of `crop` px
    image_size: int = 256
    crop: int | None = 256  # used by input "native" only
    augment: str = "hflip"
    epochs: float = 100


class DDIB(Framework):
    name = "ddib"
    REFERENCE = REFERENCE
    LEGACY = LEGACY
    family = "dm"
    config_class = DDIBConfig
    SCHEDULERS = DECODERS  # the decode's sampler; the encode is always guided-diffusion's reverse DDIM

    @classmethod
    def presets(cls):
        return {
            "paper": DDIBConfig(),
            "tiny": DDIBConfig(
                unet=UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2, 4),
                                num_res_blocks=1, attention_ds=(4,), num_heads=2, use_scale_shift_norm=True,
                                norm_groups=8),
                encode_steps=50, decode_steps=50, encode_to_zero=False, lr=1e-3, ema_rate=0.95, batch_size=8, crop=None, input="native", epochs=50),
        }

    def __init__(self, config: DDIBConfig):
        super().__init__(config)
        bad = [d for d in config.domains if d not in STAINS]
        if bad or not config.domains:
            from her2core.errors import UserError
            raise UserError(f"ddib: domains must be a non-empty subset of {STAINS}, got {tuple(config.domains)}")
        self.unet_he = build_unet(config.unet)
        self.unet_ihc = build_unet(config.unet)
        self.ema_he = frozen_copy(self.unet_he)
        self.ema_ihc = frozen_copy(self.unet_ihc)
        self.diffusion = GaussianDiffusion(config.num_timesteps)

    def training_defaults(self):
        return {**super().training_defaults(), **input_defaults(self.config)}

    def networks(self) -> dict[str, nn.Module]:
        return {"unet_he": self.unet_he, "unet_ihc": self.unet_ihc}

    def ema_networks(self) -> dict[str, nn.Module]:
        return {"unet_he": self.ema_he, "unet_ihc": self.ema_ihc}

    def make_optimizers(self, total_steps: int, steps_per_epoch: int):
        c = self.config
        return {f"unet_{d}": (torch.optim.AdamW(getattr(self, f"unet_{d}").parameters(), lr=c.lr,
                                                weight_decay=c.weight_decay), None)
                for d in c.domains}

    def loss(self, net: UNet, x0: torch.Tensor) -> torch.Tensor:
        """guided-diffusion training loss: MSE of the predicted noise at uniform t."""
        t = torch.randint(0, self.config.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        pred = net(self.diffusion.q_sample(x0, t, noise), t).float()
        return (pred - noise).pow(2).mean()

    def training_step(self, batch, ctx: StepContext):
        logs = {}
        for d in self.config.domains:
            if d not in batch:
                continue
            net = getattr(self, f"unet_{d}")
            with ctx.autocast():
                loss = self.loss(net, batch[d].to(ctx.device))
            ctx.backward(loss)
            ctx.optimizer_step(f"unet_{d}")
            if ctx.stepping:  # once per optimiser step when the engine accumulates micro-batches
                ema_update(getattr(self, f"ema_{d}"), net, self.config.ema_rate)
            logs[f"loss_{d}"] = float(loss.detach())
        if not logs:
            from her2core.errors import UserError
            raise UserError(f"ddib: the batch holds none of the stains this run trains {tuple(self.config.domains)}")
        return logs

    # -- inference ----------------------------------------------------
    def encode(self, x: torch.Tensor, *, stain: str = "he", steps: int | None = None) -> torch.Tensor:
        """Image -> latent noise by the DDIM reverse ODE of the `stain` model (eta 0, no clipping)."""
        net = getattr(self, f"ema_{stain}")
        with eval_mode(net), torch.no_grad():
            return self.diffusion.ddim_encode(net, x.float(), steps=steps or self.config.encode_steps, clip=False,
                                              to_zero=self.config.encode_to_zero)

    def decode(self, z: torch.Tensor, *, stain: str = "ihc", steps: int | None = None,
               clip: bool = True) -> torch.Tensor:
        """Latent noise -> image by deterministic DDIM of the `stain` model.

        clip=True (upstream's translation) clips each x0 estimate to [-1, 1]; clip=False is the exact
        inverse of `encode` (which never clips), the one to use for cycle/reconstruction checks.
        """
        net = getattr(self, f"ema_{stain}")
        steps = steps or self.config.decode_steps
        with eval_mode(net), torch.no_grad():
            if self.scheduler_name != "ddim":
                sched = diffusers_scheduler(self.scheduler_name, self.config.num_timesteps, clip)
                return scheduler_decode(net, z, sched, steps=steps)
            return self.diffusion.ddim_decode(net, z.float(), steps=steps, clip=clip)

    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        """H&E -> HER2. Deterministic (eta 0 both ways), so `generator` is not used."""
        multiple = self.unet_he.downsample_factor

        def run(x):
            z = self.encode(x, stain="he", steps=steps)
            return self.decode(z, stain="ihc", steps=steps)

        return resized(lambda x: in_chunks(run, x, self.config.sample_batch, multiple), he.float(), self.config)

    @classmethod
    def combine(cls, he_fw: DDIB, ihc_fw: DDIB, *, sources: tuple[str, str] = ("H&E run", "HER2 run")) -> DDIB:
        """One DDIB from two single-stain models (each trained on its own unpaired folder);
        `training.runs.combine_ddib_runs` loads them from their run folders."""
        from her2core.errors import UserError

        for source, fw in zip(sources, (he_fw, ihc_fw)):
            if not isinstance(fw, cls):
                raise UserError(f"{source}: not a ddib run ({type(fw).__name__})")
        from her2core.util.configs import replace

        if he_fw.config.unet != ihc_fw.config.unet:
            raise UserError(f"{sources[1]}: its UNet settings differ from {sources[0]}'s; train both "
                            "with one preset")
        out = cls(replace(he_fw.config, domains=("he", "ihc")))
        out.unet_he.load_state_dict(he_fw.unet_he.state_dict())
        out.ema_he.load_state_dict(he_fw.ema_he.state_dict())
        out.unet_ihc.load_state_dict(ihc_fw.unet_ihc.state_dict())
        out.ema_ihc.load_state_dict(ihc_fw.ema_ihc.state_dict())
        return out
