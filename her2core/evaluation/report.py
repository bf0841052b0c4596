"""HTML reports of `her2 evaluate` and `her2 compare` folders (built with `util.html_report`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.util.html_report import Report

# ---- reports of `her2 evaluate` and `her2 compare` folders ---------------------------------

def _find(folder: Path, stem: str) -> Path | None:
    from her2core.evaluation.pairs import IMAGE_EXTS

    for ext in IMAGE_EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _here(eval_dir: Path, recorded: str) -> Path:
    """A folder set_metrics.json recorded, found again after the evaluation folder was moved:
    a recorded path inside a folder of the evaluation's name is taken relative to `eval_dir`."""
    p = Path(recorded)
    if p.exists() or eval_dir.name not in p.parts:
        return p
    rest = p.parts[len(p.parts) - 1 - p.parts[::-1].index(eval_dir.name) + 1:]
    return eval_dir.joinpath(*rest)


def add_evaluation(rep: Report, eval_dir, he_dir=None, n_examples: int = 4) -> None:
    """Sections for one evaluation folder: set metrics, per-image summary, best/worst tiles."""
    import pandas as pd

    eval_dir = Path(eval_dir)
    sm = json.loads((eval_dir / "set_metrics.json").read_text())
    df = pd.read_csv(eval_dir / "per_image.csv", dtype={"image": str})
    label = " / ".join(x for x in (sm.get("model"), sm.get("dataset")) if x) or eval_dir.name
    sec = rep.section(f"Evaluation: {label}")
    keys = ("n", "resolution", "mpp", "fid", "kid_mean", "kid_std", "her2_proxy_kappa",
            "her2_proxy_kappa_quadratic", "her2_proxy_agreement")
    sec.table({k: sm.get(k) for k in keys if k in sm})
    for n in sm.get("notes", []):
        sec.text(n, note=True)
    num = df.select_dtypes("number")
    sec.table(pd.DataFrame({"metric": num.columns, "mean": num.mean().values,
                            "sd": num.std().values, "min": num.min().values,
                            "max": num.max().values}))
    pred_dir, target_dir = _here(eval_dir, sm["pred_dir"]), _here(eval_dir, sm["target_dir"])
    he = Path(he_dir) if he_dir else (_here(eval_dir, sm["he_dir"]) if sm.get("he_dir") else None)
    order = df.sort_values("ssim")
    picks = [("best", r) for r in order.iloc[::-1].head(n_examples).itertuples()]
    picks += [("worst", r) for r in order.head(n_examples).itertuples()]
    rows, caps = [], []
    for kind, r in picks:
        rows.append([_find(he, r.image) if he else None, _find(pred_dir, r.image),
                     _find(target_dir, r.image)])
        caps.append(f"{kind}: {r.image} SSIM {r.ssim:.3f} PSNR {r.psnr:.1f}")
    g = rep.section(f"Examples (best and worst by SSIM): {label}")
    if he is None:
        g.text("H&E column empty: pass --he DIR (or evaluate with --he).", note=True)
    g.image_grid(rows, columns=["H&E", "virtual", "real"], captions=caps)
    s2 = rep.section(f"Settings: {label}")
    s2.table(sm.get("settings", {}))
    if (eval_dir / "calibration.json").is_file():
        add_calibration(rep, eval_dir, label)


def add_calibration(rep: Report, eval_dir, label: str = "") -> None:
    """Section for `her2 evaluate --confidence`: does the confidence map predict the error?"""
    cal = json.loads((Path(eval_dir) / "calibration.json").read_text())
    sp = cal["sparsification"]
    sec = rep.section(f"Confidence calibration: {label or Path(eval_dir).name}")
    sec.table({"tiles": cal["n_tiles"],
               "Spearman mean uncertainty vs 1 - SSIM": cal["spearman_uncertainty_vs_one_minus_ssim"],
               "Spearman mean uncertainty vs DAB OD MAE": cal["spearman_uncertainty_vs_dab_od_mae"],
               "AUSE": sp["ause"], "AUSE / mean error": sp["ause_relative"],
               "area random - curve (AURG)": sp["aurg"],
               "below random removal everywhere": sp["below_random_everywhere"],
               "method": cal.get("confidence", {}).get("method"),
               "K": cal.get("confidence", {}).get("samples")})
    if cal.get("figure"):
        sec.figure(Path(eval_dir) / cal["figure"],
                   caption=f"sparsification ({cal['pixel_error']}) and per-tile uncertainty")


def add_comparison(rep: Report, compare_dir) -> None:
    """Sections for a comparison folder: fixed effects, variances, notes, figures, set metrics."""
    import pandas as pd

    compare_dir = Path(compare_dir)
    summary = json.loads((compare_dir / "compare.json").read_text())
    from her2core.evaluation.figures import SIGNIFICANT_P

    sec = rep.section("Mixed-effects model")
    for m, f in summary.get("fits", {}).items():
        levels = ", ".join(f"{v} {k} levels" for k, v in f.get("levels", {}).items())
        sec.text(f"{m}: {f['formula']} (n = {f['n']}{', ' + levels if levels else ''}, "
                 f"converged: {f['converged']}; {f.get('engine', '')})")
    fixed = pd.read_csv(compare_dir / "mixed_effects.csv")
    if "p_value" in fixed:
        fixed["signif"] = np.where(fixed.p_value <= SIGNIFICANT_P, "*", "")
    sec.table(fixed)
    sec.text(f"df: Satterthwaite denominator degrees of freedom (as lmerTest); p from the t "
             f"distribution; * p ≤ {SIGNIFICANT_P:g}. Images are the tiles of a test set, "
             "crossed with models, frameworks and training datasets.", note=True)
    lrt = [{"metric": m, **t} for m, f in summary.get("fits", {}).items()
           for t in f.get("likelihood_ratio_tests", [])]
    if lrt:
        sec.text("Likelihood-ratio test of each term no other term contains (ML refits with and "
                 "without it, chi-square):", note=True)
        sec.table(lrt)
    sec.table(pd.read_csv(compare_dir / "random_effects.csv"))
    for n in summary.get("notes", []):
        sec.text(n, note=True)
    if summary.get("set_metrics"):
        rep.section("Set metrics").table(
            [{k: v for k, v in m.items() if k != "eval_dir"} for m in summary["set_metrics"]])
    figs = rep.section("Figures")
    for name, file in summary.get("figures", {}).items():
        figs.figure(compare_dir / file, caption=name)


def build_report(src_dir, out_path, he_dir=None, title: str | None = None) -> Path:
    """HTML report of an evaluation folder (set_metrics.json) or a comparison folder (compare.json)."""
    src = Path(src_dir)
    if (src / "compare.json").is_file():
        rep = Report(title or "HER2 virtual staining: comparison")
        add_comparison(rep, src)
    elif (src / "set_metrics.json").is_file() and (src / "per_image.csv").is_file():
        rep = Report(title or "HER2 virtual staining: evaluation")
        add_evaluation(rep, src, he_dir=he_dir)
    else:
        raise UserError(f"{src}: neither an evaluation (set_metrics.json + per_image.csv) nor a "
                        "comparison (compare.json) folder")
    return rep.write(out_path)
