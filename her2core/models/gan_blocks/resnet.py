"""ResNet encoder–decoder generators of pix2pix (BCI) and CUT (ASP), with CUT's antialiased resampling.

`ResnetGenerator.model` is one flat `nn.Sequential`, exactly like the references,
so that PatchNCE layer indices (`nce_layers='0,4,8,12,16'`) address the same
modules as upstream.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def norm_layer(kind: str):
    """BatchNorm (affine, running stats) / InstanceNorm (no affine, no stats) / none."""
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if kind == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"unknown norm '{kind}' (batch, instance, none)")


def _filter(size: int) -> torch.Tensor:
    a = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0],
         5: [1.0, 4.0, 6.0, 4.0, 1.0]}[size]
    t = torch.tensor(a)
    f = t[:, None] * t[None, :]
    return f / f.sum()


class Downsample(nn.Module):
    """Blur (3×3 binomial) then stride 2 — CUT's anti-aliased downsampling (Zhang 2019)."""

    def __init__(self, channels: int, filt_size: int = 3):
        super().__init__()
        self.pad = nn.ReflectionPad2d([(filt_size - 1) // 2, (filt_size) // 2] * 2)
        self.register_buffer("filt", _filter(filt_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(self.pad(x), self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class Upsample(nn.Module):
    """Stride-2 transposed blur (4×4 binomial ×4) — CUT's anti-aliased upsampling."""

    def __init__(self, channels: int, filt_size: int = 4):
        super().__init__()
        self.filt_odd = filt_size % 2 == 1
        self.pad_size = (filt_size - 1) // 2
        self.pad = nn.ReplicationPad2d([1, 1, 1, 1])
        self.register_buffer("filt", (_filter(filt_size) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        y = F.conv_transpose2d(self.pad(x), self.filt.to(x.dtype), stride=2,
                               padding=1 + self.pad_size, groups=x.shape[1])[:, :, 1:, 1:]
        return y if self.filt_odd else y[:, :, :-1, :-1]


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, ReLU, (dropout), pad, conv3, norm](x)."""

    def __init__(self, dim: int, norm, use_dropout: bool, use_bias: bool, sn=lambda m: m,
                 dropout: float = 0.5):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), sn(nn.Conv2d(dim, dim, 3, bias=use_bias)), norm(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), sn(nn.Conv2d(dim, dim, 3, bias=use_bias)), norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, 2× down, n ResNet blocks, 2× up, c7s1-3, tanh (Johnson et al. / pix2pix / CUT).

    antialias=False: strided conv / transposed conv (pix2pix). antialias=True: conv +
    blur-pool / blur-upsample + conv (CUT default). spectral=True wraps every conv in
    spectral norm (ASP `weight_norm='spectral'`).
    """

    def __init__(self, input_nc=3, output_nc=3, ngf=64, norm="batch", use_dropout=False,
                 n_blocks=9, antialias=False, spectral=False, n_downsampling=2):
        super().__init__()
        nl = norm_layer(norm)
        use_bias = norm != "batch"
        sn = spectral_norm if spectral else (lambda m: m)
        model = [nn.ReflectionPad2d(3), sn(nn.Conv2d(input_nc, ngf, 7, bias=use_bias)), nl(ngf), nn.ReLU(True)]
        for i in range(n_downsampling):
            c = ngf * 2 ** i
            if antialias:
                model += [sn(nn.Conv2d(c, 2 * c, 3, stride=1, padding=1, bias=use_bias)), nl(2 * c),
                          nn.ReLU(True), Downsample(2 * c)]
            else:
                model += [sn(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias)), nl(2 * c), nn.ReLU(True)]
        c = ngf * 2 ** n_downsampling
        for _ in range(n_blocks):
            model.append(ResnetBlock(c, nl, use_dropout, use_bias, sn))
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            if antialias:
                model += [Upsample(c), sn(nn.Conv2d(c, c // 2, 3, stride=1, padding=1, bias=use_bias)),
                          nl(c // 2), nn.ReLU(True)]
            else:
                model += [sn(nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1,
                                                bias=use_bias)), nl(c // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), sn(nn.Conv2d(ngf, output_nc, 7)), nn.Tanh()]
        self.model = nn.Sequential(*model)
        self.input_nc = input_nc

    def forward(self, x, layers: list[int] | None = None, encode_only: bool = False):
        """Output image; with `layers`, also the features after those module indices (CUT)."""
        if not layers:
            return self.model(x)
        feats, feat = [], x
        for i, layer in enumerate(self.model):
            feat = layer(feat)
            if i in layers:
                feats.append(feat)
            if encode_only and i == max(layers):
                return feats
        return feat, feats

    def feature_channels(self, layers: list[int]) -> list[int]:
        """Channel count after each module index, found without running the network."""
        out, c = [], self.input_nc
        for i, m in enumerate(self.model):
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):  # spectral-norm convs included
                c = m.out_channels
            if i in layers:
                out.append(c)
        return out
