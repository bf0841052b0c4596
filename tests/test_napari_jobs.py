"""The job protocol of the plugin: a her2core-style function (`progress: Progress`) runs as it is in
a worker; its reports reach the GUI thread; a cancel makes it raise `Cancelled` at its next report,
and the job reports `finished` only after the call's own cleanup ran (superqt's own abort would
leave the call running, so a `.part` file could still be on disk when the widget says the job ended)."""

import threading
import time

import pytest

pytest.importorskip("napari")

from her2core.util.progress import ensure
from napari_her2stain import _jobs

pytestmark = [pytest.mark.gui]


def _slow_call(n, cleaned, progress=None):
    """A her2core-style call: reports per unit, and a slow cleanup when it is cancelled."""
    p = ensure(progress)
    try:
        for k in range(n):
            time.sleep(0.01)
            p.update("tiles", k + 1, n)
        return "done"
    finally:
        time.sleep(0.3)  # e.g. removing a half-written .part pyramid
        cleaned.set()


def _run_threaded(qtbot, n, cancel_at=None):
    """Start `_slow_call` in a worker; cancel it at report `cancel_at`; what the listeners saw."""
    cleaned = threading.Event()
    seen, done, errors, at_finish, holder = [], [], [], [], {}

    def on_progress(stage, k, total):
        seen.append((stage, k, total, threading.get_ident()))
        if cancel_at is not None and k >= cancel_at:
            holder["job"].cancel()

    _jobs.set_threaded(True)
    try:
        holder["job"] = job = _jobs.start(_slow_call, n, cleaned, on_progress=on_progress,
                                          on_done=done.append, on_error=errors.append,
                                          on_finish=lambda: at_finish.append(cleaned.is_set()))
        assert job.worker is not None
        qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    finally:
        _jobs.set_threaded(None)
    return job, seen, done, errors, at_finish


def test_reports_reach_the_gui_thread_and_the_result_arrives(qtbot):
    job, seen, done, errors, at_finish = _run_threaded(qtbot, 20)
    assert done == ["done"] and errors == [] and at_finish == [True] and not job.cancelled
    assert [k for _, k, _, _ in seen] == list(range(1, 21))
    assert {(stage, total) for stage, _, total, _ in seen} == {("tiles", 20)}
    assert {tid for *_, tid in seen} == {threading.get_ident()}  # the GUI (test) thread


def test_cancelled_call_unwinds_before_finished(qtbot):
    job, seen, done, errors, at_finish = _run_threaded(qtbot, 1000, cancel_at=2)
    assert job.cancelled and done == [] and errors == []
    assert at_finish == [True]  # the call's cleanup had run when `finished` fired
    assert 2 <= seen[-1][1] < 1000  # stopped at a report soon after the cancel


def test_a_failing_call_reaches_on_error_and_still_finishes(qtbot):
    def broken(progress=None):
        ensure(progress).update("x", 1, 2)
        raise ValueError("bad tile")

    errors, finished = [], []
    _jobs.set_threaded(True)
    try:
        job = _jobs.start(broken, on_error=errors.append, on_finish=lambda: finished.append(1))
        qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    finally:
        _jobs.set_threaded(None)
    assert [str(e) for e in errors] == ["bad tile"] and finished == [1]


def test_inline_jobs_run_in_the_callers_thread():
    cleaned, seen, done, errors = threading.Event(), [], [], []
    _jobs.set_threaded(False)
    try:
        job = _jobs.start(_slow_call, 3, cleaned, on_progress=lambda *r: seen.append(r), on_done=done.append)
        assert job.worker is None and not job.running and done == ["done"]
        assert seen == [("tiles", k, 3) for k in (1, 2, 3)]

        def broken(progress=None):
            raise ValueError("bad tile")

        _jobs.start(broken, on_error=errors.append)
        assert [str(e) for e in errors] == ["bad tile"]
        with pytest.raises(ValueError):  # no on_error: the caller sees the failure
            _jobs.start(broken)
    finally:
        _jobs.set_threaded(None)
