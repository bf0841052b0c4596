"""npe2 sample data: the embedded H&E / HER2 pairs from her2core.sample.

Both open as two RGB layers in microns (scale = mpp), the HER2 half-transparent
over the H&E, tagged with their roles so the widgets find them at once.
"""

from __future__ import annotations

from napari_her2stain import _layers as L


def _pair(kind: str, seed: int = 0) -> list[tuple]:
    from her2core.sample import sample_pair

    he, her2, mpp = sample_pair(kind=kind, seed=seed)
    label = "synthetic" if kind == "synthetic" else "real H&E"
    common = {"rgb": True, "scale": (mpp, mpp), "units": ("µm", "µm")}
    return [
        (he, {**common, "name": f"H&E ({label})", "metadata": L.meta(L.ROLE_HE, mpp, sample=kind)},
         "image"),
        (her2, {**common, "name": f"HER2 ({label})", "opacity": 0.5,
                "metadata": L.meta(L.ROLE_HER2, mpp, sample=kind)}, "image"),
    ]


def synthetic_pair() -> list[tuple]:
    """Synthetic same-section H&E and HER2 pair with a known HER2 score."""
    return _pair("synthetic")


def real_pair() -> list[tuple]:
    """A real H&E image and its HER2 rendering (embedded, no download)."""
    return _pair("real")
