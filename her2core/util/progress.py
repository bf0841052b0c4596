"""One progress/cancel protocol for every long job in the core.

A core function that runs for more than a moment takes `progress: Progress | None`. It calls
`progress.update(stage, done, total)` after each unit of work (a tile, a step, a case); that call
reports to whoever listens (tqdm bars in the CLI, a napari progress bar in the plugin) and raises
`Cancelled` when the listener asked to stop. The core therefore needs no second `cancel=` argument,
and a cancel is seen at the next unit, in whichever thread the work runs. Outputs are written
atomically and jobs resume, so a cancelled job leaves nothing half-written.

`update` may be called from worker threads: listeners must be thread-safe (tqdm is; napari
listeners hand the value to the GUI thread through a Qt signal).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Cancelled(Exception):
    """The listener asked to stop; what was written stays valid, and `--resume` goes on from it."""


class Progress:
    """Where long work reports `(stage, done, total)` and learns whether to stop.

    `Progress()` is silent and never cancels. `on_update(stage, done, total)` receives every report;
    `should_stop()` is asked on every report and on `check()`. `stop()` asks to stop from any thread.
    """

    def __init__(self, on_update: Callable[[str, int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self._on_update = on_update
        self._should_stop = should_stop
        self._stop = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set() or (self._should_stop is not None and bool(self._should_stop()))

    def stop(self) -> None:
        """Ask the work to stop at its next report (thread-safe)."""
        self._stop.set()

    def check(self, stage: str = "") -> None:
        """Raise `Cancelled` if asked to stop; for loops whose units report nothing."""
        if self.cancelled:
            raise Cancelled(f"cancelled{' during ' + stage if stage else ''}")

    def update(self, stage: str, done: int, total: int) -> None:
        """Report `done` of `total` units of `stage`, then raise `Cancelled` if asked to stop."""
        if self._on_update is not None:
            self._on_update(stage, int(done), int(total))
        self.check(stage)

    def within(self, prefix: str) -> Progress:
        """The same listener and cancel, with stage names prefixed (`case03: register`)."""
        return _Prefixed(self, prefix)


class _Prefixed(Progress):
    """A sub-job's view of its parent: reports go up with the prefix, stops are shared."""

    def __init__(self, parent: Progress, prefix: str):
        super().__init__()
        self._parent, self._prefix = parent, prefix

    @property
    def cancelled(self) -> bool:
        return self._parent.cancelled

    def stop(self) -> None:
        self._parent.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        self._parent.update(f"{self._prefix}: {stage}" if stage else self._prefix, done, total)


def ensure(progress: Progress | None) -> Progress:
    """`progress`, or a silent one: core functions call this once instead of testing for None."""
    return progress if progress is not None else Progress()


@contextmanager
def tqdm_bars(unit: str = "it") -> Iterator[Progress]:
    """A Progress shown as one tqdm bar per stage (the CLI's listener); all bars close on exit."""
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}
    lock = threading.Lock()

    def on_update(stage: str, done: int, total: int) -> None:
        with lock:
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, desc=stage or None, unit=unit,
                                         dynamic_ncols=True, leave=len(bars) == 0)
            if bar.total != total:
                bar.total = total
            bar.n = done
            bar.refresh()

    try:
        yield Progress(on_update)
    finally:
        for bar in bars.values():
            bar.close()
