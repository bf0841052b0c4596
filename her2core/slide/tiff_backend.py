"""tifffile + zarr backend: the fast path for OME-TIFF (her2core's own outputs) and plain TIFF.

tifffile + zarr give a lazy array per pyramid level (SubIFDs included); a region
read touches only the tiles it overlaps. Microns per pixel come from the OME-XML,
the Aperio description, or the TIFF resolution tags, in that order.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.slide.base import Slide, to_rgb
from her2core.slide.mpp import mpp_from_resolution

_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


class TiffSlide(Slide):
    """A TIFF slide read with tifffile; each level a lazy zarr array."""

    backend = "tifffile"

    def __init__(self, path: str | Path, mpp: float | None = None):
        import tifffile
        import zarr

        super().__init__(path)
        try:
            with quiet_tifffile():
                self._tif = tifffile.TiffFile(self.path)
                series = self._tif.series[0]
                levels = list(series.levels)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
            raise UserError(f"{self.path}: cannot read as a TIFF slide ({exc}); the file is "
                            "truncated or damaged, or not an OME-TIFF, SVS or tiled TIFF") from None
        self._arrays = []
        for lvl in levels:
            shape = dict(zip(lvl.axes, lvl.shape))
            if "Y" not in shape or "X" not in shape:
                self._tif.close()
                raise UserError(f"{self.path}: not a 2-D image (axes {lvl.axes})")
            self.level_dimensions.append((shape["X"], shape["Y"]))
        try:
            for i in range(len(levels)):
                self._arrays.append(zarr.open(series.aszarr(level=i), mode="r"))
        except Exception as exc:  # noqa: BLE001 - e.g. a truncated file
            self._tif.close()
            raise UserError(f"{self.path}: cannot read as a TIFF slide ({exc})") from None
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = [(w0 / w + h0 / h) / 2 for (w, h) in self.level_dimensions]
        meta_mpp, self.origin_xy, self.properties = self._read_metadata()
        self._set_mpp(meta_mpp, mpp)

    def _read_metadata(self) -> tuple[float | None, tuple[float, float], dict]:
        tif = self._tif
        props: dict = {}
        origin = (0.0, 0.0)
        mpp = None
        if tif.is_ome and tif.ome_metadata:
            try:
                root = ET.fromstring(tif.ome_metadata)
                ns = {"ome": root.tag.split("}")[0].strip("{")}
                pix = root.find(".//ome:Image/ome:Pixels", ns)
                if pix is not None and pix.get("PhysicalSizeX"):
                    unit = pix.get("PhysicalSizeXUnit", "µm")
                    mpp = float(pix.get("PhysicalSizeX")) * _UNIT_TO_UM.get(unit, 1.0)
                for m in root.iter(f"{{{ns['ome']}}}M"):
                    if m.get("K") == "her2core" and m.text:
                        props.update(json.loads(m.text))
            except (ET.ParseError, ValueError):
                pass
            if "origin_xy" in props:
                origin = tuple(float(v) for v in props["origin_xy"])
        page = tif.pages[0]
        desc = page.description or ""
        if mpp is None and "Aperio" in desc:
            m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", desc)
            if m:
                mpp = float(m.group(1))
        if mpp is None:
            mpp = _mpp_from_tags(page)
        return mpp, origin, props

    def level_array(self, level: int = 0):
        """The lazy zarr array of `level`, axes (row, col, channel)."""
        return self._arrays[level]

    def _read_block(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        try:
            block = np.asarray(self._arrays[level][y0:y1, x0:x1])
        except Exception as exc:  # noqa: BLE001 - tiles past the end of a truncated file
            raise UserError(f"{self.path}: cannot read level {level} ({exc}); the file is "
                            "truncated or damaged, copy it again") from None
        return to_rgb(block)

    def close(self) -> None:
        self._tif.close()


@contextmanager
def quiet_tifffile():
    """tifffile logs each bad IFD offset; the UserError that follows says it in one line."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.ERROR + 10)
    try:
        yield
    finally:
        log.setLevel(level)


def _mpp_from_tags(page) -> float | None:
    try:
        unit = page.tags["ResolutionUnit"].value
        xres = page.tags["XResolution"].value
    except KeyError:
        return None
    num, den = xres if isinstance(xres, tuple) else (xres, 1)
    if not num or not den:
        return None
    return mpp_from_resolution(num / den, int(unit))
