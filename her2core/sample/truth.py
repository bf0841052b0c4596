"""Ground truth of a sample case (truth.json): where each HER2 point lies on the H&E slide.

Direction: the truth maps **HER2 level-0 (x, y) -> H&E level-0 (x, y)**:

    he_xy = M @ (x, y, 1) + D(x, y)

with M = truth["her2_to_he"]["matrix"] (3x3, acting on (x, y, 1) columns) and D the
displacement field truth["deformation"] evaluated at the HER2 point: node (i, j) of
the "dx"/"dy" grids sits at HER2 (origin_x + j * spacing, origin_y + i * spacing);
bilinear between nodes, clamped to the edge nodes outside. Coordinates are
continuous level-0 pixels with pixel (col, row) covering [col, col+1) x [row, row+1).
`he_to_her2_xy` inverts it (fixed point, < 1e-6 px). These are exactly the functions
the renderer used, so a registration's error can be measured against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.sample import warp

SCHEMA = "her2core.sample.truth/1"
_REQUIRED = ("case_id", "her2_score", "section", "mpp", "her2_to_he", "deformation", "artefacts")


def load_truth(path) -> dict:
    """Read and check a truth.json; a UserError names the file when it is missing or malformed."""
    path = Path(path)
    if path.is_dir():
        path = path / "truth.json"
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: truth file not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable truth JSON ({exc})") from None
    missing = [k for k in _REQUIRED if k not in truth] if isinstance(truth, dict) else list(_REQUIRED)
    if missing:
        raise UserError(f"{path}: truth JSON lacks {', '.join(missing)}; write it with `her2 sample`")
    m = np.asarray(truth["her2_to_he"].get("matrix"), float)
    if m.shape != (3, 3):
        raise UserError(f"{path}: her2_to_he.matrix must be 3x3, got shape {m.shape}")
    return truth


def _parts(truth: dict) -> tuple[np.ndarray, warp.DisplacementGrid]:
    return (np.asarray(truth["her2_to_he"]["matrix"], float),
            warp.DisplacementGrid.from_json(truth["deformation"]))


def her2_to_he_xy(truth: dict, xy) -> np.ndarray:
    """HER2 level-0 (x, y) points (N, 2) -> H&E level-0 (x, y) (N, 2), as rendered."""
    m, grid = _parts(truth)
    return warp.her2_to_he(m, grid, xy)


def he_to_her2_xy(truth: dict, xy) -> np.ndarray:
    """H&E level-0 (x, y) points (N, 2) -> HER2 level-0 (x, y) (N, 2): the inverse mapping."""
    m, grid = _parts(truth)
    return warp.he_to_her2(m, grid, xy)


def her2_in_he_frame(truth: dict, her2_rgb: np.ndarray, box_xy: tuple[int, int, int, int]) -> np.ndarray:
    """The HER2 image (level 0, (H, W, 3)) resampled onto H&E pixels of `box_xy` (x0, y0, x1, y1).

    Ground-truth "unwarping": H&E pixel centre q -> HER2 point he_to_her2(q) -> bilinear
    sample. Outside the HER2 image reads white. Used to check that a pair really aligns.
    """
    from scipy.ndimage import map_coordinates

    x0, y0, x1, y1 = (int(v) for v in box_xy)
    xs, ys = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
    q = np.stack([xs.ravel(), ys.ravel()], axis=1)
    p = he_to_her2_xy(truth, q)
    coords = [p[:, 1] - 0.5, p[:, 0] - 0.5]
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    for c in range(3):
        v = map_coordinates(her2_rgb[..., c].astype(np.float32), coords, order=1, mode="constant", cval=255.0)
        out[..., c] = np.clip(np.rint(v), 0, 255).reshape(y1 - y0, x1 - x0)
    return out
