"""`dataset.json`: the one metadata file of a tile dataset, written by `her2 tile` and `her2 sample`
and read by training, so the tiles' microns per pixel and size are recorded once and read exactly.

    {"format": 1, "generator": "...", "mpp": 0.5, "tile_px": 256, "layout": "her2match", ...}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from her2core.errors import UserError

NAME = "dataset.json"
FORMAT = 1


def write_dataset_meta(root: str | Path, *, generator: str, mpp: float, tile_px: int,
                       layout: str = "her2match", **extra) -> Path:
    """Write ROOT/dataset.json atomically (mpp and tile_px are required: they are the point)."""
    from her2core.util.atomic import write_json

    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"dataset mpp must be a positive number, got {mpp!r}")
    path = Path(root) / NAME
    write_json(path, {"format": FORMAT, "generator": generator, "mpp": float(mpp),
                      "tile_px": int(tile_px), "layout": layout, **extra})
    return path


def read_dataset_meta(root: str | Path) -> dict | None:
    """ROOT/dataset.json, checked; None when the dataset has none (made before it existed)."""
    path = Path(root) / NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); rebuild the dataset with `her2 tile`") from None
    mpp = meta.get("mpp") if isinstance(meta, dict) else None
    if not (isinstance(mpp, (int, float)) and not isinstance(mpp, bool) and math.isfinite(mpp)
            and mpp > 0):
        raise UserError(f"{path}: no valid 'mpp' (microns per pixel of the tiles); rebuild the "
                        "dataset with `her2 tile` or fix the file")
    return meta
