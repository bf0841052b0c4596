"""A procedural breast-carcinoma-like tissue: the one model both stains are rendered from.

Why one model: an H&E image and a HER2 image rendered from the *same* cells align
cell to cell (a HER2match same-section pair); rendered from cells *re-drawn* in the
same tissue regions they only agree region by region (a BCI-like consecutive pair).

Everything is defined in microns in one case frame, so a region can be rendered at
any microns per pixel. Rendering returns optical-density layers (hematoxylin,
eosin, DAB, in `her2core.stain` units) that `her2core.sample.render` turns into RGB:

- tissue vs background glass, and tumour epithelium islands inside tissue, come
  from smooth random fields sampled on a coarse grid (bilinear in between);
- nuclei are ellipses around jittered-grid seeds: dense pale tumour nuclei,
  sparse elongated fibroblasts, small dark lymphocytes;
- stroma carries wavy eosin fibres; tumour cells have eosinophilic cytoplasm;
- tumour cells have a membrane (boundary of their Voronoi body) whose DAB
  strength, share of stained cells and completeness follow the case HER2 score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: HER2 score -> (membrane DAB OD, share of tumour cells stained, membrane completeness 0..1).
#: 0: none/faint in few cells; 1+: faint, incomplete; 2+: moderate, mostly complete; 3+: strong, complete.
MEMBRANE_BY_SCORE: dict[int, tuple[float, float, float]] = {
    0: (0.025, 0.08, 0.3),
    1: (0.07, 0.55, 0.45),
    2: (0.14, 0.8, 0.8),
    3: (0.26, 0.97, 1.0),
}

TUMOUR, STROMA, LYMPHOCYTE = 1, 2, 3
_CELL_SPACING_UM = 10.5   # jittered-grid pitch of candidate cells (tumour cells use all of them)
_BODY_RADIUS_UM = 8.0     # a tumour cell's body ends here even without a neighbour
_FIELD_STEP_UM = 8.0      # pitch of the coarse random fields


@dataclass
class Cells:
    """Cell table in case microns: centre, kind, nucleus ellipse, stain amounts."""

    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    rx: np.ndarray      # nucleus semi-axes (µm)
    ry: np.ndarray
    theta: np.ndarray   # nucleus orientation (rad)
    h_od: np.ndarray    # nuclear hematoxylin OD
    dab: np.ndarray     # membrane DAB OD (0 for unstained / non-tumour)
    gap_k: np.ndarray   # membrane gaps: stained where cos(k*angle + phase) > gap_t
    gap_phase: np.ndarray
    gap_t: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


class TissueModel:
    """One case's tissue, `width_um` x `height_um` starting at (`x0_um`, `y0_um`).

    `tissue_cover` / `tumour_cover`: rough fractions of the area that is tissue and
    of the tissue that is tumour epithelium. Same arguments -> same tissue.
    """

    def __init__(self, x0_um: float, y0_um: float, width_um: float, height_um: float, *,
                 seed: int, her2_score: int, tissue_cover: float = 0.75,
                 tumour_cover: float = 0.45, tissue_scale_um: float = 180.0,
                 island_scale_um: float = 45.0):
        if her2_score not in MEMBRANE_BY_SCORE:
            raise ValueError(f"her2_score must be one of 0, 1, 2, 3, got {her2_score}")
        self.x0, self.y0 = float(x0_um), float(y0_um)
        self.width, self.height = float(width_um), float(height_um)
        self.seed = int(seed)
        self.her2_score = int(her2_score)
        rng = np.random.default_rng([self.seed, 7001])
        step = _FIELD_STEP_UM
        gh = int(np.ceil(self.height / step)) + 3
        gw = int(np.ceil(self.width / step)) + 3
        self._field_shape = (gh, gw)

        def field(sigma_um: float) -> np.ndarray:
            f = ndi.gaussian_filter(rng.standard_normal((gh, gw)), sigma_um / step, mode="wrap")
            return ((f - f.mean()) / (f.std() + 1e-12)).astype(np.float32)

        tissue = field(tissue_scale_um)
        islands = field(island_scale_um)
        self._tissue_thr = float(np.quantile(tissue, 1.0 - tissue_cover)) if tissue_cover < 1 else -1e9
        inside = tissue > self._tissue_thr
        self._tumour_thr = float(np.quantile(islands[inside], 1.0 - tumour_cover)) if inside.any() else 0.0
        self._tissue, self._islands = tissue, islands
        self._warp = field(30.0) * 7.0                      # fibre waviness (radians)
        self._fibre_angle = float(rng.uniform(0, np.pi))
        self._stroma_density = field(60.0)                  # where stroma is cellular / inflamed
        self._cells: dict[int, Cells] = {}

    # -- fields ---------------------------------------------------------------------
    def _sample(self, grid: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        gx = (np.asarray(x_um) - self.x0) / _FIELD_STEP_UM + 1.0
        gy = (np.asarray(y_um) - self.y0) / _FIELD_STEP_UM + 1.0
        return ndi.map_coordinates(grid, [gy, gx], order=1, mode="nearest").astype(np.float32)

    def _sample_grid(self, grid: np.ndarray, xs_um: np.ndarray, ys_um: np.ndarray) -> np.ndarray:
        """Bilinear sample of a coarse field on the outer product of pixel rows/cols (separable)."""
        wy = _interp_matrix((np.asarray(ys_um) - self.y0) / _FIELD_STEP_UM + 1.0, grid.shape[0])
        wx = _interp_matrix((np.asarray(xs_um) - self.x0) / _FIELD_STEP_UM + 1.0, grid.shape[1])
        return (wy @ grid.astype(np.float32)) @ wx.T

    def tissue_mask(self, xs_um, ys_um) -> np.ndarray:
        return self._sample_grid(self._tissue, xs_um, ys_um) > self._tissue_thr

    def tumour_mask(self, xs_um, ys_um) -> np.ndarray:
        return self.tissue_mask(xs_um, ys_um) & (self._sample_grid(self._islands, xs_um, ys_um) > self._tumour_thr)

    # -- cells ----------------------------------------------------------------------
    def cells(self, section: int = 0) -> Cells:
        """The cells of one section; a different `section` re-draws them in the same regions."""
        if section in self._cells:
            return self._cells[section]
        rng = np.random.default_rng([self.seed, 9103, int(section)])
        s = _CELL_SPACING_UM
        nx = int(np.ceil(self.width / s)) + 1
        ny = int(np.ceil(self.height / s)) + 1
        gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
        x = self.x0 + (gx.ravel() + rng.uniform(-0.38, 0.38, gx.size) + 0.5 * (gy.ravel() % 2)) * s
        y = self.y0 + (gy.ravel() + rng.uniform(-0.38, 0.38, gy.size)) * s
        tissue = self._sample(self._tissue, x, y) > self._tissue_thr
        tumour = tissue & (self._sample(self._islands, x, y) > self._tumour_thr)
        dens = self._sample(self._stroma_density, x, y)
        u = rng.random(x.size)
        keep_stroma = tissue & ~tumour & (u < 0.16 + 0.12 * np.clip(dens, -1, 2))
        kind = np.zeros(x.size, np.int8)
        kind[tumour] = TUMOUR
        kind[keep_stroma] = STROMA
        lymph = keep_stroma & (rng.random(x.size) < 0.25 + 0.2 * np.clip(dens, 0, 2))
        kind[lymph] = LYMPHOCYTE
        keep = kind > 0
        x, y, kind = x[keep], y[keep], kind[keep]
        n = x.size
        rx = np.empty(n, np.float32)
        ry = np.empty(n, np.float32)
        h_od = np.empty(n, np.float32)
        theta = rng.uniform(0, np.pi, n).astype(np.float32)
        t, st, ly = kind == TUMOUR, kind == STROMA, kind == LYMPHOCYTE
        rx[t] = rng.uniform(3.4, 4.6, t.sum()); ry[t] = rx[t] * rng.uniform(0.7, 0.95, t.sum())
        h_od[t] = rng.uniform(0.13, 0.19, t.sum())
        rx[st] = rng.uniform(4.5, 6.5, st.sum()); ry[st] = rng.uniform(1.2, 1.8, st.sum())
        # fibroblasts follow the fibres
        theta[st] = self._fibre_angle + rng.normal(0, 0.25, st.sum())
        h_od[st] = rng.uniform(0.2, 0.26, st.sum())
        rx[ly] = rng.uniform(2.0, 2.6, ly.sum()); ry[ly] = rx[ly] * rng.uniform(0.85, 1.0, ly.sum())
        h_od[ly] = rng.uniform(0.27, 0.34, ly.sum())
        strength, share, completeness = MEMBRANE_BY_SCORE[self.her2_score]
        stained = t & (rng.random(n) < share)
        dab = np.where(stained, strength * rng.uniform(0.7, 1.3, n), 0.0).astype(np.float32)
        gap_k = rng.integers(1, 4, n).astype(np.float32)
        gap_phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        # completeness c -> share of the membrane perimeter stained ~ c: threshold on cos
        gap_t = np.full(n, np.cos(np.pi * np.clip(completeness, 0, 1)), np.float32)
        gap_t = np.where(completeness >= 1.0, -2.0, gap_t).astype(np.float32)
        cells = Cells(x.astype(np.float64), y.astype(np.float64), kind, rx, ry, theta, h_od, dab,
                      gap_k, gap_phase, gap_t)
        self._cells[section] = cells
        return cells

    def _grain(self, px0: float, py0: float, W: int, H: int, mpp: float, section: int) -> np.ndarray:
        """Smooth unit-variance texture noise, fixed to absolute pixel positions of this mpp."""
        c0 = round((px0 - self.x0) / mpp)
        r0 = round((py0 - self.y0) / mpp)
        noise = _grain_tiles(self.seed, int(section), mpp, c0 + 2**16, r0 + 2**16, W, H)
        g = ndi.gaussian_filter(noise, 0.35 / mpp + 0.3)
        g *= 1.0 / float(np.sqrt(np.sum(_gauss1d(0.35 / mpp + 0.3) ** 2)) ** 2)
        return g

    # -- rendering ------------------------------------------------------------------
    def render(self, x0_um: float, y0_um: float, width_px: int, height_px: int, mpp: float,
               section: int = 0) -> dict[str, np.ndarray]:
        """Optical-density layers of a region: {'h', 'e', 'dab'} float32 (H, W), plus masks.

        Pixel (col, row) covers case microns [x0 + col*mpp, x0 + (col+1)*mpp) (centre at +0.5).
        """
        cells = self.cells(section)
        pad = int(np.ceil(14.0 / mpp))
        H, W = height_px + 2 * pad, width_px + 2 * pad
        px0 = x0_um - pad * mpp
        py0 = y0_um - pad * mpp
        xs = px0 + (np.arange(W) + 0.5) * mpp
        ys = py0 + (np.arange(H) + 0.5) * mpp
        tissue = self.tissue_mask(xs, ys)
        tumour = tissue & (self._sample_grid(self._islands, xs, ys) > self._tumour_thr)

        # cells of this region, in padded pixel coordinates
        cx = (cells.x - px0) / mpp - 0.5
        cy = (cells.y - py0) / mpp - 0.5
        inr = (cx >= 0) & (cx < W - 0.5) & (cy >= 0) & (cy < H - 0.5)
        idx = np.nonzero(inr)[0]
        seeds = np.zeros((H, W), np.int32)
        seeds[np.rint(cy[idx]).astype(int).clip(0, H - 1), np.rint(cx[idx]).astype(int).clip(0, W - 1)] = idx + 1
        if idx.size:
            ind = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
            label = seeds[ind[0], ind[1]] - 1
            del ind
        else:
            label = np.full((H, W), -1, np.int32)
        valid = label >= 0
        lab = np.where(valid, label, 0)
        rows = np.arange(H, dtype=np.float32)[:, None]
        cols = np.arange(W, dtype=np.float32)[None, :]
        dx = cols - cx.astype(np.float32)[lab]
        dy = rows - cy.astype(np.float32)[lab]
        cos_t, sin_t = np.cos(cells.theta), np.sin(cells.theta)
        inv_rx = (mpp / cells.rx).astype(np.float32)
        inv_ry = (mpp / cells.ry).astype(np.float32)
        c, s = cos_t[lab], sin_t[lab]
        u = (dx * c + dy * s) * inv_rx[lab]
        v = (dy * c - dx * s) * inv_ry[lab]
        del c, s
        rr = np.sqrt(u * u + v * v)
        del u, v
        # soft edge about one pixel wide
        rmin = (np.minimum(cells.rx, cells.ry) / mpp).astype(np.float32)
        nucleus = np.clip((1.0 - rr) * rmin[lab] + 0.5, 0.0, 1.0)
        nucleus[~valid] = 0
        kind = cells.kind[lab]
        grain = self._grain(px0, py0, W, H, mpp, section)
        np.clip(rr, 0, 1, out=rr)
        h = nucleus * cells.h_od[lab] * (1.0 + 0.22 * grain) * (1.0 - 0.25 * rr * rr)
        del rr

        # tumour cell bodies and membranes
        r_body = (_BODY_RADIUS_UM / mpp) ** 2
        body = valid & tumour & (kind == TUMOUR) & (dx * dx + dy * dy < r_body)
        body_label = np.where(body, lab + 1, 0)
        wpx = max(1, round(0.6 / mpp))
        edge = np.zeros((H, W), bool)
        edge[wpx:] |= body_label[wpx:] != body_label[:-wpx]
        edge[:-wpx] |= body_label[:-wpx] != body_label[wpx:]
        edge[:, wpx:] |= body_label[:, wpx:] != body_label[:, :-wpx]
        edge[:, :-wpx] |= body_label[:, :-wpx] != body_label[:, wpx:]
        mr, mc = np.nonzero(edge & body)
        ml = lab[mr, mc]
        ang = np.arctan2(dy[mr, mc], dx[mr, mc])
        on = np.cos(cells.gap_k[ml] * ang + cells.gap_phase[ml]) > cells.gap_t[ml]
        dab = np.zeros((H, W), np.float32)
        dab[mr[on], mc[on]] = cells.dab[ml[on]]
        dab = ndi.gaussian_filter(dab, 0.35 / mpp)
        del dx, dy, edge, body_label

        # eosin: stroma fibres and tumour cytoplasm
        warp = self._sample_grid(self._warp, xs, ys)
        a = self._fibre_angle
        k = np.float32(2 * np.pi / 6.5)
        phase = warp
        phase += (k * np.cos(a) * xs.astype(np.float32))[None, :]
        phase += (k * np.sin(a) * ys.astype(np.float32))[:, None]
        fibres = np.sin(phase)
        fibres += 1.0
        fibres *= 0.5
        fibres = fibres * fibres * fibres
        stroma = tissue & ~tumour
        e = np.zeros((H, W), np.float32)
        e[stroma] = 0.035 + 0.085 * fibres[stroma]
        e[body] = 0.075
        e[tumour & ~body] += 0.03
        e *= 1.0 + 0.12 * grain
        e *= 1.0 - 0.6 * nucleus
        h[body] += 0.012
        h[stroma] += 0.004
        sl = (slice(pad, pad + height_px), slice(pad, pad + width_px))
        return {
            "h": np.maximum(h[sl], 0).astype(np.float32),
            "e": np.maximum(e[sl], 0).astype(np.float32),
            "dab": np.maximum(dab[sl], 0).astype(np.float32),
            "tissue": tissue[sl],
            "tumour": tumour[sl],
        }


def _gauss1d(sigma: float) -> np.ndarray:
    r = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def _grain_tiles(seed: int, section: int, mpp: float, c0: int, r0: int, w: int, h: int) -> np.ndarray:
    """White noise for absolute pixels [r0, r0+h) x [c0, c0+w), drawn per fixed 256-px tile,
    so any region (or band) of a slide gets the same noise at the same place."""
    t = 256
    out = np.empty((h, w), np.float32)
    key = round(mpp * 1e6)
    for tr in range(r0 // t, (r0 + h - 1) // t + 1):
        for tc in range(c0 // t, (c0 + w - 1) // t + 1):
            rng = np.random.default_rng([seed, 4242, section, key, tr + 2**20, tc + 2**20])
            tile = rng.standard_normal((t, t), dtype=np.float32)
            ya, yb = max(r0, tr * t), min(r0 + h, (tr + 1) * t)
            xa, xb = max(c0, tc * t), min(c0 + w, (tc + 1) * t)
            out[ya - r0:yb - r0, xa - c0:xb - c0] = tile[ya - tr * t:yb - tr * t, xa - tc * t:xb - tc * t]
    return out


def _interp_matrix(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) matrix of bilinear weights for sampling a 1-D grid (edge-clamped)."""
    c = np.clip(np.asarray(coords, dtype=np.float64), 0, n - 1)
    i0 = np.floor(c).astype(int)
    i0 = np.clip(i0, 0, max(n - 2, 0))
    f = c - i0
    m = np.zeros((c.size, n), np.float32)
    r = np.arange(c.size)
    m[r, i0] += 1.0 - f
    if n > 1:
        m[r, np.minimum(i0 + 1, n - 1)] += f
    return m
