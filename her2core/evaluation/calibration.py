"""Does the confidence map predict the real error? Per-tile rank correlation and sparsification.

* per tile: Spearman's rho of the tile's mean uncertainty with its error, 1 − SSIM (the
  references' SSIM, `pixel.ssim_batch`) and the DAB optical-density MAE (`pathology.dab_od`);
* per pixel: the sparsification curve — mean absolute RGB error (in [0, 1] units) of the pixels
  left after removing the fraction x most uncertain — against the oracle (removing the x with the
  largest error) and random removal (whose expected error is the overall mean, at every x);
  AUSE = area between the curve and its oracle (trapezoid over x in [0, 1)), also relative to the
  error at x = 0; AURG = area between random removal and the curve (> 0: better than chance).

Uncertainty here is `her2core.inference.confidence`'s `u` (std in [0, 1] units); confidence PNGs
are converted back with `uint8_to_uncertainty`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.inference.confidence import U_MAX

FRACTIONS = np.round(np.arange(0.0, 1.0, 0.02), 4)  # removed fraction, 0 .. 0.98
MAX_PIXELS = 4_000_000  # pixels kept (a fixed-seed random subset) for the sparsification curve


def spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(spearmanr(a[ok], b[ok]).statistic)


def auroc(labels, scores) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (Mann–Whitney, ties count ½)."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("auroc needs both classes")
    r = rankdata(np.asarray(scores, np.float64))
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _remaining_mean(sorted_desc_err: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Mean of what is left after dropping the first round(x·n) of an error array."""
    n = len(sorted_desc_err)
    tail = np.concatenate([np.cumsum(sorted_desc_err[::-1])[::-1], [0.0]])  # tail[i] = sum e[i:]
    drop = np.minimum(np.round(fractions * n).astype(int), n - 1)
    return tail[drop] / (n - drop)


def sparsification(uncertainty: np.ndarray, error: np.ndarray,
                   fractions: np.ndarray = FRACTIONS) -> dict:
    """Sparsification curve of per-pixel `error` ordered by `uncertainty`, its oracle, AUSE."""
    u = np.asarray(uncertainty, np.float64).ravel()
    e = np.asarray(error, np.float64).ravel()
    if u.shape != e.shape or u.size == 0:
        raise ValueError(f"uncertainty {u.shape} and error {e.shape} differ or are empty")
    # ties in u broken by a fixed random order, not by the error (that would favour the curve)
    tie = np.random.default_rng(0).random(u.size)
    by_u = e[np.lexsort((tie, -u))]
    curve = _remaining_mean(by_u, fractions)
    oracle = _remaining_mean(np.sort(e)[::-1], fractions)
    random = np.full_like(curve, e.mean())
    x = np.append(fractions, 1.0)
    area = lambda y: float(np.trapezoid(np.append(y, y[-1]), x))
    ause = area(curve) - area(oracle)
    return {"fractions": fractions.tolist(), "curve": curve.tolist(), "oracle": oracle.tolist(),
            "random": random.tolist(), "ause": ause,
            "ause_relative": ause / e.mean() if e.mean() > 0 else None,
            "aurg": area(random) - area(curve),
            "below_random_everywhere": bool(np.all(curve[1:] < random[1:])),
            "pixels": int(e.size)}


def calibrate(tiles, *, n_tiles: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """Calibration over `tiles`, an iterable of (name, uncertainty (H, W), virtual RGB uint8,
    real RGB uint8), streamed: (summary dict, per-tile rows). Each tile gives at most
    MAX_PIXELS / n_tiles pixels (a fixed-seed random subset) to the sparsification curve."""
    from her2core.evaluation.pixel import ssim_batch
    from her2core.stain import dab_od

    rng = np.random.default_rng(seed)
    rows, us, es = [], [], []
    for name, u, pred, target in tiles:
        u, pred, target = np.asarray(u, np.float32), np.asarray(pred), np.asarray(target)
        if u.shape != pred.shape[:2] or pred.shape != target.shape:
            raise UserError(f"{name}: confidence map {u.shape} does not match the tiles "
                            f"{pred.shape[:2]} / {target.shape[:2]}")
        ssim = float(ssim_batch(pred[None], target[None], device="cpu")[0])
        dab_err = float(np.abs(dab_od(pred).astype(np.float64) - dab_od(target)).mean())
        mean_u = float(u.mean())
        rows.append({"image": name, "mean_uncertainty": mean_u,
                     "mean_confidence": float(1 - min(mean_u / U_MAX, 1)),
                     "one_minus_ssim": 1 - ssim, "dab_od_mae": dab_err})
        err = np.abs(pred.astype(np.float32) - target.astype(np.float32)).mean(axis=-1) / 255.0
        k = min(u.size, max(1, MAX_PIXELS // max(1, n_tiles)))
        pick = rng.choice(u.size, k, replace=False) if k < u.size else slice(None)
        us.append(u.ravel()[pick])
        es.append(err.ravel()[pick])
    if len(rows) < 3:
        raise UserError("calibration needs at least 3 tiles")
    u_tile = np.array([r["mean_uncertainty"] for r in rows])
    summary = {
        "n_tiles": len(rows),
        "spearman_uncertainty_vs_one_minus_ssim":
            spearman(u_tile, [r["one_minus_ssim"] for r in rows]),
        "spearman_uncertainty_vs_dab_od_mae": spearman(u_tile, [r["dab_od_mae"] for r in rows]),
        "pixel_error": "mean absolute RGB error in [0,1] units",
        "sparsification": sparsification(np.concatenate(us), np.concatenate(es)),
    }
    return summary, rows


def calibrate_folders(pred_dir, target_dir, confidence_dir, out_dir, settings: dict,
                      seed: int = 0) -> dict:
    """calibration.* in `out_dir` for virtual tiles, real tiles and confidence PNGs (by name)."""
    from her2core.evaluation import pairs as pairing

    pairs = pairing.pair_folders(pred_dir, target_dir)
    pairing.check_pairs(pairs)

    def tiles():
        for name, p, t in pairs:
            pred, target = pairing.read_pair(p, t)
            yield name, read_confidence_maps(confidence_dir, [name])[0], pred, target

    summary, rows = calibrate(tiles(), n_tiles=len(pairs), seed=seed)
    return write_calibration(out_dir, summary, rows, settings)


def figure(summary: dict, path: Path, rows: list[dict] | None = None) -> str:
    """Sparsification vs oracle vs random, and per-tile uncertainty vs 1 − SSIM."""
    from her2core.evaluation.figures import _plt, _save

    plt = _plt()
    sp = summary["sparsification"]
    fig, axes = plt.subplots(1, 2 if rows else 1, figsize=(8.5 if rows else 4.4, 3.4), squeeze=False)
    ax = axes[0, 0]
    x = 100 * np.asarray(sp["fractions"])
    ax.plot(x, sp["curve"], label=f"by uncertainty (AUSE {sp['ause']:.4f})", color="C0")
    ax.plot(x, sp["oracle"], label="oracle (by error)", color="C2", ls="--")
    ax.plot(x, sp["random"], label="random removal", color="0.5", ls=":")
    ax.set_xlabel("most uncertain pixels removed (%)")
    ax.set_ylabel("mean |error| of the rest")
    ax.set_title("sparsification")
    ax.legend(fontsize=7, frameon=False)
    if rows:
        ax = axes[0, 1]
        ax.scatter([r["mean_uncertainty"] for r in rows], [r["one_minus_ssim"] for r in rows], s=8)
        rho = summary.get("spearman_uncertainty_vs_one_minus_ssim")
        ax.set_title(f"per tile (Spearman {rho:.2f})" if rho is not None else "per tile")
        ax.set_xlabel("mean uncertainty (std, [0,1])")
        ax.set_ylabel("1 − SSIM")
    return _save(fig, Path(path))


def write_calibration(out_dir, summary: dict, rows: list[dict], settings: dict) -> dict:
    """calibration.json, calibration_tiles.csv and calibration.png in `out_dir` (atomic)."""
    import pandas as pd

    from her2core.util.atomic import atomic_path, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "calibration_tiles.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    summary = {**summary, "confidence": settings,
               "figure": figure(summary, out / "calibration.png", rows)}
    write_json(out / "calibration.json", summary)
    return summary


def read_confidence_maps(folder, names: list[str]) -> np.ndarray:
    """Uncertainty (N, H, W) from the confidence PNGs `her2 translate --tiles --confidence` wrote."""
    from PIL import Image

    from her2core.inference.confidence import uint8_to_uncertainty

    folder = Path(folder)
    maps = []
    for n in names:
        p = folder / f"{n}.png"
        if not p.is_file():
            raise UserError(f"{p}: no confidence map for tile {n}; run `her2 translate --tiles "
                            "--confidence` for the same tiles")
        maps.append(uint8_to_uncertainty(np.asarray(Image.open(p).convert("L"))))
    return np.stack(maps)
