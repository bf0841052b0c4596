"""Pathology metrics on the DAB (HER2) channel, from colour deconvolution.

WHY: PSNR/SSIM reward blur and say nothing about whether the *staining* is right.
These metrics compare the brown DAB signal of the virtual and the real HER2 tile.
DAB optical density comes from `her2core.stain.dab_od` (Ruifrok & Johnston stain
vectors as scikit-image's rgb2hed, clipped at 0; units as rgb2hed, ~OD10/6).

Per pair (virtual, real) at `mpp` microns per pixel:
- `dab_od_mae`: mean |DAB_virtual - DAB_real| over all pixels (0 = identical).
- `iod_ratio`: integrated DAB OD, (sum virtual + eps) / (sum real + eps), eps = 1e-3 per
  pixel (keeps the ratio finite on DAB-free tiles; 1 = same amount of stain).
- `dab_grid_r`: Pearson r of mean DAB OD on a square grid of `grid_um` = 10 um cells
  (about one tumour cell, so small misregistration is forgiven; cell side =
  round(grid_um / mpp) px, the partial last row/column dropped). r is 1 when both
  grids are constant and equal, 0 when only one is constant.
- `dab_pos_frac_virtual`, `dab_pos_frac_real`: area fraction with DAB OD >= 0.025.
- `her2_proxy_virtual`, `her2_proxy_real`: HER2 score proxy 0..3 from membrane DAB
  (ASCO/CAP-like, see `her2_proxy`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from her2core.stain import dab_od, hematoxylin_od


@dataclass(frozen=True)
class DabSettings:
    """Every threshold of the DAB metrics (stored in set_metrics.json)."""

    grid_um: float = 10.0  # Pearson-r grid cell (about one tumour cell)
    positive_od: float = 0.025  # DAB-positive pixel
    iod_eps: float = 1e-3  # per-pixel floor of the integrated-OD ratio
    # membrane segmentation
    nucleus_smooth_um: float = 1.0  # Gaussian sigma on hematoxylin before thresholding
    nucleus_min_od: float = 0.02  # floor of the (Otsu) hematoxylin threshold
    nucleus_min_um2: float = 8.0  # smaller blobs are noise
    cell_radius_um: float = 4.0  # nucleus grown by this much = the cell
    membrane_um: float = 1.5  # width of the membrane ring at the cell edge
    # per-cell classes on the membrane ring (mean DAB OD and completeness)
    weak_od: float = 0.02
    moderate_od: float = 0.045
    strong_od: float = 0.09
    complete_frac: float = 0.5  # ring fraction >= positive_od to call a membrane complete
    partial_frac: float = 0.2  # ... to call it (incompletely) stained at all
    # slide-style rule: score k when more than `cell_frac` of cells reach class k
    cell_frac: float = 0.10

    def to_dict(self) -> dict:
        return asdict(self)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    sa, sb = a.std(), b.std()
    if sa < 1e-12 or sb < 1e-12:
        return 1.0 if (sa < 1e-12 and sb < 1e-12 and np.allclose(a, b)) else 0.0
    return float(np.clip(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb), -1.0, 1.0))


def grid_means(od: np.ndarray, cell_px: int) -> np.ndarray:
    """Mean of `od` over non-overlapping cell_px x cell_px blocks (partial edge dropped)."""
    h, w = od.shape[0] // cell_px, od.shape[1] // cell_px
    if h == 0 or w == 0:
        return od.mean(keepdims=True)
    return od[: h * cell_px, : w * cell_px].reshape(h, cell_px, w, cell_px).mean(axis=(1, 3))


def membrane_cells(rgb: np.ndarray, mpp: float, s: DabSettings = DabSettings()):
    """Cell labels and a membrane-ring mask from the hematoxylin counterstain.

    Nuclei = smoothed hematoxylin OD above max(Otsu, nucleus_min_od); each nucleus is
    grown by cell_radius_um (skimage expand_labels) into a cell; the membrane ring is
    the outer membrane_um of each cell plus the borders between touching cells.
    """
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.segmentation import expand_labels, find_boundaries

    h = ndi.gaussian_filter(hematoxylin_od(rgb).astype(np.float64), s.nucleus_smooth_um / mpp)
    thr = s.nucleus_min_od
    if h.max() > h.min():
        thr = max(thr, float(threshold_otsu(h)))
    nuclei = label(h > thr)
    sizes = np.bincount(nuclei.ravel())
    small = sizes < s.nucleus_min_um2 / mpp**2
    small[0] = False
    nuclei[small[nuclei]] = 0
    grow = s.cell_radius_um / mpp
    cells = expand_labels(nuclei, distance=grow)
    dist = ndi.distance_transform_edt(nuclei == 0)
    ring = (cells > 0) & (nuclei == 0) & (dist > grow - s.membrane_um / mpp)
    ring |= find_boundaries(cells, mode="inner") & (nuclei == 0) & (cells > 0)
    return cells, ring


def her2_proxy(rgb: np.ndarray, mpp: float, s: DabSettings = DabSettings()) -> int:
    """HER2 score proxy 0..3 of one IHC tile from membrane DAB.

    Per cell: class 3 if the membrane ring's mean DAB >= strong_od and >= complete_frac
    of its ring pixels are DAB-positive (complete, intense); class 2 if mean >=
    moderate_od and complete; class 1 if mean >= weak_od or >= partial_frac of the ring
    is positive (faint / incomplete); else 0. Tile score: the highest k such that more
    than cell_frac (10 %) of the cells reach class >= k, else 0 (ASCO/CAP-style). A
    proxy for agreement between virtual and real, not a diagnosis: it does not know
    tumour from stroma.
    """
    cells, ring = membrane_cells(rgb, mpp, s)
    n = int(cells.max())
    if n == 0:
        return 0
    d = dab_od(rgb).astype(np.float64)
    lab = np.where(ring, cells, 0)
    count = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    total = np.bincount(lab.ravel(), weights=d.ravel(), minlength=n + 1)[1:]
    pos = np.bincount(lab.ravel(), weights=(d >= s.positive_od).ravel(), minlength=n + 1)[1:]
    keep = count > 0
    if not keep.any():
        return 0
    mean, comp = total[keep] / count[keep], pos[keep] / count[keep]
    cls = np.zeros(len(mean), dtype=int)
    cls[(mean >= s.weak_od) | (comp >= s.partial_frac)] = 1
    cls[(mean >= s.moderate_od) & (comp >= s.complete_frac)] = 2
    cls[(mean >= s.strong_od) & (comp >= s.complete_frac)] = 3
    for k in (3, 2, 1):
        if np.mean(cls >= k) > s.cell_frac:
            return k
    return 0


def dab_metrics(pred: np.ndarray, target: np.ndarray, mpp: float,
                s: DabSettings = DabSettings()) -> dict[str, float]:
    """All per-pair DAB metrics of one virtual (pred) and real (target) RGB uint8 tile."""
    if not (mpp and mpp > 0):
        raise ValueError(f"mpp must be > 0, got {mpp}")
    dv, dr = dab_od(pred).astype(np.float64), dab_od(target).astype(np.float64)
    eps = s.iod_eps * dv.size
    cell = max(1, round(s.grid_um / mpp))
    return {
        "dab_od_mae": float(np.abs(dv - dr).mean()),
        "iod_ratio": float((dv.sum() + eps) / (dr.sum() + eps)),
        "dab_grid_r": _pearson(grid_means(dv, cell), grid_means(dr, cell)),
        "dab_pos_frac_virtual": float((dv >= s.positive_od).mean()),
        "dab_pos_frac_real": float((dr >= s.positive_od).mean()),
        "her2_proxy_virtual": her2_proxy(pred, mpp, s),
        "her2_proxy_real": her2_proxy(target, mpp, s),
    }


def remove_dab(rgb: np.ndarray) -> np.ndarray:
    """The same tile with its DAB stain taken out (hematoxylin kept): a worst case."""
    from her2core.stain import hed_to_rgb, rgb_to_hed

    hed = rgb_to_hed(rgb)
    hed[..., 2] = 0.0
    return hed_to_rgb(hed)


def cohen_kappa(a, b, labels=(0, 1, 2, 3), weights: str | None = None) -> float | None:
    """Cohen's kappa (weights None or 'quadratic'); None when undefined (one class only, disagreeing)."""
    a, b = np.asarray(a, int), np.asarray(b, int)
    k = len(labels)
    pos = {v: i for i, v in enumerate(labels)}
    cm = np.zeros((k, k))
    for x, y in zip(a, b):
        cm[pos[x], pos[y]] += 1
    n = cm.sum()
    if n == 0:
        return None
    i, j = np.indices((k, k))
    w = (i != j).astype(float) if weights is None else ((i - j) / (k - 1)) ** 2
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    denom = (w * expected).sum()
    if denom == 0:
        return 1.0 if (w * cm).sum() == 0 else None
    return float(1.0 - (w * cm).sum() / denom)
