"""Helpers shared by the slide-inference tests (no tests here): a synthetic H&E slide and a
small hand-built translation network with the Framework's inference interface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn


def synth_he(h: int, w: int, seed: int = 0, tissue: float = 0.6) -> np.ndarray:
    """H&E-like RGB uint8: pink/purple textured tissue islands on white glass."""
    rng = np.random.default_rng(seed)
    small = ndi.gaussian_filter(rng.standard_normal((h // 16 + 2, w // 16 + 2)), 3)
    mask = ndi.zoom(small, 16, order=1)[:h, :w] > np.quantile(small, 1 - tissue)
    tex = ndi.gaussian_filter(rng.standard_normal((h, w)), 2)
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-9)
    pink = np.array([230, 150, 190], np.float32)
    purple = np.array([110, 60, 150], np.float32)
    t = tex[..., None]
    img = np.full((h, w, 3), 242, np.float32)
    img[mask] = (pink * (1 - t) + purple * t)[mask]
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def one_and_two_ranks(driver: Path, out_root: Path, timeout: int = 600):
    """Run a driver script (argv[1]: its output folder) once alone and once under torchrun with
    two gloo ranks, on this checkout's her2core; returns (alone, ranks, the ranks' stdout)."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # this checkout's her2core, not an installed one
           "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    one, two = out_root / "one", out_root / "two"
    subprocess.run([sys.executable, str(driver), str(one)], check=True, env=env, timeout=timeout)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", str(driver), str(two)],
                       env=env, timeout=timeout, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return one, two, r.stdout


class ConvNet(nn.Module):
    """Three 5x5 convolutions with zero padding: a receptive field of 13 px and real border
    effects, so naive tiling shows seams that blending must hide. Glass stays near white."""

    name = "convnet"

    def __init__(self, width: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, width, 5, padding=2), nn.ReLU(),
                                 nn.Conv2d(width, width, 5, padding=2), nn.ReLU(),
                                 nn.Conv2d(width, 3, 5, padding=2))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
        self.calls = 0
        self.tiles_seen = 0

    @torch.no_grad()
    def translate(self, he, *, steps=None, generator=None):
        self.calls += 1
        self.tiles_seen += he.shape[0]
        dark = (1 - he.mean(1, keepdim=True)) / 2  # glass stays near white, as with stains
        return (he.flip(1) + dark * self.net(he)).clamp(-1, 1)

    def one_piece(self, rgb: np.ndarray) -> np.ndarray:
        """The whole image through the network at once (no tiles), uint8."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1
        y = self.translate(x)
        return ((y + 1) * 127.5).round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()


def border_step_ratio(img: np.ndarray, borders: list[int], tissue: np.ndarray, *,
                      period: int = 1, reach: int = 24) -> float:
    """Mean |intensity step| across the given column borders / the same at neighbouring columns.

    Step at column c: |I[:, c] - I[:, c-1]| (grey = RGB mean), averaged over rows where both
    pixels are tissue. Neighbouring interior columns: c = b ± d for d = 8, 8+period, ... <= reach,
    i.e. at the same phase within the network's output `period` (4 for a generator with two
    stride-2 stages, whose transposed convolutions leave a faint 4-px pattern), and never within
    4 px of a border.
    """
    g = img.astype(np.float64).mean(axis=2)
    step = np.abs(np.diff(g, axis=1))           # step[:, c-1] is between columns c-1 and c
    ok = tissue[:, 1:] & tissue[:, :-1]
    width = img.shape[1]
    near = {b + d for b in borders for d in range(-4, 5)}
    inner = sorted({b + s * d for b in borders for s in (-1, 1) for d in range(8, reach + 1, period)
                    if 1 <= b + s * d < width and b + s * d not in near})
    bord = [b for b in borders if 1 <= b < width]

    def mean_at(cols):
        idx = np.asarray(cols) - 1
        return step[:, idx][ok[:, idx]].mean()

    return float(mean_at(bord) / mean_at(inner))


def he_tile_folder(folder, n: int, seed: int, side: int = 64):
    """`n` synthetic H&E tiles t0.png ... of `side` px, cut from one strip, in a new `folder`."""
    from her2core.util.atomic import write_png

    folder.mkdir(parents=True)
    img = synth_he(side, side * n, seed=seed, tissue=0.9)
    for i in range(n):
        write_png(folder / f"t{i}.png", img[:, i * side:(i + 1) * side])
    return folder
