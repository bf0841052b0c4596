"""The reader base class: one slide API (levels, microns per pixel, region reads) for every backend.

A backend (tifffile/zarr for OME-TIFF and plain TIFF, OpenSlide for vendor formats)
fills in the level geometry and metadata and implements `_read_block` and
`level_array`; everything the rest of her2core calls — `read_region`,
`read_at_mpp`, `thumbnail`, `level_mpp`, ... — lives here once, so every format
reads the same way. Coordinates: `location` is level-0 (x, y) pixels; arrays are
(row, col, channel) RGB uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2core.errors import UserError


class Slide:
    """A lazily read slide: levels, microns per pixel, region reads in level-0 (x, y).

    Backends set `level_dimensions` ((w, h) per level), `level_downsamples`,
    `origin_xy` (level-0 offset of a region cut from another slide, her2core's own
    outputs), `properties` (her2core's recorded properties) and
    `vendor_properties` (the format's own key/value metadata), then call
    `_set_mpp`.
    """

    #: Short name of the backend ("tifffile", "openslide"), for messages and tests.
    backend = "base"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: slide not found")
        self.level_dimensions: list[tuple[int, int]] = []
        self.level_downsamples: list[float] = []
        self.origin_xy: tuple[float, float] = (0.0, 0.0)
        self.properties: dict = {}
        self.vendor_properties: dict[str, str] = {}
        self.mpp: float | None = None

    def _set_mpp(self, meta_mpp: float | None, override: float | None) -> None:
        """`override` (the CLI's --mpp) wins over the file's own microns per pixel."""
        self.mpp = float(override) if override is not None else meta_mpp
        if self.mpp is not None and not (self.mpp > 0 and np.isfinite(self.mpp)):
            raise UserError(f"{self.path}: invalid microns per pixel {self.mpp}")

    # -- what a backend implements ------------------------------------------
    def _read_block(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """RGB uint8 (y1-y0, x1-x0, 3) of `level`, in that level's pixels, inside the level."""
        raise NotImplementedError

    def level_array(self, level: int = 0):
        """A lazy array of `level`, axes (row, col, channel), with `.shape`, `.dtype`, `.chunks`."""
        raise NotImplementedError

    def close(self) -> None:
        pass

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
            raise UserError(f"{self.path}: slide has no microns per pixel; "
                            "pass --mpp (e.g. --mpp 0.25)")
        return self.mpp

    def level_mpp(self, level: int) -> float:
        return self.require_mpp() * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float) -> int:
        """Cheapest level whose downsample does not exceed `downsample`."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.0001:
                best = i
        return best

    # -- reads ------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int],
                    fill: int = 255) -> np.ndarray:
        """RGB uint8 (h, w, 3) at `level`; `location` is level-0 (x, y), `size` is (w, h) at `level`.

        Parts outside the slide are filled with `fill` (white background).
        """
        ds = self.level_downsamples[level]
        x = round(location[0] / ds)
        y = round(location[1] / ds)
        w, h = int(size[0]), int(size[1])
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), fill, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read_block(level, x0, y0, x1, y1)
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
        out_w = round(size_um[0] / target_mpp)
        out_h = round(size_um[1] / target_mpp)
        level = self.best_level_for_downsample(target_mpp / mpp0)
        ds = self.level_downsamples[level]
        src_w = round(size_um[0] / (mpp0 * ds))
        src_h = round(size_um[1] / (mpp0 * ds))
        img = self.read_region((round(location[0]), round(location[1])), level,
                               (src_w, src_h))
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
            img = resize_rgb(img, (max(1, round(img.shape[0] * scale)),
                                   max(1, round(img.shape[1] * scale))))
            ds = w0 / img.shape[1]
        return img, ds

    # -- lifecycle --------------------------------------------------------
    def __enter__(self) -> Slide:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path.name!r}, {self.dimensions[0]}x"
                f"{self.dimensions[1]}, levels={self.level_count}, mpp={self.mpp})")


def to_rgb(block: np.ndarray) -> np.ndarray:
    """RGB uint8 from grey, RGBA or wider-than-8-bit pixels."""
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
