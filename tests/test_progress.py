"""The one progress/cancel protocol (`her2core.util.progress`)."""

import threading

import pytest

from her2core.util.progress import Cancelled, Progress, ensure, tqdm_bars


def test_reports_reach_the_listener_and_stop_raises_at_the_next_report():
    seen = []
    p = Progress(lambda s, d, t: seen.append((s, d, t)))
    p.update("tiles", 1, 3)
    p.stop()
    with pytest.raises(Cancelled):
        p.update("tiles", 2, 3)
    assert seen == [("tiles", 1, 3), ("tiles", 2, 3)]
    with pytest.raises(Cancelled):
        p.check()


def test_should_stop_is_asked_and_prefixed_children_share_listener_and_cancel():
    flag = threading.Event()
    seen = []
    p = Progress(lambda s, d, t: seen.append(s), should_stop=flag.is_set)
    child = p.within("case03")
    child.update("register", 0, 1)
    assert seen == ["case03: register"] and not child.cancelled
    flag.set()
    assert child.cancelled
    with pytest.raises(Cancelled):
        child.update("register", 1, 1)


def test_silent_default_and_tqdm_bars_from_threads():
    ensure(None).update("x", 1, 1)  # silent, never cancels
    with tqdm_bars("tile") as p:
        threads = [threading.Thread(target=lambda i=i: [p.update(f"s{i}", k, 50) for k in range(50)])
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not p.cancelled
