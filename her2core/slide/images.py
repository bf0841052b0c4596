"""Tile images (PNG/JPEG/TIFF tiles of a dataset or a tile folder): one guarded open.

PIL's decompression-bomb limit (a tiny PNG claiming 10⁵ x 10⁵ pixels), truncated or
undecodable data and unknown formats all become one UserError naming the file; a tile is
never allowed to expand beyond MAX_TILE_PIXELS, whatever PIL's global setting.
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from her2core.errors import UserError

#: Largest tile image opened (2^26 px, e.g. 8192 x 8192): tiles are hundreds of pixels a side.
MAX_TILE_PIXELS = 2**26

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error)


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator:
    """A PIL image of `path` whose size was checked before decoding; errors are UserErrors."""
    from PIL import Image

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_TILE_PIXELS:
                    raise UserError(f"{path}: {w} x {h} px is not a tile (more than "
                                    f"{MAX_TILE_PIXELS:.3g} px); cut it into tiles, or is the "
                                    "file damaged?")
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{path}: refused as a decompression bomb ({exc}); not a tile "
                        "image") from None
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    except _DECODE_ERRORS as exc:
        raise UserError(f"{path}: cannot read image ({exc}); replace or remove the file") from None


def read_image(path: str | Path, *, convert_rgb: bool = True) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a tile image; `convert_rgb=False` refuses anything not RGB 8-bit."""
    path = Path(path)
    with open_image(path) as im:
        mode = im.mode
        try:
            arr = np.array(im.convert("RGB") if convert_rgb else im)
        except _DECODE_ERRORS as exc:  # decoding happens here, after the header was fine
            raise UserError(f"{path}: cannot read image ({exc}); the file is truncated or "
                            "damaged: replace or remove it") from None
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise UserError(f"{path}: not an RGB 8-bit image (mode {mode}, shape {arr.shape}, "
                        f"{arr.dtype}); convert it to RGB")
    return arr


def image_header(path: str | Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (w, h)) from the header only (cheap)."""
    with open_image(path) as im:
        return im.mode, im.size
