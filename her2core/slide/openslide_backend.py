"""OpenSlide backend: vendor formats (.mrxs .ndpi .svs .scn .bif .vms .vmu .svslide, DICOM WSI,
Philips/Ventana/Trestle and generic pyramidal TIFF) through the PyPI wheels.

`openslide-python` + `openslide-bin` bring the C library with them, so no system
package is needed. OpenSlide returns RGBA; transparent pixels (outside a MIRAX
scan's tiles, say) are composited onto the slide's background colour, white by
default, like the parts outside the slide. Microns per pixel come from the
vendor's properties (her2core.slide.mpp.vendor_mpp).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.slide.base import LevelView, Slide
from her2core.slide.mpp import vendor_mpp

_DEFAULT_TILE = 512
_MAX_CHUNK = 2048


def import_openslide():
    """The `openslide` module, or a UserError saying which wheels to install."""
    try:
        import openslide
    except (ImportError, OSError) as exc:  # OSError: the module is there, the C library is not
        raise UserError(f"OpenSlide is unavailable ({exc}); "
                        "pip install openslide-python openslide-bin") from None
    return openslide


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide; each level a lazy tile-chunked array (base.LevelView)."""

    backend = "openslide"

    def __init__(self, path: str | Path, mpp: float | None = None):
        openslide = import_openslide()
        super().__init__(path)
        self._error = openslide.OpenSlideError
        if self.path.suffix.lower() == ".mrxs":
            folder = self.path.with_suffix("")
            if not (folder / "Slidedat.ini").is_file():
                raise UserError(f"{self.path}: its data folder {folder.name}/ (with Slidedat.ini) "
                                "is missing, and OpenSlide reads a .mrxs only with it; copy the "
                                ".mrxs together with its folder")
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise UserError(f"{self.path}: OpenSlide does not recognise it as a slide; the file is "
                            "truncated or damaged, or not .mrxs .ndpi .svs .scn .bif .vms .vmu "
                            ".svslide, DICOM or pyramidal TIFF") from None
        except openslide.OpenSlideError as exc:
            raise UserError(f"{self.path}: OpenSlide cannot open it ({exc}); the file (or a .mrxs's "
                            "data folder) is truncated or damaged, copy it again") from None
        props = dict(self._osr.properties)
        self.vendor_properties = props
        self.vendor = props.get("openslide.vendor", "")
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._osr.level_dimensions]
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        bg = props.get("openslide.background-color", "FFFFFF")
        try:
            self._background = np.array([int(bg[i:i + 2], 16) for i in (0, 2, 4)], np.float32)
        except ValueError:
            self._background = np.full(3, 255.0, np.float32)
        self._set_mpp(vendor_mpp(props, _leica_description(self.path, self.vendor)), mpp)

    def tile_size(self, level: int) -> tuple[int, int]:
        """(h, w) of the format's tiles at `level` (OpenSlide's hint), for lazy chunking."""
        p = self.vendor_properties
        th = int(p.get(f"openslide.level[{level}].tile-height", 0) or 0)
        tw = int(p.get(f"openslide.level[{level}].tile-width", 0) or 0)
        # tiny vendor tiles make napari/dask graphs huge, whole-strip hints make chunks huge
        return (min(max(th, _DEFAULT_TILE), _MAX_CHUNK), min(max(tw, _DEFAULT_TILE), _MAX_CHUNK))

    def level_array(self, level: int = 0) -> LevelView:
        return LevelView(self, level)

    def _read_block(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        loc = (round(x0 * ds), round(y0 * ds))
        try:
            rgba = np.asarray(self._osr.read_region(loc, level, (x1 - x0, y1 - y0)))
        except self._error as exc:
            raise UserError(f"{self.path}: OpenSlide cannot read level {level} ({exc}); the file "
                            "is truncated or damaged, copy it again") from None
        rgb = rgba[..., :3]
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        a = alpha[..., None].astype(np.float32) / 255.0
        out = rgb.astype(np.float32) * a + self._background * (1.0 - a)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def close(self) -> None:
        self._osr.close()


def _leica_description(path: Path, vendor: str) -> str | None:
    """A Leica SCN's XML (sizes in nm and px), which OpenSlide does not pass on."""
    if vendor != "leica":
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as t:
            return t.pages[0].description
    except Exception:  # noqa: BLE001 - OpenSlide read it; no µm/px is the worst outcome
        return None
