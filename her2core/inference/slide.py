"""Virtual HER2 for a slide region: overlapping tiles, feathered blend, streamed pyramid.

    translate_slide(run, "he.ome.tif", "virtual.ome.tif", roi=features)

How it stays seamless, bounded and resumable:
  * tiles (T, overlap O) are read at the model's working mpp, background tiles
    (glass on a low-resolution level or at full resolution, and tiles outside
    the ROI) are not run and come out white, the rest go
    through the model in batches of `batch_size` tiles of one tile row;
  * each finished tile row is one file in the work folder (see `workdir`);
    as soon as rows k and k+1 exist, output block row k is blended
    (`blend.blend_block`, in a background thread) into a raw file on disk and
    row k is deleted;
  * when every block row is final, `write_pyramid` streams the raw file into a
    tiled pyramidal OME-TIFF with the working mpp and the region's level-0 origin.
Memory is a few tiles plus the batch, whatever the slide size. A rerun with the
same inputs resumes from the journal and gives the same bytes, because batches
are fixed per tile row and each batch's seed depends only on its position.

Under `torchrun`, a `Team` splits tile rows across ranks (row k goes to rank
k mod world) on a shared work folder; after a barrier the slide's leader rank
blends and writes. The bytes equal those of one process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from her2core.errors import UserError
from her2core.inference.region import (
    RegionPlan,
    TissueIndex,
    is_background,
    plan_region,
    roi_geometry,
)
from her2core.inference.workdir import WorkDir

FORMAT_VERSION = 1
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64


@dataclass
class Team:
    """Ranks sharing one slide's tile rows; `barrier()` waits for all of them."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None

    def owns(self, k: int) -> bool:
        return k % self.world == self.rank


class Progress:
    """Tiles done, tiles/s and time left: a tqdm bar and/or a callback that may cancel."""

    def __init__(self, total: int, initial: int, *, desc: str, bar: bool,
                 callback: Callable[[int, int], Any] | None):
        self.total, self.done, self.callback = total, initial, callback
        self._bar = None
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="tile", dynamic_ncols=True)

    def tick(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def batch_seed(seed: int, row: int, batch: int) -> int:
    """Seed of one batch: depends on its place in the slide only (resume/rank independent)."""
    return (int(seed) * 1_000_003 + row * 7_919 + batch) % (2**31 - 1)


def translate_slide(run, slide_path: str | Path, out_path: str | Path, *,
                    roi=None, region: tuple[int, int, int, int] | None = None,
                    steps: int | None = None, batch_size: int = 8, seed: int = 0,
                    slide_mpp: float | None = None, work_mpp: float | None = None,
                    tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                    overwrite: bool = False, device=None, precision: str = "auto",
                    progress: bool = True, callback: Callable[[int, int], Any] | None = None,
                    team: Team | None = None, leader: int = 0, pyramid_tile: int = 256,
                    read_workers: int = 2) -> Path | None:
    """Translate a region (or the ROI's box, or the whole slide) into a virtual HER2 OME-TIFF.

    `run`: a run folder, a framework, or a `Translator`. `roi`: GeoJSON path, a list of
    features, or a shapely geometry (level-0 (x, y)); outside its polygons the output is white.
    `region`: level-0 (x, y, w, h). `callback(done, total)` after each tile may raise to cancel
    (rerun to resume). Returns the output path on the leader rank, None on the others.
    """
    from her2core.inference.model import load_translator
    from her2core.slide import open_slide

    team = team or Team()
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise UserError(f"{out_path}: output exists; pass --overwrite to replace it")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    roi_geom, roi_source = _roi(roi)
    with open_slide(slide_path, mpp=slide_mpp) as slide:
        slide.require_mpp()
        # region/ROI problems are reported before the (slow) model load
        plan_region(slide, work_mpp=slide.mpp, tile=tile, overlap=overlap, region=region,
                    roi=roi_geom, roi_source=roi_source)
        translator = load_translator(run, device=device, steps=steps, precision=precision)
        wmpp = work_mpp or translator.work_mpp
        if not wmpp:
            raise UserError(f"{getattr(run, 'name', run)}: the run records no working microns per "
                            "pixel; pass --work-mpp (e.g. 0.5)")
        plan = plan_region(slide, work_mpp=float(wmpp), tile=tile, overlap=overlap, region=region,
                           roi=roi_geom, roi_source=roi_source)
        identity = {
            "format": FORMAT_VERSION,
            "slide": _file_identity(Path(slide_path)),
            "plan": plan.describe(),
            "model": translator.describe(),
            "batch_size": int(batch_size),
            "seed": int(seed),
        }
        wd = WorkDir(out_path)
        is_leader = team.rank == leader % team.world
        if is_leader:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            wd.prepare(identity)
        team.barrier()
        first_block = wd.blocks_done()
        n_rows = plan.rows.count
        mine = [k for k in range(first_block, n_rows) if team.owns(k)]
        todo = [k for k in mine if not wd.row_done(k)]
        bar = Progress(len(mine) * plan.cols.count, (len(mine) - len(todo)) * plan.cols.count,
                       desc=f"translate {Path(slide_path).name}", bar=progress, callback=callback)
        # one process: blend finished block rows in a background thread while the model
        # works on the next rows (numpy releases the GIL); ranks blend after the barrier
        blender = ThreadPoolExecutor(1, thread_name_prefix="her2-blend") if team.world == 1 else None
        blends: list = []
        try:
            for _ in _translate_rows(slide, plan, translator, wd, todo, batch_size, seed, bar,
                                     read_workers):
                if blender is not None:
                    blends.append(blender.submit(_blend_ready, plan, wd))
                    while blends and blends[0].done():
                        blends.pop(0).result()  # surface a blending error early
        finally:
            bar.close()
            if blender is not None:
                blender.shutdown(wait=True)
        for f in blends:
            f.result()
        team.barrier()
        if not is_leader:
            return None
        _blend_ready(plan, wd)
        if wd.blocks_done() < n_rows:  # pragma: no cover - would be a journal bug
            raise RuntimeError(f"{wd.path}: tile rows missing after translation; delete it and rerun")
        return _write_output(plan, wd, out_path, translator, Path(slide_path), progress,
                             pyramid_tile)


# --------------------------------------------------------------------------- internals

def _roi(roi):
    if roi is None:
        return None, "ROI"
    from shapely.geometry.base import BaseGeometry

    if isinstance(roi, BaseGeometry):
        return roi, "ROI"
    if isinstance(roi, (str, Path)):
        from her2core.qupath.geojson import read_features

        return roi_geometry(read_features(roi), str(roi)), str(roi)
    return roi_geometry(list(roi)), "ROI"


def _file_identity(p: Path) -> dict:
    st = p.stat()
    return {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _prefetch(items: Iterable, fn: Callable, ahead: int, workers: int) -> Iterator:
    """fn(item) for each item, in order, computed up to `ahead` items in advance by threads."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="her2-read") as ex:
        queue: deque = deque()
        try:
            for item in it:
                queue.append(ex.submit(fn, item))
                if len(queue) >= ahead:
                    break
            while queue:
                fut = queue.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    queue.append(ex.submit(fn, nxt))
                yield fut.result()
        finally:
            for f in queue:
                f.cancel()


def _translate_rows(slide, plan: RegionPlan, translator, wd: WorkDir, rows: list[int],
                    batch_size: int, seed: int, bar: Progress, read_workers: int) -> Iterator[int]:
    """Translate the given tile rows into row files; yields each row index once it is committed."""
    n_cols = plan.cols.count
    glass = TissueIndex(slide)

    def read(kj):
        k, j = kj
        if not plan.tile_touches_roi(k, j):
            return k, j, None
        x, y = plan.tile_origin(k, j)
        if not glass.may_hold_tissue(x, y, plan.tile * plan.scale):
            return k, j, None
        img = plan.read_tile(slide, k, j)
        return k, j, (None if is_background(img) else img)

    items = ((k, j) for k in rows for j in range(n_cols))
    reader = _prefetch(items, read, ahead=2 * batch_size + 2, workers=read_workers)
    try:
        for k in rows:
            row = _RowAssembler(wd.open_row(k), translator, batch_size=batch_size, bar=bar,
                                batch_seed_of=lambda b, k=k: batch_seed(seed, k, b))
            try:
                for _ in range(n_cols):
                    kk, j, img = next(reader)
                    assert kk == k
                    row.add(j, img)
                row.commit()
            except BaseException:
                row.abort()
                raise
            yield k
    finally:
        reader.close()


class _RowAssembler:
    """One tile row: batches tissue tiles through the model, writes all tiles in column order."""

    def __init__(self, writer, translator, *, batch_seed_of, batch_size: int, bar: Progress):
        self.writer, self.translator, self.bar = writer, translator, bar
        self.batch_seed_of, self.batch_size = batch_seed_of, batch_size
        self.ready: dict[int, np.ndarray | None] = {}
        self.next_j = 0
        self.batch: list[tuple[int, np.ndarray]] = []
        self.n_batches = 0

    def add(self, j: int, img: np.ndarray | None) -> None:
        """Column j's H&E tile, or None for a tile that stays white (background, outside ROI)."""
        if img is not None:
            self.batch.append((j, img))
            if len(self.batch) == self.batch_size:
                self._run()
        else:
            self.ready[j] = None
            self.bar.tick()
        self._flush()

    def _run(self) -> None:
        out = self.translator(np.stack([img for _, img in self.batch]),
                              self.batch_seed_of(self.n_batches))
        self.n_batches += 1
        for (j, _), o in zip(self.batch, out):
            self.ready[j] = o
        self.bar.tick(len(self.batch))
        self.batch = []

    def _flush(self) -> None:
        while self.next_j in self.ready:
            self.writer.write(self.ready.pop(self.next_j))
            self.next_j += 1

    def commit(self) -> None:
        if self.batch:
            self._run()
        self._flush()
        self.writer.commit()

    def abort(self) -> None:
        self.writer.abort()


def _blend_ready(plan: RegionPlan, wd: WorkDir) -> None:
    """Blend every output block row whose two tile rows exist; drop rows no longer needed."""
    rows, cols = plan.rows, plan.cols
    h, w = rows.length, cols.length
    raw = wd.raw_image(h, w)
    m = wd.blocks_done()
    while m < rows.count:
        need = [m] + ([m + 1] if m + 1 < rows.count else [])
        if not all(wd.row_done(k) for k in need):
            return
        r = rows.block(m)
        if r[1] > r[0]:
            tiles = _TileCache(wd, plan.tile)
            for j in range(cols.count):
                c = cols.block(j)
                if c[1] > c[0]:
                    ks, js = rows.tiles_for(*r), cols.tiles_for(*c)
                    if all(tiles.is_white(k, jj) for k in ks for jj in js):
                        block = np.full((r[1] - r[0], c[1] - c[0], 3), 255, np.uint8)
                    else:
                        block = _blend_one(plan, r, c, tiles.get)
                    raw.write(r[0], c[0], block)
                tiles.forget_before(j + 1)
        m += 1
        wd.set_blocks_done(m)
        wd.drop_row(m - 1)


class _TileCache:
    """Translated tiles read back from row files; column block j needs columns j and j+1 only."""

    def __init__(self, wd: WorkDir, tile: int):
        self.wd, self.tile, self.tiles, self.rows = wd, tile, {}, {}
        self.white = np.full((tile, tile, 3), 255, dtype=np.uint8)

    def _row(self, k: int):
        if k not in self.rows:
            self.rows[k] = self.wd.read_row(k, self.tile)
        return self.rows[k]

    def is_white(self, k: int, j: int) -> bool:
        return self._row(k).is_white(j)

    def get(self, k: int, j: int) -> np.ndarray:
        if (k, j) not in self.tiles:
            t = self._row(k).tile_at(j)
            self.tiles[(k, j)] = self.white if t is None else t
        return self.tiles[(k, j)]

    def forget_before(self, j: int) -> None:
        for key in [key for key in self.tiles if key[1] < j]:
            del self.tiles[key]


def _blend_one(plan: RegionPlan, r, c, get_tile) -> np.ndarray:
    from her2core.inference.blend import blend_block

    block = blend_block(plan.rows, plan.cols, r, c, get_tile)
    mask = plan.roi_mask(r, c)
    if mask is not None:
        block[~mask] = 255
    return block


def _write_output(plan: RegionPlan, wd: WorkDir, out_path: Path, translator, slide_path: Path,
                  progress: bool, pyramid_tile: int) -> Path:
    from her2core.slide import write_pyramid

    w, h = plan.out_size
    raw = wd.raw_image(h, w)
    props = {
        "kind": "virtual_her2",
        "source_slide": slide_path.name,
        "model": translator.name,
        "run": translator.run_name,
        "weights_sha256": translator.fingerprint,
        "steps": translator.steps,
        "precision": translator.precision,
        "roi": plan.roi_wkb is not None,
        **{k: v for k, v in plan.describe().items() if k != "roi_sha256"},
    }
    bar = None
    cb = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"write {out_path.name}", unit="tile", dynamic_ncols=True)

        def cb(done, total):
            bar.total = total
            bar.n = done
            if done == total or done % 64 == 0:
                bar.refresh()

    try:
        write_pyramid(out_path, raw, mpp=plan.work_mpp, tile=pyramid_tile,
                      origin_xy=(float(plan.x0), float(plan.y0)), properties=props,
                      progress=cb)
    finally:
        if bar is not None:
            bar.close()
    wd.remove()
    return out_path

