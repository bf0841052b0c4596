"""tifffile + zarr backend: the fast path for OME-TIFF (her2core's own outputs) and plain TIFF.

tifffile + zarr give a lazy array per pyramid level (SubIFDs included); a region
read touches only the tiles it overlaps. Microns per pixel come from the OME-XML,
the Aperio description, or the TIFF resolution tags, in that order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.slide.base import LevelView, Slide, to_rgb
from her2core.slide.mpp import mpp_from_resolution

#: Decoded TIFF tiles a slide keeps (see `TiffSlide._keep_decoded`): a fixed amount, so memory
#: does not grow with the slide; 32 MiB holds two rows of 512² tiles of an 8k-wide level.
DECODED_CACHE_BYTES = 32 * 2**20

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
        try:
            self._layouts = [_layout(self.path, lvl.axes, lvl.shape) for lvl in levels]
        except UserError:
            self._tif.close()
            raise
        for lvl in levels:
            shape = dict(zip(lvl.axes, lvl.shape))
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
        try:
            self._set_mpp(meta_mpp, mpp)
        except UserError:
            self._tif.close()
            raise
        self._direct = [_directly_decodable(lvl, self._layouts[i]) for i, lvl in enumerate(levels)]
        self._decoded: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._decoded_bytes = 0
        self._decoded_lock = threading.Lock()
        self._decoding: dict[tuple[int, int], threading.Event] = {}  # tiles a thread is decoding
        self._fd = os.open(self.path, os.O_RDONLY) if any(p is not None for p in self._direct) else -1
        self._float_scale = self._decide_float_scale(series.dtype)

    def _decide_float_scale(self, dtype) -> float:
        """255 when float pixels are [0, 1] data, 1 when they are [0, 255]: once per slide.

        From the SMaxSampleValue tag when the writer recorded it, else from the maximum of the
        smallest level when it is small (<= 2048² px), else the float-image convention [0, 1].
        """
        if not np.issubdtype(np.dtype(dtype), np.floating):
            return 255.0
        tag = self._tif.pages[0].tags.get("SMaxSampleValue")
        if tag is not None:
            top = float(np.max(tag.value))
            return 255.0 if top <= 1.0 else 1.0
        w, h = self.level_dimensions[-1]
        if w * h <= 2048 * 2048:
            top = float(np.nanmax(self._level_block(len(self._arrays) - 1, 0, 0, w, h)))
            return 255.0 if top <= 1.0 else 1.0
        return 255.0

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
        """A lazy array of `level`, axes (row, col, channel): the zarr array itself for
        (row, col[, channel]) uint8 TIFFs, else a view that converts each read (planar,
        grey + alpha, float, single Z plane)."""
        arr = self._arrays[level]
        if self._layouts[level][1] and arr.dtype == np.uint8:
            return arr
        return LevelView(self, level)

    def tile_size(self, level: int) -> tuple[int, int]:
        """(h, w) of the TIFF's tiles (zarr chunks) at `level`."""
        axes = self._layouts[level][0]
        chunks = dict(zip(axes, self._arrays[level].chunks))
        return (min(chunks["Y"], 4096), min(chunks["X"], 4096))

    def _level_block(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Raw pixels (rows, cols[, channels]) of `level` in its own dtype."""
        axes = self._layouts[level][0]
        index = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else
                      slice(None) if a in "SC" else 0 for a in axes)
        try:
            if self._direct[level] is not None:
                return self._decode_tiles(self._direct[level], x0, y0, x1, y1)
            block = np.asarray(self._arrays[level][index])
        except Exception as exc:  # noqa: BLE001 - tiles past the end of a truncated file
            first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(f"{self.path}: cannot read level {level} ({type(exc).__name__}: "
                            f"{first}); the file is truncated or damaged, copy it again") from None
        kept = [a for a in axes if a in "YXSC"]
        order = [kept.index(a) for a in ("Y", "X", "S", "C") if a in kept]
        return np.transpose(block, order) if order != list(range(len(kept))) else block

    def _decode_tiles(self, page, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The block from the TIFF tiles it overlaps, each read with one positioned read and
        decoded by tifffile's own codec (the same pixels as through zarr). Why not zarr: its
        event loop hands every chunk between threads, so reads took the GIL back and forth
        and did not scale with threads; this path holds the GIL only between codec calls."""
        th, tw, spp = page.tilelength, page.tilewidth, page.samplesperpixel
        per_row = -(-page.imagewidth // tw)
        out = np.empty((y1 - y0, x1 - x0, spp), page.dtype)
        decode = page.decode
        later = []
        for tr in range(y0 // th, (y1 - 1) // th + 1):
            for tc in range(x0 // tw, (x1 - 1) // tw + 1):
                i = tr * per_row + tc
                ya, yb = max(y0, tr * th), min(y1, (tr + 1) * th)
                xa, xb = max(x0, tc * tw), min(x1, (tc + 1) * tw)
                dst = out[ya - y0:yb - y0, xa - x0:xb - x0]
                n = page.databytecounts[i]
                if n == 0:  # a tile never written: zarr's fill value
                    dst[...] = 0
                    continue
                part = (dst, slice(ya - tr * th, yb - tr * th), slice(xa - tc * tw, xb - tc * tw))
                key = (id(page), i)  # the page lives as long as the slide (self._direct)
                job = (key, lambda i=i, n=n: decode(self._read_tile_bytes(page, i, n), i,
                                                    jpegtables=page.jpegtables)[0][0], part)
                tile = self._cached_tile(*job[:2], wait=False)
                if tile is None:  # another thread is decoding it: do the other tiles first
                    later.append(job)
                else:
                    dst[...] = tile[part[1], part[2]]
        for key, decode_tile, (dst, rows, cols) in later:
            dst[...] = self._cached_tile(key, decode_tile, wait=True)[rows, cols]
        return out

    def _read_tile_bytes(self, page, i: int, n: int) -> bytes:
        data = os.pread(self._fd, n, page.dataoffsets[i])
        if len(data) != n:
            raise EOFError(f"tile {i} ends past the end of the file")
        return data

    def _cached_tile(self, key: tuple[int, int], decode_tile, *, wait: bool) -> np.ndarray | None:
        """The decoded tile `key`, decoded once: threads reading neighbouring inference tiles
        need the same TIFF tiles at the same moment, and a second thread waits for the first
        one's decoding instead of repeating it (the duplicate work kept 2 reading threads at
        1.6x one). `wait=False`: None while another thread decodes it."""
        while True:
            with self._decoded_lock:
                tile = self._decoded.get(key)
                if tile is not None:
                    self._decoded.move_to_end(key)
                    return tile
                busy = self._decoding.get(key)
                if busy is None:
                    self._decoding[key] = threading.Event()
                    break
            if not wait:
                return None
            busy.wait()  # then look again (decoded, or evicted already, or that thread failed)
        try:
            tile = decode_tile()
            self._keep_decoded(key, tile)
            return tile
        finally:
            with self._decoded_lock:
                self._decoding.pop(key).set()

    def _keep_decoded(self, key: tuple[int, int], tile: np.ndarray) -> None:
        """Keep the last DECODED_CACHE_BYTES of decoded tiles: overlapping inference tiles
        and the next tile row need most TIFF tiles again (decoded ~4x each without this)."""
        with self._decoded_lock:
            if key in self._decoded:
                return
            self._decoded[key] = tile
            self._decoded_bytes += tile.nbytes
            while self._decoded_bytes > DECODED_CACHE_BYTES and len(self._decoded) > 1:
                self._decoded_bytes -= self._decoded.popitem(last=False)[1].nbytes

    def _read_block(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return to_rgb(self._level_block(level, x0, y0, x1, y1), self._float_scale)

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1
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


def _layout(path: Path, axes: str, shape: tuple) -> tuple[str, bool]:
    """(axes, whether they are plain (row, col[, channel])) of a level, or one UserError.

    Planar RGB (channels first) and grey + alpha are read; a Z-stack, time series or
    multichannel (fluorescence) image is refused: her2 reads one brightfield RGB plane.
    """
    dims = dict(zip(axes, shape))
    if "Y" not in dims or "X" not in dims:
        raise UserError(f"{path}: not a 2-D image (axes {axes})")
    chan = [a for a in axes if a in "SC" and dims[a] > 1]
    if len(chan) > 1 or (chan and dims[chan[0]] > 4):
        n = "x".join(str(dims[a]) for a in chan)
        raise UserError(f"{path}: {n} channels (axes {axes}); her2 reads brightfield RGB, not "
                        "multichannel images: export an RGB image")
    extra = {a: n for a, n in dims.items() if a not in "YXSC" and n > 1}
    if extra:
        what = ", ".join(f"{n} {_AXIS_NAMES.get(a, a)}" for a, n in extra.items())
        raise UserError(f"{path}: a stack of {what} (axes {axes}); her2 reads one 2-D RGB plane: "
                        "export a single plane (e.g. Fiji: Image > Stacks > Z Project)")
    kept = [a for a in axes if a in "YXSC"]
    plain = kept == ["Y", "X"] or (kept[:2] == ["Y", "X"] and dims[kept[-1]] in (3, 4))
    return axes, plain


def _directly_decodable(level, layout: tuple[str, bool]):
    """The level's one TIFF page when its tiles can be decoded straight into (row, col, RGB)
    uint8 (`TiffSlide._decode_tiles`); None: read through zarr (strips, planar, stacks, ...)."""
    pages = getattr(level, "pages", None)
    if not layout[1] or pages is None or len(pages) != 1:
        return None
    page = pages[0]
    if not getattr(page, "is_tiled", False) or page.dtype != np.uint8 or page.planarconfig != 1:
        return None
    if page.imagedepth != 1 or page.samplesperpixel != 3 or page.tiledepth != 1:
        return None
    if tuple(level.shape) != (page.imagelength, page.imagewidth, 3):
        return None
    fh = page.parent.filehandle
    if not fh.is_file or getattr(fh, "_offset", 0) != 0:  # a file embedded in another
        return None
    return page


_AXIS_NAMES = {"Z": "Z planes", "T": "time points", "Q": "planes", "I": "images", "R": "tiles"}


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
