"""The ADM ("openai") UNet of the three diffusion frameworks, built as a diffusers `UNet2DModel`.

guided-diffusion (DDIB), openai/consistency_models and BBDM's LDM-derived `openaimodel.py`
share one UNet design, and diffusers' `UNet2DModel` expresses all three exactly, block for
block: the same parameter counts (pinned in tests against docs/references.md) and the same
outputs given the same weights (`benchmarks/reference_import.py`, against the reference code).
The settings that make it exact (`build_unet`):
- ADM's ResBlocks = `ResnetBlock2D` (scale-shift norm = `resnet_time_scale_shift="scale_shift"`);
  `resblock_updown` = `ResnetDownsampleBlock2D`/`ResnetUpsampleBlock2D` and the resnet
  down/upsamplers of the attention blocks; attention chosen per level by downsample factor;
- the ~1,000-parameter gap of the obvious settings is the GroupNorm of the middle block's
  attention: with scale-shift ResBlocks diffusers drops it (`attn_groups=None`) unless
  `attn_norm_num_groups` is given, while ADM always normalises (2 x 512 parameters for DDIB);
- ADM's time embedding is diffusers' `Timesteps(flip_sin_to_cos=True, freq_shift=0)`.

The one detail `UNet2DModel` cannot say is a head count per block: it takes one
`attention_head_dim`, while ADM with `num_heads` (no `num_head_channels`) gives every attention
block the same number of heads whatever its width. Heads carry no parameters, so `build_unet`
sets `heads`/`scale` on each `Attention` after construction (a no-op for all presets, whose
attention blocks share one width). ADM zero-initialises the last convolution of each ResBlock,
the attention output projection and the output convolution; `build_unet` does the same.
Numerics: attention runs through the chosen diffusers processor (`attention`: "sdpa" or
"math"), in the input's dtype; ADM's fp32 GroupNorm upcast is left to autocast, which runs
group_norm in float32 anyway.

Checkpoints written with the former own ADM module (its names are the references' names)
load through `adm_to_diffusers` (a load hook on every UNet), and `her2 import` maps reference
files onto this module through the same exact relayout (`ADMLayout`): names, and the fused
legacy `qkv` (rows ordered heads, then q|k|v) split into `to_q`/`to_k`/`to_v`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

ATTENTION = {"sdpa": AttnProcessor2_0, "math": AttnProcessor}


@dataclass
class UNetConfig:
    """Hyper-parameters of an ADM UNet (names follow guided-diffusion's `create_model`)."""

    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    # downsample factors (ds = 1, 2, 4, ...) whose blocks get self-attention, as upstream
    attention_ds: tuple = (16, 32)
    num_heads: int = 4
    num_head_channels: int = -1  # > 0: heads = channels // this (overrides num_heads)
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    conv_resample: bool = True
    dropout: float = 0.0
    norm_groups: int = 32
    # memory/speed only (outputs unchanged): recompute activations in backward; attention kernel
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # "sdpa" (torch scaled_dot_product_attention) or "math" (explicit softmax)


class UNet(UNet2DModel):
    """`UNet2DModel` called as the samplers call it: `net(x, t) -> tensor`, t (N,) or scalar."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None, return_dict: bool = False):
        if return_dict or class_labels is not None:  # diffusers' own calling convention
            return super().forward(x, t, class_labels=class_labels, return_dict=return_dict)
        return super().forward(x, t, return_dict=False)[0]

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)


def _levels(cfg: UNetConfig) -> list[bool]:
    """Per level: does it have attention (ADM compares the downsample factor with attention_ds)?"""
    return [2 ** level in tuple(cfg.attention_ds) for level in range(len(cfg.channel_mult))]


def _heads(cfg: UNetConfig, channels: int) -> int:
    return channels // cfg.num_head_channels if cfg.num_head_channels > 0 else cfg.num_heads


def unet_kwargs(cfg: UNetConfig) -> dict:
    """`UNet2DModel` arguments that reproduce the ADM UNet of `cfg`."""
    from her2core.errors import UserError

    if cfg.channel_mult[0] != 1:
        raise UserError(f"unet.channel_mult {tuple(cfg.channel_mult)}: the first multiplier must be 1 "
                        "(ADM's time embedding width is model_channels)")
    if not cfg.conv_resample and not cfg.resblock_updown:
        raise UserError("unet.conv_resample false: pooling/interpolating resamplers are not supported; "
                        "use conv_resample true or resblock_updown true")
    if cfg.attention not in ATTENTION:
        raise UserError(f"unet.attention {cfg.attention!r}: use one of {', '.join(ATTENTION)}")
    chans = [cfg.model_channels * m for m in cfg.channel_mult]
    attn = _levels(cfg)
    plain_down = "ResnetDownsampleBlock2D" if cfg.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if cfg.resblock_updown else "UpBlock2D"
    resample = "resnet" if cfg.resblock_updown else "conv"
    return {
        "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "block_out_channels": tuple(chans),
        "down_block_types": tuple("AttnDownBlock2D" if a else plain_down for a in attn),
        "up_block_types": tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn)),
        "layers_per_block": cfg.num_res_blocks, "attention_head_dim": chans[-1] // _heads(cfg, chans[-1]),
        "norm_num_groups": cfg.norm_groups, "attn_norm_num_groups": cfg.norm_groups, "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "downsample_type": resample, "upsample_type": resample, "dropout": cfg.dropout,
        "flip_sin_to_cos": True, "freq_shift": 0, "time_embedding_type": "positional", "act_fn": "silu"}


def build_unet(cfg: UNetConfig) -> UNet:
    """The ADM UNet of `cfg` on diffusers, with ADM's head layout and zero initialisations."""
    net = UNet(**unet_kwargs(cfg))
    for module in net.modules():
        if isinstance(module, Attention):
            channels = module.to_q.in_features
            module.heads = _heads(cfg, channels)
            module.scale = (channels // module.heads) ** -0.5
            module.set_processor(ATTENTION[cfg.attention]())
            _zero(module.to_out[0])
    for name, module in net.named_modules():
        if name.endswith(".conv2") or name == "conv_out":
            _zero(module)
    if cfg.gradient_checkpointing:
        net.enable_gradient_checkpointing()
    net.register_load_state_dict_pre_hook(_LegacyLoader(cfg))
    return net


def _zero(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def count_parameters(cfg: UNetConfig) -> int:
    """Trainable parameters of the UNet for `cfg`, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        net = UNet(**unet_kwargs(cfg))
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# -- the ADM (reference) layout <-> ours ------------------------------------------------------

_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "proj_out": "to_out.0"}
_QKV = ("to_q", "to_k", "to_v")


def _module_map(cfg: UNetConfig) -> dict[str, tuple[str, str]]:
    """ADM module path -> (our module path, kind: 'res' | 'attn' | 'same' | 'resample')."""
    out = {"input_blocks.0.0": ("conv_in", "same"), "time_embed.0": ("time_embedding.linear_1", "same"),
           "time_embed.2": ("time_embedding.linear_2", "same"), "out.0": ("conv_norm_out", "same"),
           "out.2": ("conv_out", "same"), "middle_block.0": ("mid_block.resnets.0", "res"),
           "middle_block.1": ("mid_block.attentions.0", "attn"), "middle_block.2": ("mid_block.resnets.1", "res")}
    attn, n, k = _levels(cfg), len(cfg.channel_mult), 1
    resample = "res" if cfg.resblock_updown else "resample"
    for level in range(n):
        for j in range(cfg.num_res_blocks):
            out[f"input_blocks.{k}.0"] = (f"down_blocks.{level}.resnets.{j}", "res")
            if attn[level]:
                out[f"input_blocks.{k}.1"] = (f"down_blocks.{level}.attentions.{j}", "attn")
            k += 1
        if level != n - 1:
            out[f"input_blocks.{k}.0"] = (f"down_blocks.{level}.downsamplers.0", resample)
            k += 1
    k = 0
    for u, level in enumerate(reversed(range(n))):
        for i in range(cfg.num_res_blocks + 1):
            out[f"output_blocks.{k}.0"] = (f"up_blocks.{u}.resnets.{i}", "res")
            if attn[level]:
                out[f"output_blocks.{k}.1"] = (f"up_blocks.{u}.attentions.{i}", "attn")
            if level and i == cfg.num_res_blocks:
                out[f"output_blocks.{k}.{1 + attn[level]}"] = (f"up_blocks.{u}.upsamplers.0", resample)
            k += 1
    return out


_SPLIT = re.compile(r"^((?:input_blocks|output_blocks)\.\d+\.\d+|middle_block\.\d+|time_embed\.\d+|out\.\d+)"
                    r"\.(.+)$")


class ADMLayout:
    """Exact relayout between ADM state dicts (the references' names) and this module's.

    Works on meta tensors too (shapes only), so `her2 import` can check names without memory.
    """

    def __init__(self, cfg: UNetConfig):
        self.cfg = cfg
        self.modules = _module_map(cfg)
        self.inverse = {ours: (adm, kind) for adm, (ours, kind) in self.modules.items()}

    def _sub(self, kind: str, rest: str) -> str | None:
        """ADM name inside a module -> ours (None: the fused qkv, handled separately)."""
        if kind == "res":
            head, _, leaf = rest.rpartition(".")
            return f"{_RES[head]}.{leaf}" if head in _RES else None
        if kind == "attn":
            head, _, leaf = rest.rpartition(".")
            return None if head == "qkv" else (f"{_ATTN[head]}.{leaf}" if head in _ATTN else None)
        if kind == "resample":  # Downsample's `op` or Upsample's `conv`
            return "conv." + rest.split(".", 1)[1] if rest.split(".")[0] in ("op", "conv") else None
        return rest

    def to_ours(self, adm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ADM-named tensors -> ours (the qkv split into q, k, v in the legacy head layout)."""
        out = {}
        for key, value in adm.items():
            m = _SPLIT.match(key)
            if not m or m.group(1) not in self.modules:
                raise KeyError(key)
            ours, kind = self.modules[m.group(1)]
            rest = m.group(2)
            if kind == "attn" and rest.startswith("qkv."):
                leaf = rest.split(".", 1)[1]
                c = value.shape[0] // 3
                h = _heads(self.cfg, c)
                rows = value.reshape(h, 3, c // h, *value.shape[1:])
                for i, name in enumerate(_QKV):
                    out[f"{ours}.{name}.{leaf}"] = rows[:, i].reshape(c, *value.shape[1:2])
                continue
            sub = self._sub(kind, rest)
            if sub is None:
                raise KeyError(key)
            if kind == "attn" and rest == "proj_out.weight":
                value = value.reshape(value.shape[0], value.shape[1])
            out[f"{ours}.{sub}"] = value
        return out

    def to_adm(self, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our tensors -> ADM names and layouts (attention q, k, v fused; Conv1d shapes)."""
        rev = {}
        for adm_mod, (our_mod, kind) in self.modules.items():
            if kind == "res":
                rev.update({f"{our_mod}.{v}": f"{adm_mod}.{k}" for k, v in _RES.items()})
            elif kind == "attn":
                rev.update({f"{our_mod}.{v}": f"{adm_mod}.{k}" for k, v in _ATTN.items()})
            elif kind == "resample":
                rev[f"{our_mod}.conv"] = f"{adm_mod}.{'op' if 'down' in our_mod else 'conv'}"
            else:
                rev[our_mod] = adm_mod
        out, qkv = {}, {}
        for key, value in ours.items():
            mod, _, leaf = key.rpartition(".")
            parent, _, proj = mod.rpartition(".")
            if proj in _QKV and parent in self.inverse:
                qkv.setdefault((parent, leaf), {})[proj] = value
                continue
            if mod not in rev:
                raise KeyError(key)
            if mod.endswith(".to_out.0") and leaf == "weight":
                value = value.reshape(*value.shape, 1)
            out[f"{rev[mod]}.{leaf}"] = value
        for (parent, leaf), parts in qkv.items():
            q, k, v = (parts[n] for n in _QKV)
            c = q.shape[0]
            h = _heads(self.cfg, c)
            fused = torch.stack([t.reshape(h, c // h, *t.shape[1:]) for t in (q, k, v)], dim=1)
            fused = fused.reshape(3 * c, *q.shape[1:])
            out[f"{self.inverse[parent][0]}.qkv.{leaf}"] = fused.reshape(*fused.shape, 1) if leaf == "weight" \
                else fused
        return out


LEGACY_MARK = "input_blocks.0.0.weight"


class _LegacyLoader:
    """Load hook: a state dict in the former own-ADM layout is relaid out before loading."""

    def __init__(self, cfg: UNetConfig):
        self.cfg = cfg

    def __call__(self, module, state_dict, prefix, *_args):
        if prefix + LEGACY_MARK not in state_dict:
            return
        keys = [k for k in state_dict if k.startswith(prefix)]
        adm = {k[len(prefix):]: state_dict.pop(k) for k in keys}
        for k, v in adm_to_diffusers(adm, self.cfg).items():
            state_dict[prefix + k] = v


def adm_to_diffusers(adm: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """A whole ADM-layout UNet state dict -> ours; one clear line if it is not one."""
    from her2core.errors import UserError

    try:
        return ADMLayout(cfg).to_ours(adm)
    except KeyError as exc:
        raise UserError(f"UNet weights in the former ADM layout hold '{exc.args[0]}', which this UNet "
                        "config does not have; was it written with other unet settings?") from None
