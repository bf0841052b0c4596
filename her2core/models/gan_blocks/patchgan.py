"""PatchGAN discriminators: pix2pix/CUT `NLayerDiscriminator` and BCIStainer's multi-scale variant."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from her2core.models.gan_blocks.resnet import Downsample, norm_layer


class NLayerDiscriminator(nn.Module):
    """70×70 PatchGAN for n_layers=3 (pix2pix); CUT's antialiased/spectral variant for ASP.

    pix2pix: 4×4 stride-2 convs. antialias=True (CUT): 4×4 stride-1 conv + blur-pool.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch",
                 antialias: bool = False, spectral: bool = False):
        super().__init__()
        nl = norm_layer(norm)
        use_bias = norm != "batch"
        sn = spectral_norm if spectral else (lambda m: m)
        kw, padw = 4, 1
        if antialias:
            seq = [sn(nn.Conv2d(input_nc, ndf, kw, 1, padw)), nn.LeakyReLU(0.2, True), Downsample(ndf)]
        else:
            seq = [sn(nn.Conv2d(input_nc, ndf, kw, 2, padw)), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            if antialias:
                seq += [sn(nn.Conv2d(ndf * prev, ndf * mult, kw, 1, padw, bias=use_bias)), nl(ndf * mult),
                        nn.LeakyReLU(0.2, True), Downsample(ndf * mult)]
            else:
                seq += [sn(nn.Conv2d(ndf * prev, ndf * mult, kw, 2, padw, bias=use_bias)), nl(ndf * mult),
                        nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [sn(nn.Conv2d(ndf * prev, ndf * mult, kw, 1, padw, bias=use_bias)), nl(ndf * mult),
                nn.LeakyReLU(0.2, True)]
        seq += [sn(nn.Conv2d(ndf * mult, 1, kw, 1, padw))]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class ConvNormAct(nn.Sequential):
    """Reflect-pad, conv (no bias with BatchNorm), norm, LeakyReLU(0.2) — BCIStainer's basic layer."""

    def __init__(self, cin, cout, kernel, stride, padding, norm="batch", attention=False,
                 transpose=False):
        nl = norm_layer(norm)
        bias = norm != "batch"
        if transpose:
            layers = [nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding=padding, bias=bias)]
        else:
            layers = [nn.ReflectionPad2d(padding), nn.Conv2d(cin, cout, kernel, stride, 0, bias=bias)]
        if attention:
            from her2core.models.gan_blocks.stylemod import SimAM

            layers.append(SimAM())
        layers += [nl(cout), nn.LeakyReLU(0.2, True)]
        super().__init__(*layers)


class BasicPatchGAN(nn.Sequential):
    """BCIStainer's single-scale PatchGAN: ConvNormAct 4×4 (s2 × n_layers, then s1) → conv 4×4 → 1."""

    def __init__(self, input_nc=3, ndf=32, n_layers=3, norm="batch"):
        layers = [ConvNormAct(input_nc, ndf, 4, 2, 1, norm)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers.append(ConvNormAct(ndf * prev, ndf * mult, 4, 2, 1, norm))
        prev, mult = mult, min(2 ** n_layers, 8)
        layers.append(ConvNormAct(ndf * prev, ndf * mult, 4, 1, 1, norm))
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        super().__init__(*layers)


class MultiscaleDiscriminator(nn.Module):
    """`num_depths` PatchGANs on the image and its bilinear ½, ¼… (BCIStainer `multiscale`)."""

    def __init__(self, input_nc=3, ndf=32, n_layers=3, norm="batch", num_depths=2):
        super().__init__()
        self.scales = nn.ModuleList(BasicPatchGAN(input_nc, ndf, n_layers, norm) for _ in range(num_depths))

    def forward(self, x):
        outs = []
        for i, d in enumerate(self.scales):
            outs.append(d(x))
            if i != len(self.scales) - 1:
                x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=True)
        return outs
