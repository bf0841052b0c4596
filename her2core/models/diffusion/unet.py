"""The ADM ("openai") UNet shared by the three diffusion frameworks.

One module reproduces the networks of guided-diffusion (DDIB), openai/consistency_models
and BBDM's LDM-derived `openaimodel.py`: the same blocks, the same parameter layout and
the same counts (pinned in tests against `docs/references.md`). diffusers'
`UNet2DModel` cannot express these layouts (scale-shift ResBlocks that also resample,
attention chosen by downsample factor, skip channels per block), so it is not used; the
`tiny` presets use this same module with few channels, so tests exercise the paper code.

Deliberate differences from upstream, none of which changes a parameter:
- attention runs through `F.scaled_dot_product_attention` (no fp16 cast, no flash-attn
  dependency), with the "legacy" q/k/v channel order so upstream weights would load;
- the GroupNorm group count is configurable (32 upstream) so tiny nets can be narrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as guided-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (upstream does the same for fp16 stability)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.op = (nn.Conv2d(channels, out_channels, 3, stride=2, padding=1) if use_conv
                   else nn.AvgPool2d(2, 2))

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding; optionally resamples (resblock_updown)."""

    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_scale_shift_norm=False,
                 up=False, down=False, groups=32):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention (upstream `AttentionBlock` + `QKVAttentionLegacy` layout)."""

    def __init__(self, channels, num_heads=1, num_head_channels=-1, groups=32):
        super().__init__()
        self.num_heads = channels // num_head_channels if num_head_channels > 0 else num_heads
        assert channels % self.num_heads == 0, (channels, self.num_heads)
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # (b, 3c, L); legacy order: heads first, then q|k|v
        length = qkv.shape[-1]
        q, k, v = qkv.reshape(b, self.num_heads, 3 * c // self.num_heads, length).transpose(2, 3).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)  # (b, heads, L, ch)
        h = h.transpose(2, 3).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class _EmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """ADM UNet: `forward(x, t)` with t a (N,) tensor of (possibly fractional) timesteps."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, g = cfg.model_channels, cfg.norm_groups
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, emb_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm, groups=g, **kw)

        def attn(ch):
            return AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels, groups=g)

        ch = input_ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([_EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(_EmbedSequential(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(_EmbedSequential(
                    res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)))
                chans.append(ch)
                ds *= 2
        self.middle_block = _EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(_EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(g, ch), nn.SiLU(), _zero(nn.Conv2d(input_ch, cfg.out_channels, 3, padding=1)))
        self.downsample_factor = 2 ** (len(cfg.channel_mult) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def count_parameters(cfg: UNetConfig) -> int:
    """Trainable parameters of the UNet for `cfg`, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        net = UNet(cfg)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
