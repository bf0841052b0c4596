"""One tqdm bar per named stage or case, for core functions that report `progress(name, i, n)`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def named_bars(unit: str) -> Iterator[Callable[[str, int, int], None]]:
    """Yields `progress(name, i, n)`; each new name opens its own bar; all close on exit."""
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}

    def progress(name: str, i: int, n: int) -> None:
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=n, desc=name, unit=unit, leave=False)
        bar.n = i
        bar.refresh()

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()
