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
from her2core.slide.mpp import MPP_RANGE, plausible_mpp

#: Largest level-0 slide her2 opens: 2^36 px (e.g. 262144 x 262144), beyond any scanner's
#: output (a 75 x 25 mm slide at 0.25 µm/px is 300000 x 100000 = 2^34.8). A header claiming
#: more is damage, refused before a pixel is read or an array allocated.
MAX_SLIDE_PIXELS = 2**36
#: Largest region read into memory at once (2^28 px = 768 MiB RGB). Bigger reads are
#: a bug or an absurd scale; `read_at_mpp` and `thumbnail` shrink large areas band by band.
MAX_READ_PIXELS = 2**28
#: Source areas larger than this (4096² px) are shrunk band by band, never read whole.
SHRINK_ABOVE_PIXELS = 2**24


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
        """`override` (the CLI's --mpp) wins over the file's own microns per pixel.

        Called by every backend once the level geometry is known, so the geometry is checked
        here too: nothing has been read yet.
        """
        self._check_geometry()
        self.mpp = float(override) if override is not None else meta_mpp
        if self.mpp is None:
            return
        if not plausible_mpp(self.mpp):
            given = "--mpp" if override is not None else "the file's"
            raise UserError(f"{self.path}: {given} microns per pixel {self.mpp:g} is outside "
                            f"{MPP_RANGE[0]:g}..{MPP_RANGE[1]:g} (a unit mistake?); pass --mpp "
                            "with the scan resolution, e.g. --mpp 0.25")

    def _check_geometry(self) -> None:
        """Levels with positive sizes, no larger than MAX_SLIDE_PIXELS (from the header only)."""
        if not self.level_dimensions:
            raise UserError(f"{self.path}: no image levels; the file is damaged or not a slide")
        for i, (w, h) in enumerate(self.level_dimensions):
            if w <= 0 or h <= 0:
                raise UserError(f"{self.path}: level {i} is {w} x {h} px; the file is damaged")
        w0, h0 = self.level_dimensions[0]
        if w0 * h0 > MAX_SLIDE_PIXELS:
            raise UserError(f"{self.path}: the header claims {w0} x {h0} px, more than any slide "
                            f"({MAX_SLIDE_PIXELS:.3g} px); the file is damaged or not a slide")

    # -- what a backend implements ------------------------------------------
    def _read_block(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """RGB uint8 (y1-y0, x1-x0, 3) of `level`, in that level's pixels, inside the level: a
        fresh array (`read_region` hands it out as it is)."""
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
        if w < 0 or h < 0 or w * h > MAX_READ_PIXELS:
            raise UserError(f"{self.path}: a {w} x {h} px read of level {level} is more than her2 "
                            f"reads at once ({MAX_READ_PIXELS:.3g} px); check --mpp/--work-mpp")
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        block = self._read_block(level, x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
        if (block is not None and block.shape == (h, w, 3) and block.dtype == np.uint8
                and block.flags.c_contiguous and block.flags.writeable):
            return block  # inside the level, a fresh array: no fill and no second copy
        out = np.full((h, w, 3), fill, dtype=np.uint8)
        if block is not None:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = block
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
        factor = min(src_w // max(out_w, 1), src_h // max(out_h, 1))
        if src_w * src_h > SHRINK_ABOVE_PIXELS and factor >= 2:
            img = self.read_shrunk((round(location[0]), round(location[1])), level,
                                   (src_w, src_h), factor)
            return resize_rgb(img, (out_h, out_w))
        img = self.read_region((round(location[0]), round(location[1])), level,
                               (src_w, src_h))
        if (src_w, src_h) == (out_w, out_h):
            return img
        return resize_rgb(img, (out_h, out_w))

    def read_shrunk(self, location: tuple[float, float], level: int, size: tuple[int, int],
                    factor: int, fill: int = 255) -> np.ndarray:
        """`read_region(location, level, size, fill)` averaged over factor x factor blocks (edges
        replicated), read in bands of rows so memory stays at a few bands whatever the area.

        Output pixel j covers level pixels [j·factor, (j+1)·factor). Whole blocks per band: the
        result does not depend on the band height.
        """
        w, h = size
        ds = self.level_downsamples[level]
        lx, ly = round(location[0] / ds), round(location[1] / ds)  # as read_region rounds them
        out = np.empty((-(-h // factor), -(-w // factor), 3), np.uint8)
        band = max(1, SHRINK_ABOVE_PIXELS // max(w, 1) // factor) * factor
        for r0 in range(0, h, band):
            rows = min(band, h - r0)
            loc = (lx * ds, (ly + r0) * ds)
            out[r0 // factor:(r0 + rows + factor - 1) // factor] = _block_mean(
                self.read_region(loc, level, (w, rows), fill=fill), factor)
        return out

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """A small RGB overview and its downsample factor from level 0."""
        w0, h0 = self.dimensions
        ds_needed = max(w0, h0) / max_size
        level = self.best_level_for_downsample(max(ds_needed, 1.0))
        lw, lh = self.level_dimensions[level]
        factor = int(max(ds_needed, 1.0) / self.level_downsamples[level])
        if lw * lh > SHRINK_ABOVE_PIXELS and factor >= 2:  # a single-level slide: never read whole
            img = self.read_shrunk((0, 0), level, (lw, lh), factor)
            ds = w0 / img.shape[1]
        else:
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


class LevelView:
    """One level as a read-only array (row, col, channel) RGB uint8, read through `_read_block`.

    Has `shape`, `dtype`, `ndim` and `chunks` (the slide's `tile_size`), and slicing
    reads only the region asked for, so `dask.array.from_array` over it is lazy.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, slide: Slide, level: int):
        self._slide = slide
        self.level = level
        w, h = slide.level_dimensions[level]
        self.shape = (h, w, 3)
        self.chunks = (*slide.tile_size(level), 3)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        if any(not isinstance(k, slice) or k.step not in (None, 1) for k in key[:2]):
            raise IndexError("LevelView supports plain row/column slices only")
        y0, y1, _ = key[0].indices(self.shape[0])
        x0, x1, _ = key[1].indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            block = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        else:
            block = self._slide._read_block(self.level, x0, y0, x1, y1)
        return block[:, :, key[2]]

    def __array__(self, dtype=None, copy=None):
        a = self[:, :]
        return a if dtype is None else a.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """Mean (rounded) of factor x factor blocks of RGB uint8; the last partial block repeats edges."""
    h, w = img.shape[:2]
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hh, ww = img.shape[0] // factor, img.shape[1] // factor
    s = img.reshape(hh, factor, ww, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
    n = factor * factor
    return ((s + n // 2) // n).astype(np.uint8)


def to_rgb(block: np.ndarray, float_scale: float = 255.0) -> np.ndarray:
    """RGB uint8 from grey, grey+alpha, RGB(A) or wider-than-8-bit pixels (channels last).

    Float pixels are multiplied by `float_scale`, which the backend decides once per slide
    (255 for [0, 1] data, 1 for [0, 255]): never from the block itself, so a pixel reads the
    same whatever the region around it.
    """
    if block.ndim == 2:
        block = block[..., None]
    if block.shape[-1] in (1, 2):  # grey, grey + alpha
        block = np.repeat(block[..., :1], 3, axis=2)
    if block.shape[-1] == 4:
        block = block[..., :3]
    if block.dtype != np.uint8:
        if np.issubdtype(block.dtype, np.floating):
            block = np.clip(np.nan_to_num(block * float_scale), 0, 255).astype(np.uint8)
        elif block.dtype == np.bool_:
            block = block.astype(np.uint8) * 255
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
