"""Overlapping tile grid and feathered blending: why virtual slides show no tile seams.

Tiles of size T overlap by O pixels (stride S = T - O, O <= T/2). Each tile's
output is weighted by a separable raised-cosine ramp, w(i) = sin²(π(i + ½) / 2O)
over its first O pixels and the mirror image over its last O, 1 in between. In
an overlap the ramp of one tile and the mirror ramp of the next add up to
exactly 1 (sin² + cos²), so the blend moves smoothly from one tile to the next;
dividing by the summed weights makes the region's outer borders right as well
(the weights are never 0).

The grid starts O/2 pixels before the region and ends at least O/2 after it,
so every region pixel has context on every side. Output is finalised in
*blocks*: block k along an axis spans [p_k + O, p_{k+1} + O) (the first block
starts at 0, the last ends at the region end) and depends only on tiles k and
k + 1. That is what lets the slide writer finish a band of output as soon as
two tile rows exist, and throw the older tile row away.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def ramp(overlap: int) -> np.ndarray:
    """Rising raised-cosine weights of length `overlap`, in (0, 1); ramp + ramp[::-1] == 1."""
    i = np.arange(overlap, dtype=np.float64)
    return np.sin(np.pi * (i + 0.5) / (2 * overlap)) ** 2


def tile_weights_1d(tile: int, overlap: int) -> np.ndarray:
    """Feather weights along one axis of a tile (float32, all > 0)."""
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        r = ramp(overlap)
        w[:overlap] = r
        w[tile - overlap:] = r[::-1]
    return w.astype(np.float32)


@dataclass(frozen=True)
class AxisGrid:
    """Tile positions along one axis of a region `length` pixels long."""

    length: int
    tile: int
    overlap: int

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"region length must be >= 1, got {self.length}")
        if not (0 <= self.overlap <= self.tile // 2):
            raise ValueError(f"overlap must be in [0, tile/2], got {self.overlap} for tile {self.tile}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def start(self) -> int:
        return -(self.overlap // 2)

    @property
    def count(self) -> int:
        extra = self.length + 2 * (self.overlap // 2) - self.tile
        return 1 + max(0, math.ceil(extra / self.stride))

    def position(self, k: int) -> int:
        return self.start + k * self.stride

    def positions(self) -> list[int]:
        return [self.position(k) for k in range(self.count)]

    def block(self, k: int) -> tuple[int, int]:
        """Output span [a, b) finalised by tiles k and k+1 (may be empty near the end)."""
        n = self.count
        a = 0 if k == 0 else min(self.length, max(0, self.position(k) + self.overlap))
        b = self.length if k == n - 1 else min(self.length, max(0, self.position(k + 1) + self.overlap))
        return a, max(a, b)

    def tiles_for(self, a: int, b: int) -> list[int]:
        """Indices of tiles that overlap output span [a, b)."""
        return [k for k in range(self.count)
                if self.position(k) < b and self.position(k) + self.tile > a]


def _segments(grid: AxisGrid, a: int, b: int) -> list[tuple[int, int, list[int]]]:
    """[a, b) cut where the set of covering tiles changes: (start, end, tiles covering it)."""
    ks = grid.tiles_for(a, b)
    cuts = {a, b}
    for k in ks:
        p = grid.position(k)
        cuts.update(x for x in (p, p + grid.tile) if a < x < b)
    edges = sorted(cuts)
    return [(s, e, [k for k in ks if grid.position(k) <= s and grid.position(k) + grid.tile >= e])
            for s, e in itertools.pairwise(edges)]


def blend_block(rows: AxisGrid, cols: AxisGrid, r: tuple[int, int], c: tuple[int, int],
                get_tile: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Blended RGB uint8 for output rows [r0, r1) × cols [c0, c1).

    `get_tile(k, j)` returns tile (row k, column j) output as (T, T, 3) uint8.
    Deterministic: the same tiles give the same bytes.

    Where one tile alone covers a part of the block, the blend is that tile's pixels
    (w·t / w rounds back to t), so those parts are copied and only the overlap strips
    are weighted: the same bytes as `blend_span` over the whole block, in about half the time.
    """
    (r0, r1), (c0, c1) = r, c
    out = np.empty((r1 - r0, c1 - c0, 3), dtype=np.uint8)
    col_segs = _segments(cols, c0, c1)
    for ra, rb, rk in _segments(rows, r0, r1):
        for ca, cb, cj in col_segs:
            if len(rk) == 1 and len(cj) == 1:
                k, j = rk[0], cj[0]
                pk, pj = rows.position(k), cols.position(j)
                out[ra - r0:rb - r0, ca - c0:cb - c0] = get_tile(k, j)[ra - pk:rb - pk, ca - pj:cb - pj]
            else:
                out[ra - r0:rb - r0, ca - c0:cb - c0] = blend_span(rows, cols, (ra, rb), (ca, cb), get_tile)
    return out


def blend_span(rows: AxisGrid, cols: AxisGrid, r: tuple[int, int], c: tuple[int, int],
               get_tile: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Feathered blend of every tile over rows [r0, r1) × cols [c0, c1), computed in full
    (the reference `blend_block` reproduces byte for byte)."""
    (r0, r1), (c0, c1) = r, c
    wt = tile_weights_1d(rows.tile, rows.overlap)
    wtc = tile_weights_1d(cols.tile, cols.overlap)
    acc = np.zeros((r1 - r0, c1 - c0, 3), dtype=np.float32)
    wr = np.zeros(r1 - r0, dtype=np.float32)
    wc = np.zeros(c1 - c0, dtype=np.float32)
    ks, js = rows.tiles_for(r0, r1), cols.tiles_for(c0, c1)
    for k in ks:
        pk = rows.position(k)
        ra, rb = max(r0, pk), min(r1, pk + rows.tile)
        a = wt[ra - pk:rb - pk]
        wr[ra - r0:rb - r0] += a
        for j in js:
            pj = cols.position(j)
            ca, cb = max(c0, pj), min(c1, pj + cols.tile)
            b = wtc[ca - pj:cb - pj]
            t = get_tile(k, j)[ra - pk:rb - pk, ca - pj:cb - pj].astype(np.float32)
            acc[ra - r0:rb - r0, ca - c0:cb - c0] += (a[:, None] * b[None, :])[..., None] * t
    for j in js:
        pj = cols.position(j)
        ca, cb = max(c0, pj), min(c1, pj + cols.tile)
        wc[ca - c0:cb - c0] += wtc[ca - pj:cb - pj]
    acc /= (wr[:, None] * wc[None, :])[..., None]
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)
