"""A small paired tile dataset rendered straight from the tissue model (no slides, no registration).

Why: the model-training tests and the demo need aligned H&E/HER2 tile pairs in
seconds. 'same' pairs are pixel-aligned renderings of the same cells (HER2match);
'consecutive' pairs take the HER2 tile from a neighbouring section (cells
re-drawn, a small shift and smooth deformation, a stain shift), as in BCI.
The HER2 tile is a learnable function of the H&E tile: the counterstain is the
same nuclei's hematoxylin, and brown membrane DAB sits on tumour cells (pale
round nuclei in eosinophilic islands) with a strength set by the case score.

Layout (HER2match): HE_20x/{train,val,test}/NAME.png, IHC_20x/{...}/NAME.png and
manifest.csv; splits are by case.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.sample.render import StainStyle, he_rgb, her2_rgb
from her2core.sample.tissue import TissueModel
from her2core.sample.warp import DisplacementGrid, random_grid, resample
from her2core.util.atomic import write_png, write_text
from her2core.util.dataset_meta import write_dataset_meta
from her2core.util.progress import Progress, ensure

MANIFEST_COLUMNS = ("name", "case", "her2_score", "split", "mpp", "tile", "mode",
                    "x_um", "y_um", "he_path", "ihc_path")
HE_DIR, IHC_DIR = "HE_20x", "IHC_20x"
SPLITS = ("train", "val", "test")


def case_splits(case_ids: list[str], seed: int) -> dict[str, str]:
    """Case -> split, by case, each split non-empty (needs >= 3 cases); ~20 % val, ~20 % test."""
    n = len(case_ids)
    if n < 3:
        raise UserError(f"cases={n}: a dataset split by case needs at least 3 cases; use --cases 3 or more")
    order = np.random.default_rng([int(seed), 31337]).permutation(n)
    n_test = max(1, round(0.2 * n))
    n_val = max(1, round(0.2 * n))
    out = {}
    for rank, i in enumerate(order):
        out[case_ids[i]] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
    return out


def render_case_tiles(case_seed: int, her2_score: int, *, n_tiles: int, tile: int, mpp: float,
                      mode: str) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """[(he_rgb, her2_rgb, x_um, y_um)] for one case: tiles cut from one rendered canvas."""
    cols = int(np.ceil(np.sqrt(n_tiles)))
    rows = int(np.ceil(n_tiles / cols))
    margin_px = int(np.ceil(12.0 / mpp))          # room for the consecutive-section shift
    w_px, h_px = cols * tile + 2 * margin_px, rows * tile + 2 * margin_px
    w_um, h_um = w_px * mpp, h_px * mpp
    model = TissueModel(0.0, 0.0, w_um, h_um, seed=case_seed, her2_score=her2_score,
                        tissue_cover=1.0, tumour_cover=0.5, tissue_scale_um=400.0,
                        island_scale_um=max(20.0, 0.08 * min(w_um, h_um)))
    he_layers = model.render(0.0, 0.0, w_px, h_px, mpp, section=0)
    he = he_rgb(he_layers["h"], he_layers["e"])
    if mode == "same":
        ihc = her2_rgb(he_layers["h"], he_layers["dab"])
    else:
        rng = np.random.default_rng([case_seed, 555])
        nxt = model.render(0.0, 0.0, w_px, h_px, mpp, section=1)
        shift = rng.uniform(-4.0, 4.0, 2) / mpp             # a few microns
        grid = random_grid(rng, (w_px, h_px), amplitude_px=2.0 / mpp, spacing=max(16.0, 24.0 / mpp))
        grid = DisplacementGrid(grid.origin_xy, grid.spacing, grid.dx + shift[0], grid.dy + shift[1])
        h2, d2 = resample([nxt["h"], nxt["dab"]], (0.0, 0.0), np.eye(3), grid, w_px, h_px)
        ihc = her2_rgb(h2, d2, StainStyle.shifted(rng))
    out = []
    for k in range(n_tiles):
        r, c = divmod(k, cols)
        y0, x0 = margin_px + r * tile, margin_px + c * tile
        out.append((np.ascontiguousarray(he[y0:y0 + tile, x0:x0 + tile]),
                    np.ascontiguousarray(ihc[y0:y0 + tile, x0:x0 + tile]), x0 * mpp, y0 * mpp))
    return out


def write_tile_dataset(out_dir, *, cases: int = 4, tile: int = 128, mpp: float = 0.5,
                       tiles_per_case: int = 10, seed: int = 0, mode: str = "same",
                       scores=(0, 1, 2, 3), progress: Progress | None = None) -> Path:
    """Write a paired tile dataset (HER2match layout + manifest.csv) to `out_dir`; returns it.

    Case i gets HER2 score scores[i % len(scores)]. Deterministic by `seed`.
    `progress` hears `("sample tiles", cases done, cases)` per case.
    """
    if mode not in ("same", "consecutive"):
        raise UserError(f"mode={mode!r}: use 'same' or 'consecutive'")
    if tile < 16 or tiles_per_case < 1 or mpp <= 0:
        raise UserError(f"tile={tile}, tiles_per_case={tiles_per_case}, mpp={mpp}: "
                        "need tile >= 16, tiles_per_case >= 1, mpp > 0")
    scores = [int(s) for s in scores]
    if not scores or any(s not in (0, 1, 2, 3) for s in scores):
        raise UserError(f"scores={scores}: HER2 scores must be among 0, 1, 2, 3")
    out = Path(out_dir)
    case_ids = [f"case{i:02d}" for i in range(cases)]
    splits = case_splits(case_ids, seed)
    rows, p = [], ensure(progress)
    for i, case in enumerate(case_ids):
        score = scores[i % len(scores)]
        case_seed = int(np.random.default_rng([int(seed), 2024, i]).integers(2**31))
        tiles = render_case_tiles(case_seed, score, n_tiles=tiles_per_case, tile=tile, mpp=mpp, mode=mode)
        split = splits[case]
        for k, (he, ihc, x_um, y_um) in enumerate(tiles):
            name = f"{case}_{k:03d}"
            he_rel = f"{HE_DIR}/{split}/{name}.png"
            ihc_rel = f"{IHC_DIR}/{split}/{name}.png"
            write_png(out / he_rel, he)
            write_png(out / ihc_rel, ihc)
            rows.append({"name": name, "case": case, "her2_score": score, "split": split, "mpp": mpp,
                         "tile": tile, "mode": mode, "x_um": round(x_um, 4), "y_um": round(y_um, 4),
                         "he_path": he_rel, "ihc_path": ihc_rel})
        p.update("sample tiles", i + 1, cases)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "manifest.csv", buf.getvalue())
    write_dataset_meta(out, generator="her2core.sample.write_tile_dataset", mpp=mpp, tile_px=tile,
                       cases=cases, tiles_per_case=tiles_per_case, seed=seed, mode=mode,
                       scores=scores, splits=splits)
    return out
