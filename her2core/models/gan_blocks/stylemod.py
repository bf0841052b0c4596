"""StyleGAN2 weight-(de)modulated convolutions and SimAM attention (BCIStainer decoder blocks)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SimAM(nn.Module):
    """Parameter-free attention (Yang et al. 2021): weight each activation by its energy."""

    def __init__(self, e_lambda: float = 1e-4):
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x):
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        v = d.sum(dim=(2, 3), keepdim=True) / max(n, 1)
        return x * torch.sigmoid(d / (4 * (v + self.e_lambda)) + 0.5)


class EqualizedWeight(nn.Module):
    """N(0,1) parameter scaled by 1/sqrt(fan_in) at run time (equalised learning rate)."""

    def __init__(self, shape):
        super().__init__()
        self.c = 1 / math.sqrt(float(np.prod(shape[1:])))
        self.data = nn.Parameter(torch.randn(shape))

    def forward(self):
        return self.data * self.c


class ModConv2d(nn.Module):
    """Per-sample modulated/demodulated 3×3 conv with reflect padding (grouped-conv trick)."""

    def __init__(self, cin, cout, kernel_size=3, demodulate=True, use_bias=True, eps=1e-8):
        super().__init__()
        self.cout, self.demodulate, self.eps = cout, demodulate, eps
        self.padding = (kernel_size // 2,) * 4
        self.weight = EqualizedWeight([cout, cin, kernel_size, kernel_size])
        self.bias = nn.Parameter(torch.zeros(cout)) if use_bias else None

    def forward(self, x, style):
        b, _, h, w = x.shape
        weights = self.weight()[None] * (style[:, None, :, None, None] + 1)
        if self.demodulate:
            weights = weights * torch.rsqrt(weights.pow(2).sum(dim=(2, 3, 4), keepdim=True) + self.eps)
        weights = weights.reshape(b * self.cout, *weights.shape[2:]).to(x.dtype)
        x = F.pad(x.reshape(1, -1, h, w), self.padding, mode="reflect")
        x = F.conv2d(x, weights, groups=b).reshape(b, self.cout, h, w)
        if self.bias is not None:
            x = x + self.bias[None, :, None, None]
        return x


class ResnetModBlock(nn.Module):
    """(x + SimAM(act(modconv(act(modconv(x, s1)), s2)))) / √2 with styles s_i = Linear_i(style)."""

    def __init__(self, style_dims, dims, use_bias, attention=True):
        super().__init__()
        self.style1 = nn.Linear(style_dims, dims)
        self.style2 = nn.Linear(style_dims, dims)
        self.conv1 = ModConv2d(dims, dims, 3, use_bias=use_bias)
        self.conv2 = ModConv2d(dims, dims, 3, use_bias=use_bias)
        self.act = nn.LeakyReLU(0.2)
        self.atten = SimAM() if attention else nn.Identity()

    def forward(self, x, style):
        out = self.act(self.conv1(x, self.style1(style)))
        out = self.act(self.conv2(out, self.style2(style)))
        return (x + self.atten(out)) / math.sqrt(2)
