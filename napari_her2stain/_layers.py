"""Conventions shared by the reader and the widgets: layer roles, scale, region reads.

World coordinates in the viewer are microns, (row, col). Every layer the plugin
adds carries `metadata["her2stain"]` with its `role` ("he", "her2", "virtual",
"residual", "dab_diff", ...), the slide `path` when it came from a file, and the
level-0 `mpp`. Widgets find their inputs by role, never by layer name, so users
may rename layers freely.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KEY = "her2stain"

ROLE_HE = "he"
ROLE_HER2 = "her2"
ROLE_VIRTUAL = "virtual"
ROLE_ROIS = "rois"
ROLE_CONFIDENCE = "confidence"  # `her2 translate --confidence`: one channel, 255 = sure

#: World units of every layer the plugin adds (scale is microns per pixel).
UNITS = ("µm", "µm")


def meta(role: str, mpp: float | None, path=None, **extra) -> dict[str, Any]:
    """The metadata dict a plugin layer carries."""
    info = {"role": role, "mpp": None if mpp is None else float(mpp),
            "path": None if path is None else str(path)}
    info.update(extra)
    return {KEY: info}


def info(layer) -> dict[str, Any]:
    return layer.metadata.get(KEY, {}) if hasattr(layer, "metadata") else {}


def role_of(layer) -> str | None:
    return info(layer).get("role")


def layers_with_role(viewer, role: str) -> list:
    return [ly for ly in viewer.layers if role_of(ly) == role]


def first_with_role(viewer, role: str):
    found = layers_with_role(viewer, role)
    return found[-1] if found else None


def level0(layer):
    """The full-resolution array of an image layer (lazy for slides)."""
    return layer.data[0] if layer.multiscale else layer.data


def layer_shape_rc(layer) -> tuple[int, int]:
    a = level0(layer)
    return int(a.shape[0]), int(a.shape[1])


def read_region_rc(layer, r0: int, c0: int, r1: int, c1: int, fill: int = 255) -> np.ndarray:
    """RGB uint8 of level-0 rows r0:r1, cols c0:c1 of `layer`; outside the image is `fill`.

    Works the same for lazy slide layers (only the touched tiles are read) and
    in-memory arrays, so widgets need not know where a layer came from.
    """
    a = level0(layer)
    h, w = int(a.shape[0]), int(a.shape[1])
    out = np.full((r1 - r0, c1 - c0, 3), fill, dtype=np.uint8)
    rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if rr1 > rr0 and cc1 > cc0:
        block = np.asarray(a[rr0:rr1, cc0:cc1])
        if block.ndim == 2:
            block = np.repeat(block[..., None], 3, axis=2)
        out[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = block[..., :3]
    return out


def world_to_data_rc(layer, world_rc) -> np.ndarray:
    """World (µm) (row, col) points -> level-0 data (row, col) of `layer` (scale/translate/affine)."""
    pts = np.atleast_2d(np.asarray(world_rc, dtype=float))
    return np.array([layer.world_to_data(p) for p in pts])[:, -2:]


def data_to_world_rc(layer, data_rc) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(data_rc, dtype=float))
    return np.array([layer.data_to_world(p) for p in pts])[:, -2:]
