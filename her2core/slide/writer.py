"""Write pyramidal, tiled OME-TIFF in a stream with bounded memory, while level 0 is still made.

    stream = PyramidStream(path, source, mpp=0.5)    # source: sliceable (H, W, 3) uint8
    stream.advance(n)                                # level-0 rows [0, n) are final
    ...
    stream.close()                                   # after advance(H): the finished file

Why a stream: a slide translation finishes level 0 band by band, and the pyramid should
be done when the last band is, not minutes later. So as soon as a level-0 tile row is
final, its tiles are encoded in threads (libdeflate/zlib release the GIL), and every
lower level is built tile by tile by 2x2 area averaging of the level above (kept in a
temporary raw file, file-backed: resident memory is a few tiles whatever the slide) and
encoded as soon as the tiles it needs exist. Sub-resolutions go into SubIFDs, as QuPath,
napari and OpenSlide-style readers expect; tifffile writes the OME structure from the
pre-encoded tiles. Level 0 goes straight into the output; lower levels' encoded tiles
wait in temporary files until level 0's page is closed (they are a fraction of the file).

Bytes depend only on the inputs: tiles are written in a fixed order (level-0 tile row by
tile row, each followed by the lower-level rows it completes), never in the order threads
finish, no clock, a name-derived UUID. The output is written to a temporary file and renamed.
Microns per pixel go into the OME-XML and the TIFF resolution tags; `origin_xy` (the region's
level-0 offset in its source slide) and other properties into a `her2core` map annotation.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from her2core.util.atomic import atomic_path
from her2core.util.outputs import UNWRITABLE, unwritable
from her2core.util.workpool import WorkPool

#: Deflate level of 'zlib' compression: level 1 of libdeflate writes ~3x faster than zlib's
#: default 6 with files about as small as zlib's level 6.
DEFLATE_LEVEL = 1


def pyramid_shapes(height: int, width: int, min_size: int = 512) -> list[tuple[int, int]]:
    """(h, w) of each level, halving (ceil) until the larger side is <= min_size."""
    shapes = [(height, width)]
    while max(shapes[-1]) > min_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def default_workers() -> int:
    """Threads for encoding (and, in slide inference, reading and blending): the cores, up to 8."""
    return max(1, min(8, os.cpu_count() or 1))


def halve(block: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """2x2 area mean (rounded half up) of `block` into (rows, cols) uint8.

    Odd edges (block shorter than 2·rows or narrower than 2·cols) repeat the last row/column.
    """
    b = np.asarray(block)
    if b.shape[0] < 2 * rows:
        b = np.concatenate([b, b[-1:]], axis=0)
    if b.shape[1] < 2 * cols:
        b = np.concatenate([b, b[:, -1:]], axis=1)
    s = np.add(b[0:2 * rows:2], b[1:2 * rows:2], dtype=np.uint16)  # row pairs, then column pairs
    s = s[:, :2 * cols].reshape(rows, cols, 6)
    s = s[..., :3] + s[..., 3:]
    s += 2
    s >>= 2
    return s.astype(np.uint8)


def tile_encoder(compression: str | None) -> Callable[[np.ndarray], bytes]:
    """Bytes of one (T, T, 3) uint8 tile as TIFF stores it for `compression` ('zlib' or None)."""
    if compression == "zlib":
        import imagecodecs

        return lambda tile: imagecodecs.deflate_encode(tile, level=DEFLATE_LEVEL)
    if compression is None:
        return lambda tile: np.ascontiguousarray(tile).tobytes()
    raise ValueError(f"compression {compression!r}: choose 'zlib' (lossless) or None")


class RawImage:
    """A raw (H, W, 3) uint8 file, sliceable like an array (rows, then columns), read and
    written with positioned I/O.

    Stored inverted (255 - value), so the file starts sparse and all white: glass and the
    outside of an ROI need no writes and no disk. Nothing is mapped, so resident memory does
    not grow with the image, and threads may read and write disjoint parts at once (through
    one file descriptor, opened at first use; `close()` when done). Writes
    land in the page cache at once: a killed process leaves them for the next one (no sync
    per write; that cost ~18 ms a block).

    `strip` (columns) stores the image as column strips of that width, each row-major
    (H x strip): a rectangle spanning whole strips is then one contiguous read or write per
    strip instead of one per row. Slide inference and the pyramid use strips of the pyramid
    tile, so a tile is one system call: a call per row cost a GIL hand-over each, and that
    (not the copying) was what limited the pipeline. Default: one strip (row-major).
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, path: str | Path, shape: tuple[int, int, int], *, strip: int | None = None):
        self._fd, self._open_lock = -1, threading.Lock()
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.strip = int(strip) if strip else self.shape[1]
        if self.strip < 1:
            raise ValueError(f"strip must be >= 1 column, got {strip}")
        size = int(np.prod(self.shape))
        if not self.path.exists() or self.path.stat().st_size != size:
            with open(self.path, "ab") as f:
                f.truncate(size)  # sparse: unwritten parts read as zeros, i.e. white

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        rows = key[0] if isinstance(key[0], slice) else slice(key[0], key[0] + 1)
        r0, r1, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("RawImage supports contiguous row slices only")
        cols = key[1] if len(key) > 1 else slice(None)
        if isinstance(cols, slice) and cols.step in (None, 1):
            c0, c1, _ = cols.indices(self.shape[1])
            out = self._read(r0, max(r0, r1), c0, max(c0, c1))[(slice(None), slice(None)) + key[2:]]
        else:
            out = self._read(r0, max(r0, r1), 0, self.shape[1])[(slice(None),) + key[1:]]
        return out if isinstance(key[0], slice) else out[0]

    def _strips(self, c0: int, c1: int):
        """(strip start, strip width, first column, last column + 1) of each strip in [c0, c1)."""
        s = self.strip
        for a in range(c0 - c0 % s, c1, s):
            sw = min(s, self.shape[1] - a)
            yield a, sw, max(c0, a), min(c1, a + sw)

    def _io(self, io, fd: int, r0: int, r1: int, c0: int, arr: np.ndarray) -> None:
        """Rows [r0, r1) x columns [c0, c0 + arr width) to/from `arr` (C-contiguous (h, w, 3))."""
        h = self.shape[0]
        for a, sw, ca, cb in self._strips(c0, c0 + arr.shape[1]):
            base = a * h * 3
            part = arr[:, ca - c0:cb - c0]
            if (ca, cb) == (a, a + sw):  # whole strip: one contiguous transfer
                if part.flags.c_contiguous:
                    _positioned(io, fd, part, base + r0 * sw * 3)
                    continue
                buf = np.ascontiguousarray(part) if io is os.pwritev else np.empty_like(part)
                _positioned(io, fd, buf, base + r0 * sw * 3)
                if io is os.preadv:
                    part[...] = buf
                continue
            for i in range(r1 - r0):
                _positioned(io, fd, part[i], base + ((r0 + i) * sw + ca - a) * 3)

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = np.empty((r1 - r0, c1 - c0, 3), dtype=np.uint8)
        if out.size == 0:
            return out
        self._io(os.preadv, self._file(), r0, r1, c0, out)
        return np.subtract(255, out, out=out)

    def write(self, r0: int, c0: int, block: np.ndarray) -> None:
        """`block` (h, w, 3) uint8 at rows r0.., columns c0.."""
        block = np.subtract(255, np.asarray(block, dtype=np.uint8), dtype=np.uint8)
        if block.size == 0:
            return
        try:
            self._io(os.pwritev, self._file(), r0, r0 + block.shape[0], c0, block)
        except OSError as exc:  # a sparse file fills the disk late: say so in one line
            if exc.errno in UNWRITABLE:
                raise unwritable(self.path, exc) from None
            raise

    def _file(self) -> int:
        """The file, opened once (threads share it: positioned I/O has no file offset)."""
        if self._fd < 0:
            with self._open_lock:
                if self._fd < 0:
                    self._fd = os.open(self.path, os.O_RDWR)
        return self._fd

    def unlink(self) -> None:
        """Remove the file's name; reads and writes go on until `close()` frees its space."""
        self._file()
        self.path.unlink(missing_ok=True)

    def close(self, *, in_background: bool = False) -> None:
        """Close the file. `in_background`: in a thread of its own, for an unlinked file whose
        freeing (~50 ms for a slide's blended output) need not hold up the caller; nothing is
        left behind if the process ends first (the kernel frees an unlinked file at exit)."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        if in_background:
            close_in_background([fd])
        else:
            os.close(fd)

    def __del__(self):
        self.close()


def close_in_background(fds: list[int]) -> None:
    """Close file descriptors of unlinked files in a thread of their own: the kernel frees a
    file's pages at its last close (~10 ms per 30 MB), which need not hold up the caller;
    if the process ends first, the kernel frees them at exit and nothing is left behind."""
    if fds:
        threading.Thread(target=lambda: [os.close(fd) for fd in fds], name="her2-free",
                         daemon=True).start()


def _positioned(io, fd: int, arr: np.ndarray, offset: int) -> None:
    """os.preadv / os.pwritev of all of `arr`'s bytes at `offset` (short transfers continued)."""
    view = memoryview(arr).cast("B")
    done = 0
    while done < len(view):
        n = io(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"short {'read' if io is os.preadv else 'write'} at byte {offset + done}")
        done += n


class _Aborted(Exception):
    pass


class _Encoded:
    """One encoded tile; the writer drops `data` once written (later tiles only ask `white`)."""

    __slots__ = ("data", "white")

    def __init__(self, data: bytes, white: bool):
        self.data, self.white = data, white


class PyramidStream:
    """A pyramidal OME-TIFF written while its level 0 (`source`) is still being finished.

    `advance(n)` says level-0 rows [0, n) of `source` are final (n never decreases); the
    tiles they complete, on every level, are encoded in `workers` threads. `close()` after
    `advance(H)` waits for the last tiles and renames the file into place; `abort()` drops it.
    `progress(done, total)` is called (from the writer thread) per tile written, all levels.
    `known_white(r0, r1, c0, c1)`, if given, says a final level-0 rectangle is white without
    reading it (slide inference knows which blocks it never wrote: glass costs nothing).
    Lower levels wait in a temporary folder in `scratch_dir` (default: beside `path`).
    `pool`: encode in the caller's `WorkPool` lane (it stays open) instead of `workers`
    threads of the stream's own.
    """

    QUEUE_ROWS = 2  # level-0 tile rows of encoding in flight (see the semaphore below)

    def __init__(self, path: str | Path, source, *, mpp: float, tile: int = 256,
                 min_size: int = 512, compression: str | None = "zlib",
                 origin_xy: tuple[float, float] = (0.0, 0.0), properties: dict | None = None,
                 name: str | None = None, workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 known_white: Callable[[int, int, int, int], bool] | None = None,
                 scratch_dir: str | Path | None = None, pool=None):
        self.path = Path(path)
        h, w = int(source.shape[0]), int(source.shape[1])
        if source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"write_pyramid wants (H, W, 3) RGB, got shape {source.shape}")
        self.source, self.tile, self.progress = source, int(tile), progress
        self.shapes = pyramid_shapes(h, w, min_size)
        self.grid = [(-(-lh // tile), -(-lw // tile)) for lh, lw in self.shapes]
        self.total = sum(r * c for r, c in self.grid)
        self._encode = tile_encoder(compression)
        self._white = self._encode(np.full((tile, tile, 3), 255, np.uint8))
        self._known_white = known_white
        self._final = 0
        self._next_row = [0] * len(self.shapes)
        self._row_futures: list[dict[int, list[Future]]] = [{} for _ in self.shapes]
        self._queue: queue.Queue = queue.Queue()
        workers = workers or default_workers()
        # tiles queued but not yet written: a few level-0 tile rows, so that encoding overlaps
        # the blending of the next block row, yet the file is finished soon after the last
        # row is final (and memory stays a few tiles)
        self._slots = threading.Semaphore(8 * workers + self.QUEUE_ROWS * self.grid[0][1])
        self._error: BaseException | None = None
        self._aborted = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = Path(tempfile.mkdtemp(prefix=".pyramid-", dir=scratch_dir or self.path.parent))
        self._stores = [source] + [RawImage(self._scratch / f"level{i}.u8", (lh, lw, 3),
                                            strip=self.tile)
                                   for i, (lh, lw) in enumerate(self.shapes[1:], start=1)]
        for store in self._stores[1:]:
            store.unlink()  # nameless from the start: nothing left behind, freed in the background
        # the caller's pool (slide inference: one budget of threads for reading, blending and
        # encoding; FIFO, so a tile's dependencies, queued before it, are running or done)
        self._own_pool = pool is None
        self._pool = pool or WorkPool(workers, "her2-pyramid")
        self._writer = threading.Thread(
            target=self._write, name="her2-pyramid-writer", daemon=True,
            args=(self._tiff_options(mpp, compression, origin_xy, properties, name),))
        self._writer.start()

    # -- feeding --------------------------------------------------------
    def advance(self, rows_final: int) -> None:
        """Level-0 rows [0, rows_final) are final: queue every tile of every level they complete."""
        self._check()
        h0 = self.shapes[0][0]
        self._final = max(self._final, min(int(rows_final), h0))
        n0 = self.grid[0][0]
        while self._next_row[0] < n0 and min((self._next_row[0] + 1) * self.tile, h0) <= self._final:
            self._submit_row(0)
            for level in range(1, len(self.shapes)):
                while self._row_ready(level):
                    self._submit_row(level)

    def _row_ready(self, level: int) -> bool:
        """The next tile row of `level` has all its source rows (two rows above) queued."""
        t = self._next_row[level]
        if t >= self.grid[level][0]:
            return False
        last_child = min(2 * t + 1, self.grid[level - 1][0] - 1)
        return self._next_row[level - 1] > last_child

    def _submit_row(self, level: int) -> None:
        t = self._next_row[level]
        n_cols = self.grid[level][1]
        below = self._row_futures[level - 1] if level >= 1 else None
        children = [below.pop(r) for r in (2 * t, 2 * t + 1) if r in below] if below is not None else []
        futures = []
        for c in range(n_cols):
            deps = [row[cc] for row in children for cc in (2 * c, 2 * c + 1) if cc < len(row)]
            while not self._slots.acquire(timeout=0.5):
                self._check()
            fut = self._pool.submit(self._make_tile, level, t, c, deps)
            self._queue.put((level, fut))
            futures.append(fut)
        if level + 1 < len(self.shapes):
            self._row_futures[level][t] = futures  # waited for by the next level's tiles
        self._next_row[level] += 1

    def _make_tile(self, level: int, t: int, c: int, deps: list[Future]) -> _Encoded:
        T = self.tile
        lh, lw = self.shapes[level]
        r0, r1, c0, c1 = t * T, min((t + 1) * T, lh), c * T, min((c + 1) * T, lw)
        full = (r1 - r0, c1 - c0) == (T, T)
        if level == 0:
            if full and self._known_white is not None and self._known_white(r0, r1, c0, c1):
                return _Encoded(self._white, True)
            block = np.asarray(self.source[r0:r1, c0:c1])
        else:
            # the tiles of the level above, written to its store (FIFO: running or done)
            above = [d.result() for d in deps]
            if full and len(above) == 4 and all(a.white for a in above):
                return _Encoded(self._white, True)  # white above: nothing to read or average
            ph, pw = self.shapes[level - 1]
            block = halve(self._stores[level - 1][2 * r0:min(2 * r1, ph), 2 * c0:min(2 * c1, pw)],
                          r1 - r0, c1 - c0)
            if level + 1 < len(self.shapes) and block.min() < 255:  # a new store reads white
                self._stores[level].write(r0, c0, block)
        if not full:  # edge tiles are padded with zeros, as tifffile does
            pad = np.zeros((T, T, 3), dtype=np.uint8)
            pad[:block.shape[0], :block.shape[1]] = block
            return _Encoded(self._encode(pad), False)
        if block.min() == 255:  # glass or outside the ROI: one encoding serves all
            return _Encoded(self._white, True)
        return _Encoded(self._encode(np.ascontiguousarray(block)), False)

    # -- writing ----------------------------------------------------------
    def _tiff_options(self, mpp, compression, origin_xy, properties, name) -> dict:
        h, w = self.shapes[0]
        props = dict(properties or {})
        props["origin_xy"] = [float(origin_xy[0]), float(origin_xy[1])]
        props["mpp"] = float(mpp)
        name = name or self.path.name.split(".")[0]
        uid = uuid.uuid5(uuid.NAMESPACE_URL,
                         f"her2core:{name}:{h}x{w}:{mpp}:{json.dumps(props, sort_keys=True)}")
        metadata = {
            "UUID": str(uid),
            "Creator": "her2core",
            "Name": name,
            "axes": "YXS",
            "PhysicalSizeX": float(mpp),
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": float(mpp),
            "PhysicalSizeYUnit": "µm",
            "MapAnnotation": {"her2core": json.dumps(props, sort_keys=True)},
        }
        return {"metadata": metadata, "res": (1e4 / mpp, 1e4 / mpp),  # pixels per centimetre
                "opts": {"tile": (self.tile, self.tile), "photometric": "rgb",
                         "compression": compression, "resolutionunit": "CENTIMETER",
                         "dtype": np.uint8, "software": False}}

    def _next_encoded(self, parts, lengths) -> tuple[int, bytes]:
        """The next tile in the fixed order; lower-level tiles are parked in their part files."""
        level, fut = self._queue.get()
        if level is None:
            raise _Aborted
        encoded = fut.result()
        data, encoded.data = encoded.data, None
        self._slots.release()
        if level > 0:
            parts[level - 1].write(data)
            lengths[level - 1].append(len(data))
        return level, data

    def _write(self, o: dict) -> None:
        import tifffile

        h, w = self.shapes[0]
        n_levels = len(self.shapes)
        parts = [open(self._scratch / f"tiles{i}.bin", "w+b")  # noqa: SIM115 - closed below
                 for i in range(1, n_levels)]
        lengths: list[list[int]] = [[] for _ in parts]
        done = [0]

        def tick():
            done[0] += 1
            if self.progress is not None:
                self.progress(done[0], self.total)

        def level0():
            for _ in range(self.grid[0][0] * self.grid[0][1]):
                level, data = self._next_encoded(parts, lengths)
                while level != 0:
                    level, data = self._next_encoded(parts, lengths)
                tick()
                yield data

        def parked(i):
            f, f_lengths = parts[i - 1], lengths[i - 1]
            f.seek(0)
            for n in f_lengths:
                tick()
                yield f.read(n)

        try:
            with atomic_path(self.path) as tmp, \
                    tifffile.TiffWriter(tmp, bigtiff=h * w * 3 > 2**31, ome=True) as tif:
                tif.write(level0(), shape=(h, w, 3), subifds=n_levels - 1, resolution=o["res"],
                          metadata=o["metadata"], **o["opts"])
                while sum(map(len, lengths)) < self.total - self.grid[0][0] * self.grid[0][1]:
                    self._next_encoded(parts, lengths)
                for i, (lh, lw) in enumerate(self.shapes[1:], start=1):
                    d = 2 ** i
                    tif.write(parked(i), shape=(lh, lw, 3), subfiletype=1,
                              resolution=(o["res"][0] / d, o["res"][1] / d), metadata=None,
                              **o["opts"])
        except BaseException as exc:  # noqa: BLE001 - handed to the feeding thread
            self._error = exc
        finally:
            for f in parts:
                f.close()

    def _check(self) -> None:
        if self._error is not None and not self._aborted:
            err = self._error
            if isinstance(err, OSError) and err.errno in UNWRITABLE:
                raise unwritable(self.path, err) from None
            raise err

    def close(self) -> Path:
        """Wait for the last tiles, finish the file and rename it into place; returns the path."""
        try:
            if self._next_row[0] < self.grid[0][0]:
                raise RuntimeError(f"{self.path}: closed before every level-0 row was final")
            self._writer.join()
            self._check()
        finally:
            self._shutdown()
        return self.path

    def abort(self) -> None:
        """Stop, and leave no output (nor temporary files) behind."""
        self._aborted = True
        self._queue.put((None, None))
        self._shutdown()

    def _shutdown(self) -> None:
        if self._own_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        else:  # the caller's pool goes on: cancel this stream's tiles, wait for the running ones
            pending = []
            while True:
                try:
                    _, fut = self._queue.get_nowait()
                except queue.Empty:
                    break
                if fut is not None and not fut.cancel():
                    pending.append(fut)
            for fut in pending:
                with contextlib.suppress(BaseException):
                    fut.result()
        if self._writer.is_alive():
            self._queue.put((None, None))
            self._writer.join()
        shutil.rmtree(self._scratch, ignore_errors=True)  # before the stores' space is freed
        for store in self._stores[1:]:
            store.close(in_background=True)


def write_pyramid(path: str | Path, source, *, mpp: float, tile: int = 256,
                  min_size: int = 512, compression: str | None = "zlib",
                  origin_xy: tuple[float, float] = (0.0, 0.0), properties: dict | None = None,
                  name: str | None = None, progress: Callable[[int, int], None] | None = None,
                  workers: int | None = None) -> Path:
    """Write `source` (H, W, 3) uint8 as a pyramidal OME-TIFF at `path`; returns the path.

    `progress(done, total)` is called per written tile (all levels).
    `compression`: 'zlib' (lossless deflate, level 1; default) or None.
    """
    stream = PyramidStream(path, source, mpp=mpp, tile=tile, min_size=min_size,
                           compression=compression, origin_xy=origin_xy, properties=properties,
                           name=name, workers=workers, progress=progress)
    try:
        stream.advance(int(source.shape[0]))
    except BaseException:
        stream.abort()
        raise
    return stream.close()
