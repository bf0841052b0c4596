"""Known geometric transforms between a HER2 slide and its H&E slide (the sample ground truth).

Convention (level-0 pixels, QuPath/GeoJSON style): pixel (col, row) covers
[col, col+1) x [row, row+1); its centre is (col + 0.5, row + 0.5).

The truth maps a HER2 level-0 point p = (x, y) to the H&E level-0 point

    q = M @ (x, y, 1) + D(x, y)

where M is a 3x3 affine and D a smooth displacement field stored as a coarse grid of
node values, node (i, j) sitting at HER2 (x, y) = (origin_x + j * spacing, origin_y + i * spacing),
interpolated bilinearly and clamped to the edge nodes outside the grid. The inverse
(H&E -> HER2) is solved by fixed-point iteration, exact to < 1e-6 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from her2core.coords import apply_affine_xy


@dataclass
class DisplacementGrid:
    """Bilinear displacement field on a regular grid of HER2 level-0 points (pixels)."""

    origin_xy: tuple[float, float]
    spacing: float
    dx: np.ndarray  # (rows, cols) displacement in x (pixels)
    dy: np.ndarray

    def weights(self, coords: np.ndarray, axis: int) -> np.ndarray:
        """(len(coords), n) bilinear weights along one axis (0: y/rows, 1: x/cols)."""
        n = self.dx.shape[axis]
        g = (np.asarray(coords, float) - self.origin_xy[1 - axis]) / self.spacing
        g = np.clip(g, 0.0, n - 1.0)
        i0 = np.clip(np.floor(g).astype(int), 0, max(n - 2, 0))
        f = g - i0
        m = np.zeros((g.size, n))
        r = np.arange(g.size)
        m[r, i0] += 1.0 - f
        if n > 1:
            m[r, np.minimum(i0 + 1, n - 1)] += f
        return m

    def at(self, xy) -> np.ndarray:
        """Displacement (N, 2) at HER2 points xy (N, 2)."""
        pts = np.asarray(xy, float).reshape(-1, 2)
        n_r, n_c = self.dx.shape
        gx = np.clip((pts[:, 0] - self.origin_xy[0]) / self.spacing, 0.0, n_c - 1.0)
        gy = np.clip((pts[:, 1] - self.origin_xy[1]) / self.spacing, 0.0, n_r - 1.0)
        j0 = np.clip(np.floor(gx).astype(int), 0, max(n_c - 2, 0))
        i0 = np.clip(np.floor(gy).astype(int), 0, max(n_r - 2, 0))
        fx, fy = gx - j0, gy - i0
        j1, i1 = np.minimum(j0 + 1, n_c - 1), np.minimum(i0 + 1, n_r - 1)
        out = np.empty_like(pts)
        for k, f in enumerate((self.dx, self.dy)):
            out[:, k] = ((1 - fy) * ((1 - fx) * f[i0, j0] + fx * f[i0, j1])
                         + fy * ((1 - fx) * f[i1, j0] + fx * f[i1, j1]))
        return out.reshape(np.shape(xy))

    def dense(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displacement on the outer product of x columns and y rows (separable bilinear)."""
        wy, wx = self.weights(ys, 0), self.weights(xs, 1)
        return (wy @ self.dx @ wx.T).astype(np.float64), (wy @ self.dy @ wx.T).astype(np.float64)

    def to_json(self) -> dict:
        return {"kind": "bilinear_grid", "origin_xy": [float(v) for v in self.origin_xy],
                "spacing": float(self.spacing),
                "dx": np.round(self.dx, 6).tolist(), "dy": np.round(self.dy, 6).tolist()}

    @staticmethod
    def from_json(d: dict) -> DisplacementGrid:
        return DisplacementGrid(tuple(d["origin_xy"]), float(d["spacing"]),
                                np.asarray(d["dx"], float), np.asarray(d["dy"], float))

    @staticmethod
    def zero(size_xy: tuple[int, int]) -> DisplacementGrid:
        return DisplacementGrid((0.0, 0.0), float(max(size_xy)), np.zeros((2, 2)), np.zeros((2, 2)))


def random_affine(rng: np.random.Generator, size_xy: tuple[float, float], *, max_rotation_deg: float,
                  max_shift_px: float, max_scale: float) -> tuple[np.ndarray, dict]:
    """A HER2 -> H&E affine: rotation and scale about the slide centre, then a shift."""
    w, h = size_xy
    theta = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
    scale = float(1.0 + rng.uniform(-max_scale, max_scale))
    shift = rng.uniform(-max_shift_px, max_shift_px, 2)
    c = np.array([w / 2.0, h / 2.0])
    t = np.deg2rad(theta)
    a = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = c + shift - a @ c
    params = {"rotation_deg": theta, "scale": scale, "shift_xy": shift.tolist(), "center_xy": c.tolist()}
    return m, params


def random_grid(rng: np.random.Generator, size_xy: tuple[int, int], *, amplitude_px: float,
                spacing: float, smoothness: float = 2.0) -> DisplacementGrid:
    """A smooth random displacement field with max |displacement| about `amplitude_px`."""
    from scipy.ndimage import gaussian_filter

    w, h = size_xy
    nc = int(np.ceil(w / spacing)) + 1
    nr = int(np.ceil(h / spacing)) + 1
    out = []
    for _ in range(2):
        f = gaussian_filter(rng.standard_normal((nr, nc)), smoothness, mode="reflect")
        f = f / (np.abs(f).max() + 1e-12) * amplitude_px
        out.append(np.round(f, 6))
    return DisplacementGrid((0.0, 0.0), float(spacing), out[0], out[1])


def her2_to_he(matrix: np.ndarray, grid: DisplacementGrid, xy) -> np.ndarray:
    """HER2 level-0 (x, y) -> H&E level-0 (x, y): M @ p + D(p)."""
    pts = np.asarray(xy, float)
    return apply_affine_xy(matrix, pts) + grid.at(pts)


def he_to_her2(matrix: np.ndarray, grid: DisplacementGrid, xy, *, iterations: int = 100,
               tol: float = 1e-9) -> np.ndarray:
    """H&E level-0 (x, y) -> HER2 level-0 (x, y): solves q = M p + D(p) for p."""
    q = np.asarray(xy, float).reshape(-1, 2)
    minv = np.linalg.inv(np.asarray(matrix, float))
    p = apply_affine_xy(minv, q)
    for _ in range(iterations):
        p_new = apply_affine_xy(minv, q - grid.at(p))
        if np.max(np.abs(p_new - p), initial=0.0) < tol:
            p = p_new
            break
        p = p_new
    return p.reshape(np.shape(xy))


def sample_positions(matrix: np.ndarray, grid: DisplacementGrid, width: int, height: int,
                     row0: int = 0, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """H&E (x, y) of the centres of HER2 pixel rows [row0, row0+rows): what each HER2 pixel shows."""
    rows = height - row0 if rows is None else rows
    xs = np.arange(width) + 0.5
    ys = np.arange(row0, row0 + rows) + 0.5
    ddx, ddy = grid.dense(xs, ys)
    m = np.asarray(matrix, float)
    qx = m[0, 0] * xs[None, :] + m[0, 1] * ys[:, None] + m[0, 2] + ddx
    qy = m[1, 0] * xs[None, :] + m[1, 1] * ys[:, None] + m[1, 2] + ddy
    return qx, qy


def resample(layers: list[np.ndarray], canvas_origin_xy: tuple[float, float], matrix: np.ndarray,
             grid: DisplacementGrid, width: int, height: int, band: int = 512) -> list[np.ndarray]:
    """Render a HER2 frame from H&E-frame layers: out[r, c] = layer at her2_to_he(c+.5, r+.5).

    `layers` are float (H, W) rasters whose pixel (0, 0) starts at H&E level-0
    `canvas_origin_xy`; points outside read 0 (empty glass). Bilinear, in row bands.
    """
    from scipy.ndimage import map_coordinates

    ox, oy = canvas_origin_xy
    outs = [np.zeros((height, width), np.float32) for _ in layers]
    for r0 in range(0, height, band):
        n = min(band, height - r0)
        qx, qy = sample_positions(matrix, grid, width, height, r0, n)
        coords = np.stack([qy - oy - 0.5, qx - ox - 0.5])
        for src, dst in zip(layers, outs):
            dst[r0:r0 + n] = map_coordinates(src, coords, order=1, mode="constant", cval=0.0)
    return outs


def sampled_grid(size_xy: tuple[int, int], spacing: float, fn) -> DisplacementGrid:
    """A DisplacementGrid holding `fn(x, y) -> (dx, dy)` (arrays of HER2 px) at nodes `spacing` px apart."""
    w, h = size_xy
    nc, nr = int(np.ceil(w / spacing)) + 1, int(np.ceil(h / spacing)) + 1
    gx, gy = np.meshgrid(np.arange(nc) * float(spacing), np.arange(nr) * float(spacing))
    dx, dy = fn(gx, gy)
    return DisplacementGrid((0.0, 0.0), float(spacing), np.round(dx, 6), np.round(dy, 6))


def wave_field(rng: np.random.Generator, *, amplitude_px: tuple[float, float],
               wavelength_px: tuple[float, float], waves: int = 3):
    """fn(x, y) -> (dx, dy): smooth tissue stretch, a sum of plane waves per component.

    Why plane waves: their wavelength (how local the stretch is) and peak amplitude are
    set directly, as in the restained-slide deformations of the registration benchmark.
    """
    comps = []
    for _ in range(2):
        ks = []
        for _ in range(waves):
            lam = rng.uniform(*wavelength_px)
            ang = rng.uniform(0, np.pi)
            ks.append((2 * np.pi / lam * np.cos(ang), 2 * np.pi / lam * np.sin(ang), rng.uniform(0, 2 * np.pi),
                       rng.uniform(0.5, 1.0)))
        comps.append(ks)
    amp = float(rng.uniform(*amplitude_px))

    def fn(x, y):
        out = []
        for ks in comps:
            out.append(sum(a * np.sin(kx * x + ky * y + ph) for kx, ky, ph, a in ks))
        norm = float(np.sqrt(out[0] ** 2 + out[1] ** 2).max()) + 1e-12
        return out[0] * (amp / norm), out[1] * (amp / norm)

    return fn


def tear_field(p0_xy, p1_xy, *, opening_px: float, width_px: float):
    """fn(x, y) -> (dx, dy): a tear along the segment p0-p1 that opens by `opening_px` in HER2.

    The HER2 side across the segment is pulled apart along its normal; the change happens over
    `width_px` (> 2 x opening keeps the map invertible) and fades out past the segment's ends.
    Used with `tear_gap_mask` to blank the opened strip (torn-away tissue).
    """
    p0, p1 = np.asarray(p0_xy, float), np.asarray(p1_xy, float)
    t = (p1 - p0) / np.linalg.norm(p1 - p0)
    nrm = np.array([-t[1], t[0]])
    length = float(np.linalg.norm(p1 - p0))

    def fn(x, y):
        rx, ry = x - p0[0], y - p0[1]
        d = rx * nrm[0] + ry * nrm[1]          # signed distance to the line
        s = rx * t[0] + ry * t[1]              # position along it
        step = np.clip(d / width_px, -0.5, 0.5)  # -0.5 .. 0.5 across the strip
        fade = np.clip(np.minimum(s, length - s) / width_px + 1.0, 0.0, 1.0)
        mag = -opening_px * step * fade        # HER2 points move towards the line: H&E shows less
        return mag * nrm[0], mag * nrm[1]

    return fn


def tear_gap_mask(p0_xy, p1_xy, width_px: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of HER2 points (x, y) inside the opened strip of `tear_field` (torn, empty glass)."""
    p0, p1 = np.asarray(p0_xy, float), np.asarray(p1_xy, float)
    t = (p1 - p0) / np.linalg.norm(p1 - p0)
    nrm = np.array([-t[1], t[0]])
    rx, ry = x - p0[0], y - p0[1]
    d = rx * nrm[0] + ry * nrm[1]
    s = rx * t[0] + ry * t[1]
    return (np.abs(d) < width_px / 2) & (s > 0) & (s < np.linalg.norm(p1 - p0))
