"""Paired tiles → batches: a resumable data order and paired augmentation.

The order is a pure function of (seed, position): sample number p of the run is
permutation_{p // N}[p % N], with one seeded permutation of the N training pairs per
epoch. Step k of a run with global batch B uses positions kB … kB+B−1, rank r of W takes
its contiguous B/W share. Augmentation draws from a generator seeded by (seed, p). So a
resumed run sees exactly the batches an uninterrupted one would, for any number of
workers and ranks, and the checkpoint only has to store the step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from her2core.datasets.paired import resize_image
from her2core.errors import UserError

AUGMENTS = ("hflip", "vflip", "rot90")


def parse_augment(spec: str | None) -> tuple[str, ...]:
    if spec is None or spec in ("", "none"):
        return ()
    ops = tuple(s.strip() for s in spec.split("+") if s.strip())
    bad = [o for o in ops if o not in AUGMENTS]
    if bad:
        raise UserError(f"augment '{spec}': unknown {', '.join(bad)}; use a '+'-joined subset of "
                        f"{', '.join(AUGMENTS)} or 'none'")
    return ops


def augment_pair(he: torch.Tensor, ihc: torch.Tensor, rng: np.random.Generator, ops: tuple[str, ...],
                 crop: int | None, resize: int | None = None):
    """The same resize (whole tile), random crop, flips and quarter turns applied to both (3, H, W) images."""
    if resize is not None:
        he, ihc = resize_image(he, resize).clamp(-1, 1), resize_image(ihc, resize).clamp(-1, 1)
    if crop is not None:
        h, w = he.shape[-2:]
        if crop > min(h, w):
            raise UserError(f"crop {crop} px is larger than the {w}x{h} tiles; use a smaller --crop")
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        he, ihc = he[:, y:y + crop, x:x + crop], ihc[:, y:y + crop, x:x + crop]
    if "hflip" in ops and rng.random() < 0.5:
        he, ihc = he.flip(-1), ihc.flip(-1)
    if "vflip" in ops and rng.random() < 0.5:
        he, ihc = he.flip(-2), ihc.flip(-2)
    if "rot90" in ops:
        k = int(rng.integers(0, 4))
        if k:
            he, ihc = torch.rot90(he, k, (-2, -1)), torch.rot90(ihc, k, (-2, -1))
    return he.contiguous(), ihc.contiguous()


class AugmentedPairs(Dataset):
    """Wraps a paired dataset; items are addressed by run position, not by index."""

    def __init__(self, base, seed: int, ops: tuple[str, ...], crop: int | None, resize: int | None = None):
        self.base, self.seed, self.ops, self.crop, self.resize = base, seed, ops, crop, resize
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self):
        return len(self.base)

    def __getitem__(self, position: int):
        n = len(self.base)
        epoch, offset = divmod(position, n)
        perm = self._perm_cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, 1, epoch]).permutation(n)
            self._perm_cache = {epoch: perm}
        item = self.base[int(perm[offset])]
        rng = np.random.default_rng([self.seed, 2, position])
        he, ihc = augment_pair(item["he"], item["ihc"], rng, self.ops, self.crop, self.resize)
        return {"he": he, "ihc": ihc, "her2_score": item["her2_score"], "position": position}


class StepBatches(Sampler):
    """Yields, for steps start..stop-1, this rank's list of run positions."""

    def __init__(self, start: int, stop: int, global_batch: int, rank: int, world: int):
        self.start, self.stop, self.rank = start, stop, rank
        self.global_batch, self.local = global_batch, global_batch // world

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            first = step * self.global_batch + self.rank * self.local
            yield list(range(first, first + self.local))


def make_loader(dataset: AugmentedPairs, start: int, stop: int, global_batch: int, rank: int, world: int,
                num_workers: int, pin: bool):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_sampler=StepBatches(start, stop, global_batch, rank, world),
                      num_workers=num_workers, pin_memory=pin, persistent_workers=False,
                      prefetch_factor=2 if num_workers else None)


def check_sizes(dataset, crop: int | None, source: str, resize: int | None = None) -> tuple[int, int]:
    """All pairs must share one size unless a crop or resize makes them uniform; returns the (w, h) seen."""
    if resize is not None:
        if crop is not None and crop > resize:
            raise UserError(f"{source}: crop {crop} px is larger than the {resize} px the tiles are resized to; "
                            "use a smaller --crop")
        return (resize, resize)
    from her2core.datasets.paired import image_size

    sizes = {}
    for he, _ihc, _ in getattr(dataset, "pairs", []):
        sizes.setdefault(image_size(he), he)
    if not sizes:
        item = dataset[0]
        return tuple(item["he"].shape[-1:-3:-1])
    if len(sizes) > 1 and crop is None:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise UserError(f"{source}: tiles differ in size ({pa.name} is {a[0]}x{a[1]}, {pb.name} is "
                        f"{b[0]}x{b[1]}); re-tile to one size or train with --crop")
    smallest = min(sizes, key=lambda s: min(s))
    if crop is not None and crop > min(smallest):
        raise UserError(f"{source}: crop {crop} px is larger than tile {sizes[smallest].name} "
                        f"({smallest[0]}x{smallest[1]}); use a smaller --crop")
    return smallest
