"""The resume journal of one slide translation: a work folder next to the output.

Why files and not a database: every piece of state is a file that appears
atomically (rename) only when it is complete, so a job killed at any moment
leaves a consistent journal, ranks of `torchrun` can share it on one file
system, and a rerun with the same plan picks up exactly where it stopped.

    .<out name>.work/
      plan.json        identity of the job (slide, region, model fingerprint, tile, ...);
                       a different plan wipes the folder and starts afresh
      row_00012.u8     translated tiles of tile row 12, (T, T, 3) uint8 each in column order,
                       white tiles left out; a trailer of one byte per column says which
      blocks.json      {"blocks_done": m}: output block rows [0, m) are final in out.u8
      out.u8           the blended region, raw (H, W, 3) uint8 stored inverted (255 - v), so
                       what was never written (glass) reads white and stays sparse on disk,
                       in column strips of RAW_STRIP (one system call per pyramid tile)

Reads and writes are positioned file I/O, never a mapping of the region, so the
process's resident memory stays a few tiles.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from her2core.slide.writer import RawImage, close_in_background
from her2core.util.atomic import write_json
from her2core.util.outputs import UNWRITABLE, unwritable

__all__ = ["RAW_STRIP", "RawImage", "RowReader", "RowWriter", "WorkDir"]

#: Column strip width of out.u8 (see `RawImage`): the default pyramid tile, whose level-0 tiles
#: are then one read each. Fixed (not the run's pyramid tile) so that a journal means one layout.
RAW_STRIP = 256


class WorkDir:
    def __init__(self, out_path: str | Path):
        out_path = Path(out_path)
        self.path = out_path.parent / f".{out_path.name}.work"

    # -- identity -------------------------------------------------------
    def prepare(self, identity: dict) -> bool:
        """Make the folder for `identity`; True when a matching journal is resumed."""
        plan = self.path / "plan.json"
        if plan.exists():
            try:
                same = json.loads(plan.read_text()) == json.loads(json.dumps(identity, sort_keys=True))
            except json.JSONDecodeError:
                same = False
            if same:
                return True
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(plan, identity)
        return False

    def exists(self) -> bool:
        return (self.path / "plan.json").exists()

    def remove(self, *, in_background: bool = False) -> None:
        """Delete the folder. `in_background`: its names go at once, the space of the files
        still in it (the last tile rows) is freed by a thread (`close_in_background`)."""
        fds = []
        if in_background:
            with contextlib.suppress(OSError):
                for entry in os.scandir(self.path):
                    if entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            fds.append(os.open(entry.path, os.O_RDONLY))
        shutil.rmtree(self.path, ignore_errors=True)
        close_in_background(fds)

    # -- tile rows --------------------------------------------------------
    def row_path(self, k: int) -> Path:
        return self.path / f"row_{k:05d}.u8"

    def row_done(self, k: int) -> bool:
        return self.row_path(k).exists()

    def open_row(self, k: int) -> RowWriter:
        return RowWriter(self.row_path(k))

    def read_row(self, k: int, tile: int) -> RowReader:
        return RowReader(self.row_path(k), tile)

    def drop_row(self, k: int) -> None:
        self.row_path(k).unlink(missing_ok=True)

    # -- blended output ---------------------------------------------------
    @property
    def raw_path(self) -> Path:
        return self.path / "out.u8"

    def blocks_done(self) -> int:
        p = self.path / "blocks.json"
        if not p.exists():
            return 0
        return int(json.loads(p.read_text())["blocks_done"])

    def set_blocks_done(self, m: int) -> None:
        write_json(self.path / "blocks.json", {"blocks_done": int(m)})

    def raw_image(self, height: int, width: int) -> RawImage:
        return RawImage(self.raw_path, (height, width, 3), strip=RAW_STRIP)


class RowWriter:
    """Append the tiles of one tile row in column order; the file appears only when complete.

    White tiles (background, outside the ROI: never run through the model) are not stored;
    a trailer of one byte per column (1 stored, 0 white) says which are, so a whole slide
    that is mostly glass costs almost no disk and no blending.
    """

    def __init__(self, path: Path):
        self.path = path
        self.part = path.with_name(path.name + f".part{os.getpid()}")
        self._f = open(self.part, "wb")  # noqa: SIM115 - closed by commit() or abort()
        self._flags = bytearray()
        self._failed: Exception | None = None

    def write(self, tile_rgb: np.ndarray | None) -> None:
        """The next column's tile, or None for a white tile."""
        if tile_rgb is None:
            self._flags.append(0)
        else:
            with self._unwritable():
                self._f.write(memoryview(np.ascontiguousarray(tile_rgb, dtype=np.uint8)).cast("B"))
            self._flags.append(1)

    def commit(self) -> None:
        with self._unwritable():
            self._f.write(bytes(self._flags))
            self._f.close()
            os.replace(self.part, self.path)

    @contextlib.contextmanager
    def _unwritable(self):
        """A full disk or read-only folder: drop the partial row and say so in one line (also
        to the writes queued behind the one that failed)."""
        if self._failed is not None:
            raise self._failed
        try:
            yield
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            with contextlib.suppress(OSError):
                self.abort()
            self._failed = unwritable(self.path, exc)
            raise self._failed from None

    def abort(self) -> None:
        self._f.close()
        self.part.unlink(missing_ok=True)


class RowReader:
    """Tiles of one committed row file, by column; None for white tiles.

    Holds the file open (`close()` when done): a tile is one positioned read.
    """

    def __init__(self, path: Path, tile: int):
        self.path, self.tile = path, tile
        self.nbytes = tile * tile * 3
        self._fd = -1
        self._fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(self._fd).st_size
            n_stored = size // self.nbytes  # the trailer is shorter than one tile
            n_cols = size - n_stored * self.nbytes
            flags = np.frombuffer(os.pread(self._fd, n_cols, n_stored * self.nbytes), np.uint8)
            if len(flags) != n_cols or int(flags.sum()) != n_stored:
                raise RuntimeError(f"{path}: damaged row file; delete the work folder and rerun")
        except BaseException:
            self.close()
            raise
        self.flags = flags.astype(bool)
        self.index = np.cumsum(flags) - 1  # position among stored tiles

    def is_white(self, j: int) -> bool:
        return not self.flags[j]

    def tile_at(self, j: int, rows: tuple[int, int] | None = None) -> np.ndarray | None:
        """Column j's (T, T, 3) tile; with `rows` = (a, b) only its rows [a, b) are read (the
        others are undefined): a band needs 1/8 of the tile row above it, not all of it."""
        if not self.flags[j]:
            return None
        a, b = rows if rows is not None else (0, self.tile)
        out = np.empty((self.tile, self.tile, 3), np.uint8)
        row_bytes = self.tile * 3
        view = memoryview(out).cast("B")[a * row_bytes:b * row_bytes]
        offset, done, want = int(self.index[j]) * self.nbytes + a * row_bytes, 0, (b - a) * row_bytes
        while done < want:
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise RuntimeError(f"{self.path}: damaged row file; delete the work folder and rerun")
            done += n
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()
