"""Shared test settings: few threads, offline, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _qt6_binding() -> str | None:
    """The Qt 6 binding the napari tests run on (napari 0.9 deprecates PyQt5): PyQt6 (what the
    `napari` extra installs), else PySide6 (the `pyside6` extra). qtpy (napari) honours QT_API
    and pytest-qt PYTEST_QT_API: both are set, so the two never load different bindings."""
    import importlib.util

    for api, module in (("pyqt6", "PyQt6"), ("pyside6", "PySide6")):
        if importlib.util.find_spec(module) is not None:
            return api
    return None


if "QT_API" not in os.environ and _qt6_binding():
    os.environ["QT_API"] = _qt6_binding()
if os.environ.get("QT_API", "").lower() in ("pyqt5", "pyqt6", "pyside6"):
    os.environ.setdefault("PYTEST_QT_API", os.environ["QT_API"].lower())

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", "2")))
    # The first optimiser imports torch._dynamo, which loads triton's LLVM; loaded after a
    # napari canvas has put Mesa's llvmpipe (also LLVM) in the process, that segfaults (with
    # PyQt5 and Qt 6 alike, e.g. test_napari_widgets.py run on its own). Load it first.
    import torch._dynamo


@pytest.fixture
def stop_at():
    """`stop_at(n)`: a her2core Progress that asks to stop once any stage reports `done >= n`
    (the job then raises `Cancelled` at that report, as when a user presses Cancel)."""
    from her2core.util.progress import Progress

    def make(n: int) -> Progress:
        progress = Progress(lambda _stage, done, _total: progress.stop() if done >= n else None)
        return progress

    return make
