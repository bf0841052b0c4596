"""The confidence map of a virtual HER2 as a layer over it: one channel, a colormap that reads.

The map is `her2core.inference.confidence`'s uint8 confidence (255 = all K predictions agree).
Contrast limits: black at confidence 0.6 and below (a per-pixel spread of 0.1 in [0, 1]
intensity, ~25 grey levels: the model is guessing there), bright at 1. The layer sits on the
virtual slide's grid (same µm/px, same origin), so it lines up with the virtual layer.
"""

from __future__ import annotations

from pathlib import Path

from napari_her2stain import _layers as L

COLORMAP = "inferno"
#: confidence 0.6 (uncertainty 0.1) .. 1, as stored uint8 values
CONTRAST_LIMITS = (153, 255)


def confidence_layer(path, name: str | None = None, **kwargs) -> tuple:
    """LayerDataTuple of a confidence pyramid: multiscale, one channel, scale µm/px, its origin."""
    import dask.array as da

    from napari_her2stain._reader import open_cached, origin_translate

    path = Path(path)
    slide = open_cached(path)
    mpp = slide.mpp if slide.mpp is not None else 1.0
    levels = []
    for i in range(slide.level_count):
        z = slide.level_array(i)
        arr = da.from_zarr(z, chunks=z.chunks)
        levels.append(arr if arr.ndim == 2 else arr[..., 0])
    kw = {"name": name or f"confidence: {path.name}", "rgb": False, "multiscale": len(levels) > 1,
          "scale": (mpp, mpp), "translate": origin_translate(slide, mpp), "units": L.UNITS,
          "colormap": COLORMAP, "contrast_limits": CONTRAST_LIMITS, "opacity": 0.6,
          "metadata": L.meta(L.ROLE_CONFIDENCE, slide.mpp, path,
                             meaning=slide.properties.get("meaning"),
                             contrast="black: confidence <= 0.6 (std >= 0.1), bright: 1")}
    kw.update(kwargs)
    return (levels if len(levels) > 1 else levels[0], kw, "image")


def confidence_file_of(virtual_layer) -> Path | None:
    """The `.confidence.ome.tif` written beside a virtual layer's slide, if there is one."""
    from her2core.inference.confidence_out import confidence_path

    p = L.info(virtual_layer).get("path")
    if not p:
        return None
    c = confidence_path(p)
    return c if c.is_file() else None


def add_confidence_over(viewer, virtual_layer, path=None):
    """Add (once) the confidence layer of `virtual_layer`, on its world grid; None if none."""
    path = Path(path) if path else confidence_file_of(virtual_layer)
    if path is None:
        return None
    for ly in L.layers_with_role(viewer, L.ROLE_CONFIDENCE):
        if L.info(ly).get("path") == str(path):
            return ly
    data, kw, _ = confidence_layer(path, scale=tuple(virtual_layer.scale[-2:]),
                                   translate=tuple(virtual_layer.translate[-2:]))
    kw["metadata"][L.KEY]["virtual_layer"] = virtual_layer.name
    return viewer.add_image(data, **kw)
