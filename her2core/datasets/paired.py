"""PairedTiles: a torch Dataset of aligned H&E / IHC tile pairs, as models see them.

Items are {"he": (3, H, W) float32 in [-1, 1], "ihc": same, "her2_score": int64 scalar
(-1 unknown), "name": str}. No augmentation here: the training engine augments
both images of a pair together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from her2core.datasets.layouts import detect_layout, list_pairs, read_include, read_scores
from her2core.errors import UserError
from her2core.slide.images import image_header, read_image


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file, or a UserError naming it (her2core.slide.images)."""
    return read_image(path)


def image_size(path: Path) -> tuple[int, int]:
    """(w, h) from the file header (cheap), or a UserError naming the file."""
    return image_header(path)[1]


def to_model_tensor(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


def resize_image(x: torch.Tensor, size) -> torch.Tensor:
    """(…, 3, H, W) resized to `size` (int: square, or (h, w)) by antialiased bilinear interpolation.

    The references resize the whole tile with PIL (BBDM: torchvision Resize, bilinear with
    antialiasing; guided-diffusion / consistency_models: BOX halvings then BICUBIC).
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    batch = x if x.ndim == 4 else x[None]
    out = F.interpolate(batch.float(), size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out if x.ndim == 4 else out[0]


class PairedTiles(Dataset):
    """Aligned H&E / IHC tile pairs; `.pairs` is a list of (he_path, ihc_path, her2_score)."""

    def __init__(self, pairs: list[tuple[Path, Path, int]], *, root: Path | None = None,
                 layout: str | None = None, split: str | None = None):
        self.pairs = [(Path(a), Path(b), int(s)) for a, b, s in pairs]
        self.root, self.layout, self.split = root, layout, split

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [a.stem for a, _, _ in self.pairs]

    @property
    def scores(self) -> list[int]:
        return [s for _, _, s in self.pairs]

    def __getitem__(self, i: int) -> dict:
        he_path, ihc_path, score = self.pairs[i]
        he, ihc = read_rgb(he_path), read_rgb(ihc_path)
        if he.shape != ihc.shape:
            raise UserError(f"{he_path} is {he.shape[1]}x{he.shape[0]} but {ihc_path} is "
                            f"{ihc.shape[1]}x{ihc.shape[0]}; a pair needs the same size")
        return {"he": to_model_tensor(he), "ihc": to_model_tensor(ihc),
                "her2_score": torch.tensor(score, dtype=torch.int64), "name": he_path.stem}

    def check(self) -> None:
        """Read every file header: unreadable or differently sized pairs raise a UserError."""
        for he, ihc, _ in self.pairs:
            a, b = image_size(he), image_size(ihc)
            if a != b:
                raise UserError(f"{he} is {a[0]}x{a[1]} but {ihc} is {b[0]}x{b[1]}; "
                                "a pair needs the same size")

    def __repr__(self) -> str:
        return f"PairedTiles({len(self)} pairs, layout={self.layout}, split={self.split}, root={self.root})"


def open_paired(root, split: str | None = "train", *, include=None, layout: str | None = None,
                check: bool = True, scores=None) -> PairedTiles:
    """Open one split of a paired tile dataset, detecting its layout (see her2core.datasets.layouts).

    `split=None` takes every split. `include`: names (or a text file of names, one
    per line, with or without extension) that select a subset, e.g. a BCI-clean list.
    `check` reads every file header now, so unreadable or mismatched files fail early.
    `scores`: a CSV (name, her2_score) whose scores replace the layout's for the names it lists.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: dataset not found")
    layout = layout or detect_layout(root)
    pairs = list_pairs(root, split, layout)
    if include is not None:
        wanted = read_include(include)
        pairs = [p for p in pairs if p[0].stem in wanted or p[0].name in wanted]
        if not pairs:
            raise UserError(f"{include if isinstance(include, (str, Path)) else 'include list'}: "
                            f"selects none of the {split or 'all'} tiles in {root}")
    if not pairs:
        raise UserError(f"{root}: no image pairs in split {split!r}")
    if scores is not None:
        table = read_scores(Path(scores))
        pairs = [(he, ihc, table.get(he.stem, s)) for he, ihc, s in pairs]
    ds = PairedTiles(pairs, root=root, layout=layout, split=split)
    if check:
        ds.check()
    return ds
