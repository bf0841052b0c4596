"""The job protocol of the plugin: a cancelled job reports `finished` only after its own cleanup
and that of the her2core call it wraps (superqt's own abort leaves the generator unclosed, so a
`.part` file could still be on disk when the widget says the job ended)."""

import threading
import time

import pytest

pytest.importorskip("napari")

from napari_her2stain import _jobs

pytestmark = [pytest.mark.gui]


def _run(job_fn, qtbot, cleaned):
    """Start `job_fn` in a napari thread_worker, cancel it at its third progress step; what `on_finish` saw of the cleanup."""
    done, seen_at_finish, holder = [], [], {}

    def on_progress(p):
        if p.done >= 2:
            holder["job"].cancel()

    _jobs.set_threaded(True)
    try:
        holder["job"] = job = _jobs.start(job_fn, on_done=done.append, on_progress=on_progress,
                                          on_finish=lambda: seen_at_finish.append(cleaned.is_set()))
        qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    finally:
        _jobs.set_threaded(None)
    return job, done, seen_at_finish


def test_cancelled_generator_is_closed_before_finished(qtbot):
    cleaned = threading.Event()

    def job_fn(cancel):
        try:
            for k in range(1000):
                yield _jobs.Progress(k, 1000)
                time.sleep(0.01)
            return "done"
        finally:
            time.sleep(0.3)  # e.g. removing a half-written .part pyramid
            cleaned.set()

    job, done, seen_at_finish = _run(job_fn, qtbot, cleaned)
    assert job.cancelled and done == []
    assert seen_at_finish == [True]


def _slow_call(progress, cleaned):
    """A her2core-style call: progress callbacks, and a slow cleanup when it is cancelled."""
    try:
        for k in range(1000):
            progress(k, 1000)
            time.sleep(0.01)
        return "done"
    finally:
        time.sleep(0.3)
        cleaned.set()


def test_cancelled_stepwise_call_unwinds_before_finished(qtbot):
    cleaned = threading.Event()

    def job_fn(cancel):
        return (yield from _jobs.stepwise(_slow_call, cancel=cancel, cleaned=cleaned))

    job, done, seen_at_finish = _run(job_fn, qtbot, cleaned)
    assert job.cancelled and done == []
    assert seen_at_finish == [True]
