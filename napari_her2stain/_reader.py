"""npe2 reader: whole-slide images and her2core output folders as lazy, micron-scaled layers.

A slide of any format her2core.slide opens (OME-TIFF and plain TIFF through
tifffile; .svs .mrxs .ndpi .scn .bif .vms .vmu .svslide, DICOM and vendor TIFF through
OpenSlide) becomes one multiscale RGB image layer whose levels are dask arrays over
the slide's tiles (her2core.slide.Slide.level_array): napari reads only the tiles
it draws, so a gigapixel slide opens in a blink and never lands in memory.
Layer scale is microns per pixel, so H&E, HER2 and virtual HER2 written at
different resolutions still line up in the viewer.

A folder written by `her2 register` or `her2 sample` opens its H&E, its real
(registered) HER2 and, where present, its virtual HER2 as aligned layers.
"""

from __future__ import annotations

import json
from pathlib import Path

from her2core.slide import open_slide
from her2core.slide.formats import SLIDE_SUFFIXES, is_slide_path
from napari_her2stain import _layers as L

HE_NAMES = ("he.ome.tif", "he.ome.tiff", "he.tif", "he.svs")
HER2_REGISTERED_NAMES = ("her2_registered.ome.tif", "her2_registered.ome.tiff")
HER2_NAMES = ("her2.ome.tif", "her2.ome.tiff", "her2.tif", "her2.svs")
VIRTUAL_GLOBS = ("virtual_her2*.ome.tif", "virtual*.ome.tif", "her2_virtual*.ome.tif")

_OPEN: dict[str, object] = {}  # path -> Slide: keeps file handles alive while layers use them


def napari_get_reader(path):
    """npe2 reader command: a reader function for slides and her2core folders, else None."""
    if isinstance(path, list):
        if not path or not all(_is_ours(p) for p in path):
            return None
        return read_paths
    return read_paths if _is_ours(path) else None


def _is_ours(path) -> bool:
    p = Path(path)
    if p.is_dir():
        return find_folder_layers(p) is not None
    return is_slide_path(p)


def read_paths(path) -> list[tuple]:
    paths = path if isinstance(path, list) else [path]
    out: list[tuple] = []
    for p in paths:
        p = Path(p)
        out.extend(read_folder(p) if p.is_dir() else [slide_layer(p)])
    return out


# -- single slides -----------------------------------------------------------
def open_cached(path):
    """her2core Slide for `path`, kept open (and shared) while the session lives."""

    key = str(Path(path).resolve())
    slide = _OPEN.get(key)
    if slide is None:
        slide = open_slide(Path(path))
        _OPEN[key] = slide
    return slide


def slide_levels(slide) -> list:
    """Lazy dask arrays of every level, chunked like the slide's tiles (TIFF or vendor)."""
    import dask.array as da
    import numpy as np
    import zarr

    levels = []
    for i in range(slide.level_count):
        z = slide.level_array(i)
        if isinstance(z, zarr.Array):
            arr = da.from_zarr(z, chunks=z.chunks)
        else:  # OpenSlide level: reads only the region of each chunk
            arr = da.from_array(z, chunks=z.chunks, asarray=False, fancy=False,
                                meta=np.empty((0, 0, 3), np.uint8))
        if arr.ndim == 2:  # greyscale slide: show as RGB so overlays compare like with like
            arr = da.stack([arr] * 3, axis=-1)
        elif arr.shape[-1] == 4:
            arr = arr[..., :3]
        levels.append(arr)
    return levels


def slide_layer(path, role: str | None = None, name: str | None = None, **kwargs) -> tuple:
    """LayerDataTuple of one slide: multiscale RGB, scale in µm/px, translated to its origin."""
    path = Path(path)
    slide = open_cached(path)
    mpp = slide.mpp if slide.mpp is not None else 1.0
    levels = slide_levels(slide)
    layer_kwargs = {
        "name": name or _stem(path),
        "rgb": True,
        "multiscale": len(levels) > 1,
        "scale": (mpp, mpp),
        "translate": origin_translate(slide, mpp),
        "units": L.UNITS if slide.mpp is not None else None,
        "contrast_limits": (0, 255),
        "metadata": L.meta(role or _guess_role(path), slide.mpp, path,
                           mpp_known=slide.mpp is not None),
    }
    if layer_kwargs["units"] is None:
        del layer_kwargs["units"]
    layer_kwargs.update(kwargs)
    data = levels if len(levels) > 1 else levels[0]
    return (data, layer_kwargs, "image")


def origin_translate(slide, mpp: float) -> tuple[float, float]:
    """World (row, col) µm of pixel (0, 0)'s centre for a slide cut from another one.

    `origin_xy` is the level-0 (x, y) of the region in its source slide, whose
    microns per pixel the writer records as `slide_mpp` (virtual HER2 of a region)
    — the slide's own mpp otherwise. Output pixel (r, c) covers source
    [origin + c·f, origin + (c+1)·f) with f = mpp / source_mpp, so its centre lies
    half a pixel of each grid further in.
    """
    ox, oy = slide.origin_xy
    src = float(slide.properties.get("slide_mpp") or mpp)
    shift = (mpp - src) / 2.0
    return (oy * src + shift, ox * src + shift)


def _stem(path: Path) -> str:
    name = path.name
    for suf in sorted(SLIDE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _guess_role(path: Path) -> str:
    n = path.name.lower()
    if "virtual" in n:
        return L.ROLE_VIRTUAL
    if "her2" in n or "ihc" in n:
        return L.ROLE_HER2
    return L.ROLE_HE


# -- her2core folders ----------------------------------------------------------
def find_folder_layers(folder: Path) -> dict | None:
    """The slides of a `her2 register` / `her2 sample` folder: {"he", "her2", "virtual", ...}.

    Returns None for a folder that is neither (so other readers may try it).
    A `her2 sample` root with several case folders opens its first case.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found: dict = {}
    transform = folder / "transform.json"
    if transform.exists():
        found.update(_from_transform_json(transform))
    for names, key in ((HE_NAMES, "he"), (HER2_REGISTERED_NAMES, "her2"), (HER2_NAMES, "her2_raw")):
        for n in names:
            if (folder / n).exists() and key not in found:
                found[key] = folder / n
    for pattern in VIRTUAL_GLOBS:
        hits = sorted(folder.glob(pattern))
        if hits and "virtual" not in found:
            found["virtual"] = hits[0]
    if "her2" not in found and "her2_raw" in found:
        found["her2"] = found.pop("her2_raw")
    found.pop("her2_raw", None)
    if (folder / "review.json").exists():
        found["review"] = folder / "review.json"
    if "truth.json" in {p.name for p in folder.iterdir()}:
        found["truth"] = folder / "truth.json"
    if "he" in found:
        return found
    cases = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "he.ome.tif").exists())
    if cases:
        return find_folder_layers(cases[0])
    return None


def _from_transform_json(path: Path) -> dict:
    """Slide paths recorded in a registration's transform.json (relative to its folder)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    for key, names in (("he", ("he_path", "fixed_path")), ("her2_raw", ("her2_path", "moving_path"))):
        for n in names:
            v = info.get(n, doc.get(n))
            if isinstance(v, str):
                p = Path(v)
                p = p if p.is_absolute() else (path.parent / p)
                if p.exists():
                    out[key] = p
                    break
    return out


def read_folder(folder: Path) -> list[tuple]:
    found = find_folder_layers(folder)
    if found is None:
        return []
    layers = [slide_layer(found["he"], role=L.ROLE_HE, name="H&E")]
    if "her2" in found:
        layers.append(slide_layer(found["her2"], role=L.ROLE_HER2, name="HER2 (real)",
                                  opacity=0.5, visible=True))
    if "virtual" in found:
        layers.append(slide_layer(found["virtual"], role=L.ROLE_VIRTUAL, name="HER2 (virtual)",
                                  opacity=0.5))
    # the folder itself is remembered so the registration widget can load its review
    for _, kw, _ in layers:
        kw["metadata"][L.KEY]["folder"] = str(Path(folder))
        if "review" in found:
            kw["metadata"][L.KEY]["review"] = str(found["review"])
    return layers
