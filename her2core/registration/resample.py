"""Write the HER2 slide resampled into the H&E pixel grid as a pyramid, with bounded memory.

Level 0 is warped tile by tile into a raw file on disk (each band mapped, written and
unmapped again), then `write_pyramid` streams it out through a sliceable view that maps
only the rows a read needs, so resident memory stays a few bands whatever the slide size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from her2core.registration.transform import Transform
from her2core.registration.warp import warp_region
from her2core.util.progress import Progress, ensure


class RawRGB:
    """A read-only (H, W, 3) uint8 raw file, sliceable like an array, mapping rows on demand."""

    def __init__(self, path: Path, height: int, width: int):
        self.path = Path(path)
        self.shape = (int(height), int(width), 3)
        self.ndim = 3
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        rows, rest = key[0], key[1:]
        h, w, _ = self.shape
        if isinstance(rows, slice):
            r0, r1, st = rows.indices(h)
        else:
            r0, r1, st = int(rows), int(rows) + 1, 1
        r1 = max(r1, r0)
        if r1 == r0:
            return np.zeros((0, w, 3), np.uint8)[(slice(None),) + rest]
        mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=r0 * w * 3, shape=(r1 - r0, w, 3))
        try:
            out = np.array(mm[(slice(None, None, st),) + rest])
        finally:
            del mm
        return out if isinstance(rows, slice) else out[0]


def write_registered(her2_slide, transform: Transform, out_path: str | Path, *, tile: int = 1024,
                     progress: Progress | None = None, properties: dict | None = None) -> Path:
    """HER2 warped onto the H&E level-0 grid (`transform.he_size`, `transform.he_mpp`) as OME-TIFF.

    `progress` hears `("resample", tiles done, tiles)`."""
    from her2core.slide import write_pyramid

    out_path = Path(out_path)
    w, h = (int(v) for v in transform.he_size)
    n_tiles = ((h + tile - 1) // tile) * ((w + tile - 1) // tile)
    done, p = 0, ensure(progress)
    with tempfile.TemporaryDirectory(prefix=".registered-", dir=out_path.parent) as tmp:
        raw = Path(tmp) / "level0.raw"
        with open(raw, "wb") as fh:
            fh.truncate(h * w * 3)
        for r0 in range(0, h, tile):
            r1 = min(r0 + tile, h)
            band = np.memmap(raw, dtype=np.uint8, mode="r+", offset=r0 * w * 3, shape=(r1 - r0, w, 3))
            for c0 in range(0, w, tile):
                p.check("resample")
                c1 = min(c0 + tile, w)
                band[:, c0:c1] = warp_region(her2_slide, transform, (c0, r0), (c1 - c0, r1 - r0),
                                             transform.he_mpp)
                done += 1
                p.update("resample", done, n_tiles)
            band.flush()
            del band
        write_pyramid(out_path, RawRGB(raw, h, w), mpp=transform.he_mpp,
                      properties=properties or {}, name="her2_registered")
    return out_path
