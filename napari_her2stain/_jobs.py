"""Long her2core work off the GUI thread, cancellable, or inline for deterministic tests.

`start(fn, *args, on_progress=..., **kwargs)` calls `fn(*args, progress=p, **kwargs)` where `p` is a
`her2core.util.progress.Progress`: any core function of the one progress/cancel protocol runs
as it is, with no adapter. Threaded, it runs in a napari FunctionWorker (the GUI stays live);
its reports `(stage, done, total)` reach `on_progress` in the GUI thread through a Qt signal
of a relay object that lives there (a queued connection). Inline — `HER2STAIN_NOTHREADS=1` or
`set_threaded(False)` — it runs in the caller's thread (the stardist-napari pattern).

`Job.cancel()` asks `p` to stop: the core function raises `Cancelled` at its next report and
unwinds in its own thread (its cleanup — a `.part` file removed — runs there), and only then
does the worker return and emit `finished`. superqt's own `worker.quit()` is not used: it
would leave the call running after `finished`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from her2core.util.progress import Cancelled, Progress

_threaded: bool | None = None
Listener = Callable[[str, int, int], None]


def set_threaded(on: bool | None) -> None:
    """Force threads on/off (None: follow HER2STAIN_NOTHREADS)."""
    global _threaded
    _threaded = on


def threaded() -> bool:
    if _threaded is not None:
        return _threaded
    return os.environ.get("HER2STAIN_NOTHREADS", "") in ("", "0", "false", "no")


class Job:
    """A started job: `cancel()` it, ask `running`; `worker` is the napari worker (None inline).

    `listeners` hear every report `(stage, done, total)` in the GUI thread (the widget's
    `on_progress` is the first); `progress` is the Progress the core function was given.
    """

    def __init__(self, listeners: list[Listener]):
        self.listeners = listeners
        self.progress = Progress(self._report)
        self.worker = None
        self.running = True
        self.cancelled = False
        self._relay = None  # threaded: the Qt object whose signal carries reports to the GUI thread

    def _report(self, stage: str, done: int, total: int) -> None:
        """Called by the core function, in whichever thread it runs."""
        if self._relay is not None:
            self._relay.updated.emit(stage, done, total)
        else:
            self._deliver(stage, done, total)

    def _deliver(self, stage: str, done: int, total: int) -> None:
        for listener in list(self.listeners):
            listener(stage, done, total)

    def cancel(self) -> None:
        self.progress.stop()
        self.cancelled = True


def _relay_for(job: Job):
    """A QObject made (and so living) in the GUI thread: a report emitted from the worker thread
    is queued and delivered by its slot in the GUI thread."""
    from qtpy.QtCore import QObject, Signal, Slot

    class Relay(QObject):
        updated = Signal(str, int, int)

        @Slot(str, int, int)
        def deliver(self, stage: str, done: int, total: int) -> None:
            job._deliver(stage, done, total)

    relay = Relay()
    relay.updated.connect(relay.deliver)
    return relay


def start(fn: Callable[..., Any], *args,
          on_progress: Listener | None = None,
          on_done: Callable[[Any], None] | None = None,
          on_error: Callable[[BaseException], None] | None = None,
          on_finish: Callable[[], None] | None = None, **kwargs) -> Job:
    """Run `fn(*args, progress=<the job's Progress>, **kwargs)`; callbacks run in the GUI thread.

    `on_done(result)` only when the job ran to the end; `on_error(exc)` when it failed (a
    cancel is no failure); `on_finish()` always (done, failed or cancelled), for resetting
    buttons, and only after the call has unwound.
    """
    job = Job([on_progress] if on_progress is not None else [])

    def finish():
        job.running = False
        if on_finish is not None:
            on_finish()

    if not threaded():
        try:
            result = fn(*args, progress=job.progress, **kwargs)
        except Cancelled:
            pass
        except Exception as exc:
            if on_error is None:
                raise
            on_error(exc)
        else:
            if on_done is not None and not job.cancelled:
                on_done(result)
        finally:
            finish()
        return job

    from napari.qt.threading import thread_worker

    cancelled = object()

    def call():
        try:
            return fn(*args, progress=job.progress, **kwargs)
        except Cancelled:  # the user's cancel, not a failure; the call's cleanup has run
            return cancelled

    job._relay = _relay_for(job)
    # with on_error the widget shows the failure; without, napari re-raises it in the GUI thread
    worker = thread_worker(call, start_thread=False, ignore_errors=on_error is not None)()
    job.worker = worker
    if on_done is not None:
        worker.returned.connect(lambda value: None if value is cancelled or job.cancelled else on_done(value))
    if on_error is not None:
        worker.errored.connect(on_error)
    worker.finished.connect(finish)
    worker.start()
    return job
