"""Pair virtual and real tiles by file name and read them as checked RGB uint8.

Every problem a user can fix (empty folder, unpaired names, sizes that differ,
images that are not RGB uint8) is a UserError naming the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.slide.images import image_header, read_image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def list_images(folder: str | Path) -> dict[str, Path]:
    """stem -> path of the image files directly in `folder` (hidden ones, such as the temporary
    `.<name>.<random>.part.png` of a killed writer, are not tiles)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
            if p.stem in found:
                raise UserError(f"{p}: two images named {p.stem} ({found[p.stem].name}); keep one")
            found[p.stem] = p
    if not found:
        raise UserError(f"{folder}: empty folder (no {'/'.join(IMAGE_EXTS)} images)")
    return found


def _names(xs) -> str:
    xs = sorted(xs)
    return ", ".join(xs[:5]) + (f" and {len(xs) - 5} more" if len(xs) > 5 else "")


def pair_folders(pred_dir: str | Path, target_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """[(name, pred path, target path)] matched by file stem; unmatched names are an error."""
    pred, target = list_images(pred_dir), list_images(target_dir)
    only_p, only_t = set(pred) - set(target), set(target) - set(pred)
    if only_p or only_t:
        parts = []
        if only_p:
            parts.append(f"{pred_dir}: no real tile for {_names(only_p)}")
        if only_t:
            parts.append(f"{target_dir}: no virtual tile for {_names(only_t)}")
        raise UserError("; ".join(parts) + "; tiles are paired by file name")
    return [(k, pred[k], target[k]) for k in sorted(pred)]


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 or a UserError saying what the file is instead."""
    return read_image(path, convert_rgb=False)


def read_pair(pred_path: Path, target_path: Path) -> tuple[np.ndarray, np.ndarray]:
    p, t = read_rgb(pred_path), read_rgb(target_path)
    if p.shape != t.shape:
        raise UserError(
            f"{pred_path} is {p.shape[1]}x{p.shape[0]} but {target_path} is {t.shape[1]}x{t.shape[0]}; "
            "virtual and real tiles must have the same size"
        )
    return p, t


def check_pairs(pairs: list[tuple[str, Path, Path]]) -> tuple[int, int]:
    """Read every header before any work: RGB 8-bit, one size per pair and per set; (h, w)."""
    size = None
    for _, p, t in pairs:
        dims = []
        for f in (p, t):
            mode, wh = image_header(f)
            if mode != "RGB":
                raise UserError(f"{f}: not an RGB 8-bit image (mode {mode}); convert it to RGB")
            dims.append(wh)
        if dims[0] != dims[1]:
            raise UserError(f"{p} is {dims[0][0]}x{dims[0][1]} but {t} is {dims[1][0]}x{dims[1][1]}; "
                            "virtual and real tiles must have the same size")
        if size is None:
            size = dims[0]
        elif dims[0] != size:
            raise UserError(f"{p}: {dims[0][0]}x{dims[0][1]} differs from the other tiles "
                            f"({size[0]}x{size[1]}); evaluate one tile size at a time")
    return size[1], size[0]
