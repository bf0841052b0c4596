"""Long work off the GUI thread: generators that yield progress, cancellable, or run inline.

A widget describes a job as a generator function taking a `cancel` event; it
yields `Progress(done, total, text)` and returns its result. `start(...)` runs
it in a napari `thread_worker` (the GUI stays live) or inline in the caller's
thread when threads are switched off — `HER2STAIN_NOTHREADS=1` or
`set_threaded(False)` — so tests are deterministic (the stardist-napari
pattern). `Job.cancel()` sets the event and stops the generator at its next
yield; work inside a her2core call stops at its next progress callback.

her2core functions take `progress(done, total)` callbacks rather than being
generators; `stepwise(fn, ...)` turns such a call into a generator by running it
in a helper thread and relaying its callbacks.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

_threaded: bool | None = None


class Cancelled(Exception):
    """Raised inside a her2core call (from its progress callback) when the user cancels."""


@dataclass
class Progress:
    done: int
    total: int
    text: str = ""


def set_threaded(on: bool | None) -> None:
    """Force threads on/off (None: follow HER2STAIN_NOTHREADS)."""
    global _threaded
    _threaded = on


def threaded() -> bool:
    if _threaded is not None:
        return _threaded
    return os.environ.get("HER2STAIN_NOTHREADS", "") in ("", "0", "false", "no")


class Job:
    """A started job: `cancel()` it, ask `running`; `worker` is the napari worker (None inline)."""

    def __init__(self, cancel: threading.Event):
        self._cancel = cancel
        self.worker = None
        self.running = True
        self.cancelled = False

    def cancel(self) -> None:
        # Only the event: superqt's `worker.quit()` abandons the generator without closing it, so
        # its cleanup (a her2core call unwinding, a `.part` file removed) would run after
        # `finished`. The worker's own loop closes the generator at its next step instead.
        self._cancel.set()
        self.cancelled = True


def start(gen_fn: Callable[..., Generator], *args,
          on_progress: Callable[[Progress], None] | None = None,
          on_done: Callable[[Any], None] | None = None,
          on_error: Callable[[BaseException], None] | None = None,
          on_finish: Callable[[], None] | None = None, **kwargs) -> Job:
    """Run `gen_fn(*args, cancel=event, **kwargs)`; callbacks run in the GUI thread.

    `on_done(result)` only when the job ran to the end; `on_finish()` always
    (done, failed or cancelled), for resetting buttons.
    """
    cancel = threading.Event()
    job = Job(cancel)

    def finish():
        job.running = False
        if on_finish is not None:
            on_finish()

    if not threaded():
        gen = gen_fn(*args, cancel=cancel, **kwargs)
        try:
            while True:
                item = next(gen)
                if on_progress is not None and isinstance(item, Progress):
                    on_progress(item)
                if cancel.is_set():
                    gen.close()
                    break
        except StopIteration as stop:
            if on_done is not None and not cancel.is_set():
                on_done(stop.value)
        except Cancelled:
            pass
        except Exception as exc:
            if on_error is None:
                raise
            on_error(exc)
        finally:
            finish()
        return job

    from napari.qt.threading import thread_worker

    def guarded(*a, **kw):
        gen = gen_fn(*a, **kw)
        try:
            while True:
                yield next(gen)
                if cancel.is_set():
                    gen.close()  # runs the job's cleanup here, before the worker says `finished`
                    return None
        except StopIteration as stop:
            return stop.value
        except Cancelled:  # the user's cancel, not a failure
            return None

    worker = thread_worker(guarded, start_thread=False)(*args, cancel=cancel, **kwargs)
    job.worker = worker
    if on_progress is not None:
        worker.yielded.connect(lambda item: on_progress(item) if isinstance(item, Progress) else None)
    if on_done is not None:
        worker.returned.connect(lambda value: None if cancel.is_set() else on_done(value))
    if on_error is not None:
        worker.errored.connect(lambda exc: None if isinstance(exc, Cancelled) else on_error(exc))
    worker.finished.connect(finish)
    worker.start()
    return job


def stepwise(fn: Callable[..., Any], *args, cancel: threading.Event | None = None,
             progress_kw: str = "progress", cancel_kw: str | None = None, text: str = "",
             **kwargs) -> Generator[Progress, None, Any]:
    """Generator over a callback-style call: yields Progress per callback, returns fn's result.

    Callbacks may be `(done, total)` or `(stage, done, total)`. When `cancel` is
    set, the call's next progress callback raises Cancelled, and a `cancel_kw`
    callable (her2core's `cancel=`) answers True, so the call unwinds in its own
    thread (her2core writes atomically: nothing half-written).
    """
    cancel = cancel or threading.Event()
    events: queue.Queue = queue.Queue()
    end = object()
    result: dict[str, Any] = {}

    def callback(*values):
        if cancel.is_set():
            raise Cancelled("cancelled")
        stage = text
        if len(values) == 3:
            stage, values = f"{text} {values[0]}".strip(), values[1:]
        events.put(Progress(int(values[0]), int(values[1]), stage))

    def run():
        try:
            extra = {progress_kw: callback}
            if cancel_kw:
                extra[cancel_kw] = cancel.is_set
            result["value"] = fn(*args, **extra, **kwargs)
        except KeyboardInterrupt:  # her2core's answer to cancel=
            result["error"] = Cancelled("cancelled")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generator
            result["error"] = exc
        finally:
            events.put(end)

    helper = threading.Thread(target=run, daemon=True, name="her2stain-job")
    helper.start()
    try:
        while True:
            item = events.get()
            if item is end:
                break
            yield item
    finally:
        if helper.is_alive():  # closed early: let the call see the cancel and unwind
            cancel.set()
            # ... and wait for it, so the job finishes only after its cleanup (no half-written
            # file is left when `finished` fires; the call stops at its next progress callback)
            helper.join(timeout=300)
    if "error" in result:
        raise result["error"]
    return result.get("value")
