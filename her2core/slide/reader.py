"""`open_slide`: the one way her2core opens a whole-slide image, whatever its format.

The backend (her2core.slide.tiff_backend for OME-TIFF and plain TIFF,
her2core.slide.openslide_backend for vendor formats) is chosen by
her2core.slide.formats.choose_backend; every backend has the API of
her2core.slide.base.Slide. A slide without microns per pixel opens, and the
first read that needs them raises one UserError asking for `--mpp`.
"""

from __future__ import annotations

from pathlib import Path

from her2core.errors import UserError
from her2core.slide.base import Slide, resize_rgb, to_rgb
from her2core.slide.formats import BACKENDS, choose_backend

__all__ = ["Slide", "open_slide", "resize_rgb", "to_rgb"]


def open_slide(path: str | Path, mpp: float | None = None, backend: str | None = None) -> Slide:
    """Open a slide; `mpp` overrides (or supplies missing) microns per pixel at level 0.

    `backend` ("tifffile" or "openslide") forces a reader; by default the format decides.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: slide not found")
    if backend is None:
        backend = choose_backend(path)
    if backend == "tifffile":
        from her2core.slide.tiff_backend import TiffSlide

        return TiffSlide(path, mpp=mpp)
    if backend == "openslide":
        from her2core.slide.openslide_backend import OpenSlideSlide

        return OpenSlideSlide(path, mpp=mpp)
    raise UserError(f"slide backend {backend!r}: choose one of {', '.join(BACKENDS)}")
