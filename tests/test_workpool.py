"""WorkPool: one budget of threads, urgent lanes first, FIFO within a lane, no deadlock when a
task waits for one queued before it (what the pyramid's lower levels do)."""

from __future__ import annotations

import threading
import time

import pytest

from her2core.util.workpool import WorkPool


def test_urgent_lane_runs_before_earlier_queued_later_lane():
    order = []
    gate, started = threading.Event(), threading.Event()
    with WorkPool(1, "t") as pool:
        pool.submit(lambda: started.set() or gate.wait())  # holds the one thread
        assert started.wait(10)
        later, urgent = pool.lane(1), pool.lane(0)
        futs = [later.submit(order.append, f"read{i}") for i in range(3)]
        futs += [urgent.submit(order.append, f"blend{i}") for i in range(3)]
        gate.set()
        for f in futs:
            f.result(timeout=10)
    assert order == ["blend0", "blend1", "blend2", "read0", "read1", "read2"]


def test_task_waiting_on_an_earlier_task_of_its_lane_does_not_deadlock_on_one_thread():
    with WorkPool(1, "t") as pool:
        lane = pool.lane(0)
        first = lane.submit(lambda: 21)
        second = lane.submit(lambda: first.result() * 2)
        assert second.result(timeout=10) == 42


def test_work_runs_on_exactly_the_budgeted_threads():
    seen, busy, peak = set(), [0], [0]
    lock = threading.Lock()

    def job():
        with lock:
            seen.add(threading.get_ident())
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        time.sleep(0.01)
        with lock:
            busy[0] -= 1

    with WorkPool(3, "t") as pool:
        for f in [pool.submit(job) for _ in range(30)]:
            f.result(timeout=10)
    assert len(seen) == 3 and peak[0] == 3


def test_exceptions_reach_the_caller_and_the_pool_goes_on():
    with WorkPool(2, "t") as pool:
        bad = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            bad.result(timeout=10)
        assert pool.submit(lambda: "still working").result(timeout=10) == "still working"


def test_shutdown_with_cancel_drops_queued_tasks_and_refuses_new_ones():
    gate, started = threading.Event(), threading.Event()
    pool = WorkPool(1, "t")
    running = pool.submit(lambda: started.set() or gate.wait())
    assert started.wait(10)
    queued = [pool.submit(lambda: "never") for _ in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)  # the one thread is still held by the gate
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    gate.set()
    pool.shutdown(wait=True)
    assert running.result(timeout=10) is True
    with pytest.raises(ValueError):
        WorkPool(0)
