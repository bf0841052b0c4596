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

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def ramp(overlap: int) -> np.ndarray:
    """Rising raised-cosine weights of length `overlap`, in (0, 1); ramp + ramp[::-1] == 1."""
    i = np.arange(overlap, dtype=np.float64)
    return np.sin(np.pi * (i + 0.5) / (2 * overlap)) ** 2


@functools.lru_cache(maxsize=16)
def tile_weights_1d(tile: int, overlap: int) -> np.ndarray:
    """Feather weights along one axis of a tile (float32, all > 0; read-only, computed once)."""
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        r = ramp(overlap)
        w[:overlap] = r
        w[tile - overlap:] = r[::-1]
    w = w.astype(np.float32)
    w.flags.writeable = False
    return w


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

    @functools.cached_property
    def stride(self) -> int:
        return self.tile - self.overlap

    @functools.cached_property
    def start(self) -> int:
        return -(self.overlap // 2)

    @functools.cached_property
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
        """Indices of tiles that overlap output span [a, b) (position(k) < b and
        position(k) + tile > a), found by division: it runs for every blended strip."""
        if b <= a:
            return []
        first = max(0, (a - self.tile - self.start) // self.stride + 1)
        last = min(self.count - 1, (b - 1 - self.start) // self.stride)
        return list(range(first, last + 1))


@functools.lru_cache(maxsize=4096)  # every band blends the same column spans again
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
    (the reference that `blend_block` reproduces byte for byte).

    Separable, as the weights are: each column of tiles is blended down the rows with the
    row weights normalised to 1, then those columns across with the column weights
    normalised. Where one tile alone covers an axis its normalised weight is exactly 1
    (w / w), so that pass is skipped without changing a bit.
    """
    (r0, r1), (c0, c1) = r, c
    row_parts = _normalised_weights(rows, r0, r1)
    col_parts = _normalised_weights(cols, c0, c1)
    out = None
    for j, ca, cb, beta in col_parts:
        pj = cols.position(j)
        col = None
        for k, ra, rb, alpha in row_parts:
            pk = rows.position(k)
            t = get_tile(k, j)[ra - pk:rb - pk, ca - pj:cb - pj]
            if col is None:
                col = np.zeros((r1 - r0, cb - ca, 3), dtype=np.float32)
            if alpha is None:
                col[ra - r0:rb - r0] = t
            else:
                col[ra - r0:rb - r0] += alpha[:, None, None] * t
        if beta is None and (ca, cb) == (c0, c1):
            out = col
            continue
        if out is None:
            out = np.zeros((r1 - r0, c1 - c0, 3), dtype=np.float32)
        if beta is None:
            out[:, ca - c0:cb - c0] += col
        else:
            out[:, ca - c0:cb - c0] += col * beta[None, :, None]
    np.rint(out, out=out)
    return out.astype(np.uint8)


@functools.lru_cache(maxsize=4096)  # the same spans recur in every band (read-only arrays)
def _normalised_weights(grid: AxisGrid, a: int, b: int) -> list:
    """(tile, start, end, weights) of each tile over [a, b): its feather weights divided by
    the sum of all tiles' there; None where it is the only tile (the weight is exactly 1)."""
    wt = tile_weights_1d(grid.tile, grid.overlap)
    spans = []
    for k in grid.tiles_for(a, b):
        p = grid.position(k)
        spans.append((k, max(a, p), min(b, p + grid.tile)))
    if len(spans) == 1:
        return [(*spans[0], None)]
    total = np.zeros(b - a, dtype=np.float32)
    for k, lo, hi in spans:
        p = grid.position(k)
        total[lo - a:hi - a] += wt[lo - p:hi - p]
    parts = []
    for k, lo, hi in spans:
        w = wt[lo - grid.position(k):hi - grid.position(k)] / total[lo - a:hi - a]
        w.flags.writeable = False
        parts.append((k, lo, hi, w))
    return parts
