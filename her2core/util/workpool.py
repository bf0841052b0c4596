"""One budget of worker threads for a job whose stages compete for the cores.

    with WorkPool(4, "her2-work") as pool:
        urgent, later = pool.lane(0), pool.lane(1)
        fut = later.submit(read_tile, k, j)          # a concurrent.futures.Future

Why not a ThreadPoolExecutor per stage: then `workers=1` ran four stages on four threads
(1.5 cores busy, so no scaling was visible from 1 to 2 workers), and a stage that fell
behind could not borrow another's threads. Here every stage draws on the same `workers`
threads, and a lane's priority says which waiting task runs first: slide inference gives
blending and pyramid encoding (the backlog behind the output) precedence over reading
ahead, so the pyramid keeps pace with the model and is finished soon after the last tile.

Within a lane tasks start in submission order (FIFO), so a task may wait for the result of
one submitted before it in its own lane or a more urgent one: that task is running or done.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import Future
from typing import Self


class WorkPool:
    """`workers` threads running submitted calls, most urgent lane (lowest number) first."""

    def __init__(self, workers: int, name: str = "work"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._heap: list = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{i}", daemon=True)
                         for i in range(int(workers))]
        for t in self._threads:
            t.start()

    def lane(self, priority: int) -> _Lane:
        """A submit-only view whose tasks carry `priority` (0 runs before 1)."""
        return _Lane(self, int(priority))

    def submit(self, fn, /, *args, priority: int = 0, **kwargs) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("submit after shutdown")
            heapq.heappush(self._heap, (priority, next(self._order), fut, fn, args, kwargs))
            self._cv.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if not self._heap:
                    return
                _, _, fut, fn, args, kwargs = heapq.heappop(self._heap)
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
                    fut.set_exception(exc)
            del fut, fn, args, kwargs  # the last task's data is not kept alive while idle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; with `cancel_futures` the queued ones are cancelled; `wait`: join."""
        with self._cv:
            self._closed = True
            if cancel_futures:
                for item in self._heap:
                    item[2].cancel()
                self._heap.clear()
            self._cv.notify_all()
        if wait:
            for t in self._threads:
                t.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(wait=True, cancel_futures=exc[0] is not None)


class _Lane:
    """`submit` into a `WorkPool` at one priority (what a stage is handed as its executor)."""

    def __init__(self, pool: WorkPool, priority: int):
        self._pool, self.priority = pool, priority

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self._pool.submit(fn, *args, priority=self.priority, **kwargs)
