"""Open TIFF-based whole-slide images (OME-TIFF, SVS, generic tiled TIFF) lazily.

tifffile + zarr give a lazy array per pyramid level; a region read touches only
the tiles it overlaps. Microns per pixel come from the OME-XML, the Aperio
description, or the TIFF resolution tags, in that order; a slide without them
must be given `mpp=` explicitly (the CLI's `--mpp`).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from her2core.errors import UserError

_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


class Slide:
    """A lazily read slide: levels, microns per pixel, region reads in level-0 (x, y)."""

    def __init__(self, path: str | Path, mpp: float | None = None):
        import tifffile
        import zarr

        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: slide not found")
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            levels = list(series.levels)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
            raise UserError(f"{self.path}: cannot read as a TIFF slide ({exc}); "
                            "give an OME-TIFF, SVS or tiled TIFF") from None
        self._arrays = []
        self.level_dimensions: list[tuple[int, int]] = []
        self._axes = series.axes
        for lvl in levels:
            shape = dict(zip(lvl.axes, lvl.shape))
            if "Y" not in shape or "X" not in shape:
                raise UserError(f"{self.path}: not a 2-D image (axes {lvl.axes})")
            self.level_dimensions.append((shape["X"], shape["Y"]))
        for i in range(len(levels)):
            store = series.aszarr(level=i)
            self._arrays.append(zarr.open(store, mode="r"))
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = [(w0 / w + h0 / h) / 2 for (w, h) in self.level_dimensions]
        meta_mpp, self.origin_xy, self.properties = self._read_metadata()
        self.mpp = float(mpp) if mpp is not None else meta_mpp
        if self.mpp is not None and not (self.mpp > 0 and np.isfinite(self.mpp)):
            raise UserError(f"{self.path}: invalid microns per pixel {self.mpp}")

    # -- metadata -------------------------------------------------------
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
            mpp = _mpp_from_resolution(page)
        return mpp, origin, props

    # -- geometry -------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def require_mpp(self) -> float:
        if self.mpp is None:
            raise UserError(f"{self.path}: slide has no microns per pixel; pass --mpp (e.g. --mpp 0.25)")
        return self.mpp

    def level_mpp(self, level: int) -> float:
        return self.require_mpp() * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float) -> int:
        """Highest-resolution-cheapest level whose downsample does not exceed `downsample`."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.0001:
                best = i
        return best

    def level_array(self, level: int = 0):
        """The lazy zarr array of `level`, axes (row, col, channel)."""
        return self._arrays[level]

    # -- reads ------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int],
                    fill: int = 255) -> np.ndarray:
        """RGB uint8 (h, w, 3) at `level`; `location` is level-0 (x, y), `size` is (w, h) at `level`.

        Parts outside the slide are filled with `fill` (white background).
        """
        ds = self.level_downsamples[level]
        x = int(round(location[0] / ds))
        y = int(round(location[1] / ds))
        w, h = int(size[0]), int(size[1])
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), fill, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 > x0 and y1 > y0:
            block = np.asarray(self._arrays[level][y0:y1, x0:x1])
            out[y0 - y:y1 - y, x0 - x:x1 - x] = _to_rgb(block)
        return out

    def read_level(self, level: int) -> np.ndarray:
        """A whole level as RGB uint8; meant for low-resolution levels only."""
        w, h = self.level_dimensions[level]
        return self.read_region((0, 0), level, (w, h))

    def read_at_mpp(self, location: tuple[float, float], size_um: tuple[float, float],
                    target_mpp: float) -> np.ndarray:
        """Region of `size_um` microns at level-0 (x, y) `location`, resampled to `target_mpp`.

        Reads from the cheapest level at least as fine as the target, then
        resizes with area averaging (antialiased) to the exact output size.
        """
        mpp0 = self.require_mpp()
        out_w = int(round(size_um[0] / target_mpp))
        out_h = int(round(size_um[1] / target_mpp))
        level = self.best_level_for_downsample(target_mpp / mpp0)
        ds = self.level_downsamples[level]
        src_w = int(round(size_um[0] / (mpp0 * ds)))
        src_h = int(round(size_um[1] / (mpp0 * ds)))
        img = self.read_region((int(round(location[0])), int(round(location[1]))), level, (src_w, src_h))
        if (src_w, src_h) == (out_w, out_h):
            return img
        return resize_rgb(img, (out_h, out_w))

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """A small RGB overview and its downsample factor from level 0."""
        w0, h0 = self.dimensions
        ds_needed = max(w0, h0) / max_size
        level = self.best_level_for_downsample(max(ds_needed, 1.0))
        img = self.read_level(level)
        ds = self.level_downsamples[level]
        if max(img.shape[:2]) > max_size:
            scale = max_size / max(img.shape[:2])
            img = resize_rgb(img, (max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))))
            ds = w0 / img.shape[1]
        return img, ds

    # -- lifecycle --------------------------------------------------------
    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Slide({self.path.name!r}, {self.dimensions[0]}x{self.dimensions[1]}, "
                f"levels={self.level_count}, mpp={self.mpp})")


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide; `mpp` overrides (or supplies missing) microns per pixel at level 0."""
    return Slide(path, mpp=mpp)


def _mpp_from_resolution(page) -> float | None:
    try:
        unit = page.tags["ResolutionUnit"].value
        xres = page.tags["XResolution"].value
    except KeyError:
        return None
    num, den = xres if isinstance(xres, tuple) else (xres, 1)
    if not num:
        return None
    ppu = num / den
    unit = int(unit)
    if unit == 3:  # centimetre
        return 1e4 / ppu
    if unit == 2:  # inch
        mpp = 25400.0 / ppu
        return mpp if mpp < 50 else None  # 72/96 dpi defaults are not a scan resolution
    return None


def _to_rgb(block: np.ndarray) -> np.ndarray:
    if block.ndim == 2:
        block = np.repeat(block[..., None], 3, axis=2)
    if block.shape[-1] == 4:
        block = block[..., :3]
    if block.dtype != np.uint8:
        if np.issubdtype(block.dtype, np.floating):
            block = np.clip(block * (255 if block.max() <= 1 else 1), 0, 255).astype(np.uint8)
        else:
            block = (block / max(1, np.iinfo(block.dtype).max / 255)).astype(np.uint8)
    return block


def resize_rgb(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize RGB uint8 to (h, w); antialiased area averaging when shrinking."""
    from skimage.transform import resize

    if img.shape[:2] == tuple(out_hw):
        return img
    shrinking = out_hw[0] < img.shape[0]
    out = resize(img, (out_hw[0], out_hw[1], img.shape[2]), order=1, anti_aliasing=shrinking,
                 preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
