"""Virtual HER2 for a slide region: overlapping tiles, feathered blend, streamed pyramid.

    translate_slide(run, "he.ome.tif", "virtual.ome.tif", InferenceOptions(seed=3), roi=features)

How it stays seamless, bounded, resumable, and keeps up with a GPU:
  * all CPU work runs on one `WorkPool` of `workers` threads (the cores, up to 8): reading
    and decoding, blending and pyramid encoding draw on the same threads, the output's
    work first (so the pyramid keeps pace with the model), reading ahead when none waits;
  * tiles (T, overlap O) are read at the model's working mpp in that pool;
    background tiles (glass on a low-resolution level or at full resolution, and
    tiles outside the ROI) are not run and come out white, the rest go through the
    model in batches of `batch_size` tiles of one tile row (stacked into page-locked
    memory on CUDA);
  * each finished tile row is one file in the work folder (see `workdir`), written
    by a thread of its own; as soon as tile row k exists, output band k (rows from
    tile k's top to tile k+1's: the overlap with row k-1, then what tile k alone
    covers) is blended (`blend.blend_block`, in jobs of whole column strips of the raw
    file, each strip one write; of row k-1 only the rows it shares are read) into a raw
    file on disk and row k-1 is deleted; the model waits when blending is more than
    `AHEAD` rows behind, so row files stay few;
  * each band goes straight into a `PyramidStream`, which encodes its tiles (each one
    read of the strip-laid raw file) and builds the lower levels in the pool as it goes:
    the tiled pyramidal OME-TIFF (working mpp, the region's level-0 origin) is finished
    a moment after the last band (the last tile row's).
Memory is a few tiles plus the batch, whatever the slide size. A rerun with the
same inputs resumes from the journal (the pyramid is rebuilt from the raw file's
final rows, then goes on) and gives the same bytes, because batches are fixed per
tile row, each batch's seed depends only on its position, and the pyramid's tiles
are written in a fixed order whatever the threads do.

Under `torchrun`, a `Team` splits tile rows across ranks (row k goes to rank
k mod world) on a shared work folder; after a barrier the slide's leader rank
blends and writes. The bytes equal those of one process.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.inference.options import InferenceOptions
from her2core.inference.region import (
    RegionPlan,
    TissueIndex,
    plan_region,
)
from her2core.inference.workdir import WorkDir
from her2core.qupath.rois import as_roi
from her2core.slide.tissue import is_empty_tile
from her2core.slide.writer import default_workers
from her2core.util.progress import Progress, ensure
from her2core.util.workpool import WorkPool

_OUTPUT, _READ = 0, 1  # WorkPool lanes: blending and encoding run before reading ahead

FORMAT_VERSION = 4  # 2: the raw output is stored inverted (unwritten = white); 3: in column strips;
# 4: separable blending (other rounding: a version-3 journal must not be resumed into it)


@dataclass
class Team:
    """Ranks sharing one slide's tile rows; `barrier()` waits for all of them."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None

    def owns(self, k: int) -> bool:
        return k % self.world == self.rank


class _TileCounter:
    """Tiles done of the job's total, reported through the progress protocol after each tick
    (`Progress.update` raises `Cancelled` there when the listener asked to stop; rerun to resume)."""

    def __init__(self, progress: Progress, stage: str, total: int, initial: int):
        self.progress, self.stage, self.total, self.done = progress, stage, total, initial
        progress.update(stage, initial, total)

    def tick(self, n: int = 1) -> None:
        self.done += n
        self.progress.update(self.stage, self.done, self.total)

    def close(self) -> None:
        """Nothing to release: the listener owns its bars."""


def batch_seed(seed: int, row: int, batch: int) -> int:
    """Seed of one batch: depends on its place in the slide only (resume/rank independent)."""
    return (int(seed) * 1_000_003 + row * 7_919 + batch) % (2**31 - 1)


def translate_slide(run, slide_path: str | Path, out_path: str | Path,
                    options: InferenceOptions | None = None, *,
                    roi=None, region: tuple[int, int, int, int] | None = None,
                    overwrite: bool = False, progress: Progress | None = None,
                    team: Team | None = None, leader: int = 0) -> Path | None:
    """Translate a region (or the ROI's box, or the whole slide) into a virtual HER2 OME-TIFF.

    `run`: a run folder, a framework, or a `Translator`. `options`: how it runs (steps, seed,
    grid, device, ...; default `InferenceOptions()`). `roi`: GeoJSON path, a list of features, or
    a shapely geometry (level-0 (x, y)); outside its polygons the output is white. `region`:
    level-0 (x, y, w, h). `progress` hears `(stage, tiles done, tiles)` after each tile and may
    cancel (`Cancelled`; rerun to resume). Returns the output path on the leader rank, None on
    the others. The leader holds the output's lock (`her2core.util.outputs`): a second job
    writing the same output gets one line instead of racing on the resume journal.
    """
    from her2core.inference.model import load_translator
    from her2core.slide import open_slide
    from her2core.util.outputs import locked

    o = options or InferenceOptions()
    report = ensure(progress)
    team = team or Team()
    out_path = Path(out_path)
    stack = contextlib.ExitStack()
    if team.rank == leader % team.world:
        stack.enter_context(locked(out_path, "her2 translate --slide"))
    with stack:
        if out_path.exists() and not overwrite:
            raise UserError(f"{out_path}: output exists; pass --overwrite to replace it")
        tile, overlap, batch_size, seed = o.tile, o.overlap, o.batch_size, o.seed
        roi_geom, roi_source = as_roi(roi)
        with open_slide(slide_path, mpp=o.slide_mpp) as slide:
            slide.require_mpp()
            # region/ROI problems are reported before the (slow) model load
            plan_region(slide, work_mpp=slide.mpp, tile=tile, overlap=overlap, region=region,
                        roi=roi_geom, roi_source=roi_source)
            translator = load_translator(run, device=o.device, steps=o.steps,
                                         precision=o.precision, scheduler=o.scheduler)
            wmpp = o.work_mpp or translator.work_mpp
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
            workers = o.workers or default_workers()
            bar = _TileCounter(report, f"translate {Path(slide_path).name}", len(mine) * plan.cols.count,
                               (len(mine) - len(todo)) * plan.cols.count)
            # the leader blends block rows and streams them into the pyramid as tile rows are
            # committed (in a background thread when alone; after the barrier with several ranks)
            # one budget of `workers` threads for all CPU work: blending and pyramid encoding
            # first (the output keeps pace with the model), then reading ahead
            pool = stack.enter_context(WorkPool(workers, "her2-work"))
            finisher = _Finisher(plan, wd, out_path, _output_properties(plan, translator, slide_path),
                                 pool=pool, workers=workers, pyramid_tile=o.pyramid_tile,
                                 background=team.world == 1) if is_leader else None
            try:
                try:
                    for k in _translate_rows(slide, plan, translator, wd, todo, batch_size, seed, bar,
                                             pool, workers):
                        if finisher is not None and team.world == 1:
                            finisher.row_committed(k)  # raises a blending/writing error early
                finally:
                    bar.close()
                team.barrier()
                if finisher is None:
                    return None
                return finisher.finish()
            except BaseException:
                if finisher is not None:
                    finisher.abort()
                raise


# --------------------------------------------------------------------------- internals

def _file_identity(p: Path) -> dict:
    st = p.stat()
    return {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _prefetch(items: Iterable, fn: Callable, ahead: int, pool) -> Iterator:
    """fn(item) for each item, in order, computed up to `ahead` items in advance in `pool`."""
    it = iter(items)
    pending: deque = deque()
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield fut.result()
    finally:
        for f in pending:
            f.cancel()


def _translate_rows(slide, plan: RegionPlan, translator, wd: WorkDir, rows: list[int],
                    batch_size: int, seed: int, bar: _TileCounter, pool: WorkPool,
                    workers: int) -> Iterator[int]:
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
        return k, j, (None if is_empty_tile(img) else img)

    items = ((k, j) for k in rows for j in range(n_cols))
    reader = _prefetch(items, read, ahead=2 * batch_size + 2 * workers, pool=pool.lane(_READ))
    # row files are written by a thread of their own, so the model's thread goes straight
    # back to the next batch (on a GPU: the device does not wait for the disk)
    io = ThreadPoolExecutor(1, thread_name_prefix="her2-rows")
    staging = _pinned_staging(translator, batch_size, plan.tile)
    try:
        for k in rows:
            row = _RowAssembler(wd.open_row(k), translator, batch_size=batch_size, bar=bar, io=io,
                                batch_seed_of=lambda b, k=k: batch_seed(seed, k, b),
                                staging=staging)
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
        io.shutdown()


def _pinned_staging(translator, batch_size: int, tile: int) -> np.ndarray | None:
    """A page-locked (N, T, T, 3) uint8 buffer that batches are stacked into when the model is
    on a CUDA device: the host-to-device copy then goes straight from it (no staging copy)."""
    device = getattr(translator, "device", None)
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    try:
        return torch.empty((batch_size, tile, tile, 3), dtype=torch.uint8, pin_memory=True).numpy()
    except RuntimeError:  # pragma: no cover - no page-locked memory to be had
        return None


class _RowAssembler:
    """One tile row: batches tissue tiles through the model, writes all tiles in column order."""

    def __init__(self, writer, translator, *, batch_seed_of, batch_size: int, bar: _TileCounter,
                 io: ThreadPoolExecutor, staging: np.ndarray | None = None):
        self.writer, self.translator, self.bar, self.io = writer, translator, bar, io
        self.staging = staging  # reused per batch: the model returns new arrays on CUDA
        self.writes: deque = deque()
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
        imgs = [img for _, img in self.batch]
        batch = (np.stack(imgs) if self.staging is None else
                 np.stack(imgs, out=self.staging[:len(imgs)]))
        out = self.translator(batch, self.batch_seed_of(self.n_batches))
        self.n_batches += 1
        for (j, _), o in zip(self.batch, out):
            self.ready[j] = o
        self.bar.tick(len(self.batch))
        self.batch = []

    def _flush(self) -> None:
        while self.next_j in self.ready:
            self.writes.append(self.io.submit(self.writer.write, self.ready.pop(self.next_j)))
            self.next_j += 1
        while self.writes and self.writes[0].done():
            self.writes.popleft().result()  # a disk error surfaces here

    def commit(self) -> None:
        if self.batch:
            self._run()
        self._flush()
        self.io.submit(self.writer.commit).result()  # after the row's writes (one thread: FIFO)
        while self.writes:
            self.writes.popleft().result()

    def abort(self) -> None:
        for f in self.writes:
            f.cancel()
        self.io.submit(self.writer.abort).result()


class _Finisher:
    """Output bands blended as soon as their tile rows are committed, and streamed into the
    pyramid at once, so the output is finished with the last band.

    A band's strips are blended by `workers` threads (numpy releases the GIL); the pyramid's
    tiles are encoded by as many more. Bands are made final in order, and `blocks_done` is
    advanced only after the blocks it counts are in the raw file (the journal).
    """

    AHEAD = 2  # tile rows the model may be ahead of blending
    CHUNK_STRIPS = (2, 8)  # raw-file strips a blending job takes (its tiles are read once):
    # as many as give every worker two jobs a block row, within these bounds

    def __init__(self, plan: RegionPlan, wd: WorkDir, out_path: Path, properties: dict, *,
                 pool: WorkPool, workers: int, pyramid_tile: int, background: bool):
        from her2core.slide.writer import PyramidStream

        self.plan, self.wd = plan, wd
        self.raw = wd.raw_image(plan.rows.length, plan.cols.length)
        self.m = wd.blocks_done()
        self.white = np.full((plan.tile, plan.tile, 3), 255, np.uint8)
        rows, width = plan.rows, plan.cols.length
        # output columns are blended in chunks of whole raw-file strips (one write per strip)
        self.strip = self.raw.strip
        self._strip_spans = np.array([(a, min(a + self.strip, width))
                                      for a in range(0, width, self.strip)]).reshape(-1, 2)
        n_strips = len(self._strip_spans)
        lo, hi = self.CHUNK_STRIPS
        per_job = max(lo, min(hi, -(-n_strips // (2 * workers))))
        self._chunks = [(a, min(a + per_job, n_strips)) for a in range(0, n_strips, per_job)]
        # output bands (see `blend_ready`) and which of their strips were written (the others
        # are white); a resumed job's final rows count as written, whatever they hold
        n, length = rows.count, rows.length
        cuts = [0] + [min(length, max(0, rows.position(k))) for k in range(1, n)] + [length]
        self._band_spans = np.array(list(itertools.pairwise(cuts))).reshape(-1, 2)
        self.band = self.m  # the first band not final yet (its top may be: see frontier)
        self.frontier = rows.block(self.m - 1)[1] if self.m > 0 else 0  # rows [0, frontier) final
        self.written = np.zeros((n, len(self._strip_spans)), dtype=bool)
        self.written[:self.m + 1] = True
        self._band_starts, self._band_ends = cuts[:-1], cuts[1:]
        self.pool = pool.lane(_OUTPUT)  # the job's threads (the caller shuts them down)
        self.stream = PyramidStream(out_path, self.raw, mpp=plan.work_mpp, tile=pyramid_tile,
                                    origin_xy=(float(plan.x0), float(plan.y0)),
                                    properties=properties, workers=workers,
                                    known_white=self._never_written, scratch_dir=wd.path,
                                    pool=pool.lane(_OUTPUT))
        # a resumed job: the rows already final go into the pyramid first
        self.stream.advance(self.frontier)
        self.error: BaseException | None = None
        self._progress = threading.Condition()
        self._commits: queue.Queue = queue.Queue()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="her2-finish", daemon=True)
            self._thread.start()

    def row_committed(self, k: int) -> None:
        """Tile row k is in the journal; returns once blending is at most `AHEAD` rows behind
        (so row files on disk stay few, and the output is finished soon after the last tile)."""
        self._commits.put(k)
        with self._progress:
            while k - self.m > self.AHEAD and self.error is None and self._thread.is_alive():
                self._progress.wait(0.5)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while self._commits.get() is not None:
                self.blend_ready()
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread
            self.error = exc

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._commits.put(None)
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error

    def blend_ready(self) -> None:
        """Blend every band whose tile rows exist, in order; drop rows no longer needed.

        Band k is output rows [p_k, p_k+1) (tile positions; clipped to the region): the overlap
        of tiles k-1 and k, then what tile k alone covers. So as soon as tile row k exists,
        everything above p_k+1 is final: the pyramid is only the overlap (O rows) behind the
        model, not a whole block row, and after the last tile little is left to do. Blocks
        [0, k) of the journal are then final (block k-1 ends at p_k + O <= p_k+1).
        """
        rows, wd = self.plan.rows, self.wd
        n = rows.count
        while self.band < n:
            k = self.band
            r0, r1 = max(self._band_spans[k, 0], self.frontier), self._band_spans[k, 1]
            need = rows.tiles_for(r0, r1) if r1 > r0 else []
            if not all(wd.row_done(j) for j in need):
                return
            if r1 > r0:
                readers = {j: wd.read_row(j, self.plan.tile) for j in need}
                try:
                    for f in [self.pool.submit(self._blend_chunk, k, (r0, r1), chunk, readers)
                              for chunk in self._chunks]:
                        f.result()
                finally:
                    for reader in readers.values():
                        reader.close()
            blocks_done = n if k == n - 1 else k
            if blocks_done > self.m:
                wd.set_blocks_done(blocks_done)
            if k >= 1:
                wd.drop_row(k - 1)  # later bands need rows k and up
            self.frontier = max(self.frontier, r1)
            self.stream.advance(self.frontier)
            with self._progress:
                self.m, self.band = max(self.m, blocks_done), k + 1
                self._progress.notify_all()

    def _never_written(self, r0: int, r1: int, c0: int, c1: int) -> bool:
        """No strip overlapping output rows [r0, r1) x cols [c0, c1) was written: it is white.
        (Bands are sorted and contiguous, strips regular: the overlapping ones are found by
        bisection and division; this runs for every level-0 tile of the pyramid.)"""
        lo = bisect.bisect_right(self._band_ends, r0)  # first band ending after r0
        hi = bisect.bisect_left(self._band_starts, r1)  # first band starting at or after r1
        s0, s1 = c0 // self.strip, -(-c1 // self.strip)
        return not self.written[lo:hi, s0:s1].any()

    def _blend_chunk(self, m: int, r: tuple[int, int], chunk: tuple[int, int],
                     readers: dict) -> None:
        """Band m's output rows r over strips [s0, s1): tiles read once, each strip blended and
        written whole (one system call), strips under white tiles only left unwritten."""
        plan = self.plan
        rows, cols = plan.rows, plan.cols
        ks = rows.tiles_for(*r)
        spans = self._strip_spans[chunk[0]:chunk[1]]
        js = cols.tiles_for(int(spans[0, 0]), int(spans[-1, 1]))
        stored = {(k, j) for k in ks for j in js if not readers[k].is_white(j)}
        if not stored:
            return  # the raw file reads white where nothing was written
        need = {k: (max(r[0], rows.position(k)) - rows.position(k),
                    min(r[1], rows.position(k) + rows.tile) - rows.position(k)) for k in ks}
        tiles = {kj: readers[kj[0]].tile_at(kj[1], need[kj[0]]) for kj in sorted(stored)}

        def get(k: int, j: int) -> np.ndarray:
            return tiles.get((k, j), self.white)

        for s, (c0, c1) in enumerate(spans.tolist(), start=chunk[0]):
            if not any((k, j) in stored for k in ks for j in cols.tiles_for(c0, c1)):
                continue
            self.written[m, s] = True
            self.raw.write(r[0], c0, _blend_one(plan, r, (c0, c1), get))

    def finish(self) -> Path:
        """After every tile row is committed: the last blends, the finished output."""
        self._stop_thread()
        self.blend_ready()
        if self.m < self.plan.rows.count:  # pragma: no cover - would be a journal bug
            raise RuntimeError(f"{self.wd.path}: tile rows missing after translation; "
                               "delete it and rerun")
        out = self.stream.close()
        # the output is in place: the raw file's name goes at once, its space is freed in the
        # background (the pyramid was finished ~50 ms sooner for an 8k slide)
        self.raw.unlink()
        self.wd.remove(in_background=True)  # the last row files' space too
        self.raw.close(in_background=True)
        return out

    def abort(self) -> None:
        """Stop blending (the journal stays consistent) and drop the half-written pyramid."""
        with contextlib.suppress(BaseException):  # the caller's exception is the one to raise
            self._stop_thread()
        self.stream.abort()
        self.raw.close()  # the file stays: it is the journal


def _blend_one(plan: RegionPlan, r, c, get_tile) -> np.ndarray:
    from her2core.inference.blend import blend_block

    block = blend_block(plan.rows, plan.cols, r, c, get_tile)
    mask = plan.roi_mask(r, c)
    if mask is not None:
        block[~mask] = 255
    return block


def _output_properties(plan: RegionPlan, translator, slide_path: Path) -> dict:
    return {
        "kind": "virtual_her2",
        "source_slide": Path(slide_path).name,
        "model": translator.name,
        "run": translator.run_name,
        "weights_sha256": translator.fingerprint,
        "steps": translator.steps,
        "precision": translator.precision,
        "roi": plan.roi_wkb is not None,
        **{k: v for k, v in plan.describe().items() if k != "roi_sha256"},
    }
