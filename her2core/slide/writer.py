"""Write pyramidal, tiled OME-TIFF in a stream with bounded memory.

Level 0 is read tile by tile from any sliceable (H, W, 3) uint8 source (a numpy
array, a `np.memmap`, a zarr array). Each lower level is built by 2x2 area
averaging of the level above, kept in a temporary memmap on disk, so peak
memory is a few tiles whatever the slide size. Sub-resolutions go into
SubIFDs, as QuPath, napari and OpenSlide-style readers expect. Microns per
pixel go into the OME-XML and the TIFF resolution tags; `origin_xy` (the
region's level-0 offset in its source slide) and other properties into a
`her2core` map annotation. The output is written to a temporary file and
renamed, and its bytes depend only on its inputs (no clock, a name-derived UUID).
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from her2core.util.atomic import atomic_path


def pyramid_shapes(height: int, width: int, min_size: int = 512) -> list[tuple[int, int]]:
    """(h, w) of each level, halving (ceil) until the larger side is <= min_size."""
    shapes = [(height, width)]
    while max(shapes[-1]) > min_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _downsample_into(src, dst: np.ndarray, band: int | None = None, workers: int | None = None) -> None:
    """2x2 area mean of `src` into `dst`, in horizontal bands (bounded memory).

    The band height adapts to the width so that a band's source rows hold ~24 MiB
    of uint16 (4 Mi source pixels x 3 channels x 2 bytes) whatever the slide size.
    Bands are independent, so a few threads share them (numpy releases the GIL);
    at most `workers` + 1 bands are in flight.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    h, w = dst.shape[:2]
    sh, sw = src.shape[:2]
    if band is None:
        band = max(8, (1 << 20) // max(1, w))

    def one(r0: int) -> None:
        r1 = min(r0 + band, h)
        block = np.asarray(src[2 * r0:min(2 * r1, sh)], dtype=np.uint16)
        # pad odd edges by repeating the last row/column
        need_r, need_c = 2 * (r1 - r0), 2 * w
        if block.shape[0] < need_r:
            block = np.concatenate([block, block[-1:]], axis=0)
        if sw < need_c:
            block = np.concatenate([block, block[:, -1:]], axis=1)
        s = block[0::2, 0::2] + block[1::2, 0::2] + block[0::2, 1::2] + block[1::2, 1::2]
        dst[r0:r1] = ((s + 2) // 4).astype(np.uint8)

    starts = range(0, h, band)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(starts) < 2:
        for r0 in starts:
            one(r0)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for r0 in starts:
            pending.append(pool.submit(one, r0))
            if len(pending) > workers:
                pending.pop(0).result()
        for f in pending:
            f.result()


def _tiles(src, tile: int, on_tile: Callable[[], None] | None = None):
    h, w = src.shape[:2]
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            block = np.asarray(src[r:r + tile, c:c + tile])
            if block.shape[0] != tile or block.shape[1] != tile:
                pad = np.zeros((tile, tile, block.shape[2]), dtype=np.uint8)
                pad[:block.shape[0], :block.shape[1]] = block
                block = pad
            if on_tile is not None:
                on_tile()
            yield block


def write_pyramid(path: str | Path, source, *, mpp: float, tile: int = 256,
                  min_size: int = 512, compression: str | None = "zlib",
                  origin_xy: tuple[float, float] = (0.0, 0.0), properties: dict | None = None,
                  name: str | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write `source` (H, W, 3) uint8 as a pyramidal OME-TIFF at `path`; returns the path.

    `progress(done, total)` is called per written tile (all levels).
    `compression`: 'zlib' (lossless deflate, level 1; default), 'jpeg' (smaller, lossy) or None.
    """
    import tifffile

    path = Path(path)
    h, w = int(source.shape[0]), int(source.shape[1])
    if source.ndim != 3 or source.shape[2] != 3:
        raise ValueError(f"write_pyramid wants (H, W, 3) RGB, got shape {source.shape}")
    shapes = pyramid_shapes(h, w, min_size)
    total = sum(((lh + tile - 1) // tile) * ((lw + tile - 1) // tile) for lh, lw in shapes)
    done = [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    props = dict(properties or {})
    props["origin_xy"] = [float(origin_xy[0]), float(origin_xy[1])]
    props["mpp"] = float(mpp)
    name = name or path.name.split(".")[0]
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
    res = (1e4 / mpp, 1e4 / mpp)  # pixels per centimetre
    opts = {"tile": (tile, tile), "photometric": "rgb", "compression": compression,
            "resolutionunit": "CENTIMETER"}
    if compression == "zlib":
        # deflate level 1: ~3x faster to write than the default 6, files ~10 % larger
        opts["compressionargs"] = {"level": 1}
    with tempfile.TemporaryDirectory(prefix=".pyramid-", dir=path.parent if path.parent.exists() else None) as tmpdir, \
            atomic_path(path) as tmp_out:
        levels = [source]
        for i, (lh, lw) in enumerate(shapes[1:], start=1):
            mm = np.memmap(Path(tmpdir) / f"level{i}.raw", dtype=np.uint8, mode="w+", shape=(lh, lw, 3))
            _downsample_into(levels[-1], mm)
            levels.append(mm)
        with tifffile.TiffWriter(tmp_out, bigtiff=h * w * 3 > 2**31, ome=True) as tif:
            tif.write(_tiles(source, tile, tick), shape=(h, w, 3), dtype=np.uint8,
                      subifds=len(shapes) - 1, resolution=res, metadata=metadata,
                      software=False, **opts)
            for i, (lh, lw) in enumerate(shapes[1:], start=1):
                d = 2 ** i
                tif.write(_tiles(levels[i], tile, tick), shape=(lh, lw, 3), dtype=np.uint8,
                          subfiletype=1, resolution=(res[0] / d, res[1] / d), metadata=None,
                          software=False, **opts)
        for lvl in levels[1:]:
            del lvl
    return path
