"""One output policy for every command: one writer at a time, and a record of what wrote it.

Why: a rerun into an output folder must either resume the same job or refuse, never mix two
jobs' files (run A's tiles scored under run B's name), and two processes writing one output
must not both exit 0.

* `locked(path, command)`: an exclusive, non-blocking `fcntl.flock` on `.<name>.lock` beside
  the output (file or folder) while a command writes it. A second writer gets one UserError
  line naming the holder. The lock dies with its process (kill -9 included), so there is no
  stale lock to clean up; re-entrant within one thread (a command calling another's writer).
* `claim(folder, record, overwrite=...)`: `.her2-output.json` inside an output folder says
  what wrote it (command, run fingerprint, inputs, split, settings). The same record resumes;
  a non-empty folder with another record, or with files and no record, is refused unless
  `overwrite`, and then `clear` removes the old job's files first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from her2core.errors import UserError

PROVENANCE = ".her2-output.json"
FORMAT = "her2-output/1"

#: errno values that mean "this place cannot take the output" rather than a bug
UNWRITABLE = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}

_held: dict[tuple[str, int], list] = {}  # (lock path, thread) -> [depth, fd]
_held_guard = threading.Lock()


def unwritable(path: str | os.PathLike, exc: OSError) -> UserError:
    """The one line for a disk-full / read-only / permission failure while writing `path`."""
    fixes = {errno.ENOSPC: "free disk space", errno.EDQUOT: "free disk quota",
             errno.EFBIG: "choose a file system that takes large files"}
    fix = fixes.get(exc.errno, "choose a writable --out")
    return UserError(f"{path}: cannot write ({os.strerror(exc.errno or 0)}); {fix} and run again")


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path).absolute()
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def locked(path: str | os.PathLike, command: str, *, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the exclusive lock of the output `path` (file or folder) for the block.

    `wait_s`: how long to wait for another holder (short read-modify-write commands such as
    `her2 qupath project` queue up instead of failing); 0 fails at once."""
    lock = lock_path(path)
    key = (str(lock), threading.get_ident())
    with _held_guard:
        mine = _held.get(key)
        if mine is not None:
            mine[0] += 1
    if mine is not None:
        try:
            yield lock
        finally:
            with _held_guard:
                mine[0] -= 1
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = _acquire(lock, Path(path), command)
            break
        except _Busy as busy:
            if time.monotonic() >= deadline:
                raise UserError(f"{path}: being written by {busy.holder}; wait for it to finish or "
                                "choose another output") from None
            time.sleep(0.05)
    with _held_guard:
        _held[key] = [1, fd]
    try:
        yield lock
    finally:
        with _held_guard:
            del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)  # before unlocking: a waiter that opened it re-checks the inode
        os.close(fd)


class _Busy(Exception):
    def __init__(self, holder: str):
        self.holder = holder


def _acquire(lock: Path, path: Path, command: str) -> int:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in UNWRITABLE or isinstance(exc, FileExistsError):
            raise unwritable(lock.parent, exc) from None
        raise
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if exc.errno in UNWRITABLE:
                raise unwritable(path, exc) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise _Busy(holder) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed it between our open and flock: retry
    with contextlib.suppress(OSError):  # who holds it is for the message only (a full disk: none)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`{command}` (pid {os.getpid()} on {socket.gethostname()})\n".encode(), 0)
    return fd


def read_record(folder: str | os.PathLike) -> dict | None:
    """The provenance record of an output folder, None when it has none (or an unreadable one)."""
    p = Path(folder) / PROVENANCE
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def describe(record: dict | None) -> str:
    if record is None:
        return "files her2 did not record"
    parts = [f"`{record.get('command', '?')}`"]
    for key in ("run", "weights_sha256", "run_sha256", "split", "inputs"):
        if record.get(key) not in (None, ""):
            v = str(record[key])
            parts.append(f"{key}={v[:12] if key.endswith('sha256') else v}")
    return " ".join(parts)


def claim(folder: str | os.PathLike, record: dict[str, Any], *, overwrite: bool = False,
          clear: Callable[[Path], None] | None = None, ignore: Callable[[Path], bool] | None = None) -> bool:
    """Make `folder` the output of `record`; True when it already was (resume).

    `ignore(entry)`: entries that do not make the folder "non-empty" (e.g. the inputs a
    command links there). Refused without `overwrite` when the folder holds anything else and
    no identical record; with `overwrite`, `clear(folder)` removes the old files first.
    """
    from her2core.util.atomic import write_json

    folder = Path(folder)
    want = dict(record, format=FORMAT)
    normal = json.loads(json.dumps(want, sort_keys=True, default=str))
    old = read_record(folder)
    if old == normal:
        return True
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; choose a folder for --out")
    busy = folder.is_dir() and any(p.name != PROVENANCE and not (ignore and ignore(p))
                                   for p in folder.iterdir())
    if busy or old is not None:
        if not overwrite:
            raise UserError(f"{folder}: holds the output of {describe(old)}, not of this "
                            f"`{record.get('command', '?')}`; pass --overwrite to replace it or "
                            "choose another --out")
        if clear is not None:
            clear(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / PROVENANCE, normal)
    return False
