"""Write files atomically: a killed job leaves either the old file or the new one.

Everything lands in a temporary file beside the target and is renamed over it
(rename is atomic on POSIX within one file system). A full disk, a read-only place or a
missing permission becomes one UserError naming the target, with the temporary removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from her2core.util.outputs import UNWRITABLE, unwritable


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    `suffix` defaults to the target's own suffixes, so writers that choose a
    format from the extension (PIL, tifffile) still do the right thing.
    """
    path = Path(path)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part" + suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in UNWRITABLE:
            raise unwritable(path, exc) from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline: byte-stable across runs."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_png(path: str | os.PathLike, rgb, compress_level: int = 1) -> None:
    """RGB uint8 (H, W, 3) to a lossless PNG, atomically and byte-stably.

    zlib level 1 by default: tile writing is dominated by compression at higher
    levels, and the files are only ~10% larger.
    """
    import numpy as np
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_png wants uint8, got {arr.dtype}")
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=compress_level)
