"""Compare evaluations: stack per_image.csv tables and fit a linear mixed-effects model.

For each metric (ssim, ms_ssim, psnr, lpips; those present) the study's model
    metric ~ framework * dataset + (1|model) + (1|image)
is fitted with statsmodels MixedLM (REML). model and image are *crossed* random
effects, so they are variance components of a single all-ones group
(vc_formula; re_formula "0"), the statsmodels way to write lme4's (1|a) + (1|b).
An image is identified by dataset + file name (the same tile across models).
Factors with a single level are dropped from the formula and the drop is written
to the notes (one dataset, one framework, one model, ...).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from her2core.errors import UserError

METRICS = ("ssim", "ms_ssim", "psnr", "lpips")
DIST_METRICS = ("ssim", "psnr", "lpips")
REQUIRED = ("image", "model", "framework", "dataset")


def load_tables(eval_dirs) -> pd.DataFrame:  # noqa: F821
    """Stack per_image.csv of every evaluation folder; NaN or missing columns are user errors."""
    import pandas as pd

    frames = []
    if not eval_dirs:
        raise UserError("compare: give at least one evaluation folder")
    for d in eval_dirs:
        f = Path(d) / "per_image.csv" if Path(d).is_dir() else Path(d)
        if not f.is_file():
            raise UserError(f"{f}: no per_image.csv here; run `her2 evaluate` first")
        df = pd.read_csv(f, dtype={"image": str, "model": str, "framework": str, "dataset": str},
                         keep_default_na=True)
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            raise UserError(f"{f}: missing column(s) {', '.join(missing)}")
        for c in REQUIRED[1:]:
            df[c] = df[c].fillna("")
        for m in METRICS:
            if m in df.columns:
                bad = df.index[~np.isfinite(pd.to_numeric(df[m], errors="coerce"))]
                if len(bad):
                    imgs = ", ".join(df.loc[bad[:5], "image"].astype(str))
                    raise UserError(f"{f}: {len(bad)} non-finite (NaN/inf) value(s) in column '{m}' "
                                    f"(images {imgs}); fix or remove those rows")
        df["source"] = str(f)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(["model", "dataset", "image"])
    if dup.any():
        r = df[dup].iloc[0]
        raise UserError(f"{r.source}: image {r.image} of model '{r.model}' on '{r.dataset}' appears "
                        "twice; give each evaluation once")
    df["image_id"] = df["dataset"].astype(str) + "/" + df["image"].astype(str)
    return df


def formula_for(df, metric: str) -> tuple[str, dict, list[str]]:
    """Fixed-effects formula, variance components and notes for what `df` can support."""
    notes, fixed = [], []
    for f in ("framework", "dataset"):
        if df[f].nunique() > 1:
            fixed.append(f)
        else:
            notes.append(f"{metric}: '{f}' has one level ({df[f].iloc[0]!r}); term dropped")
    rhs = " * ".join(fixed) if fixed else "1"
    vc = {}
    for name, col in (("model", "model"), ("image", "image_id")):
        if df[col].nunique() > 1:
            vc[name] = f"0 + C({col})"
        else:
            notes.append(f"{metric}: '{name}' has one level; random effect (1|{name}) dropped")
    return f"{metric} ~ {rhs}", vc, notes


def fit_metric(df, metric: str) -> dict:
    """Fit one metric; returns rows for mixed_effects.csv, variances and notes."""
    import statsmodels.formula.api as smf

    formula, vc, notes = formula_for(df, metric)
    data = df.assign(_group=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if vc:
            model = smf.mixedlm(formula, data, groups="_group", re_formula="0", vc_formula=vc)
            res = model.fit(reml=True, method=["lbfgs", "powell"])
            fe = res.fe_params
            bse = res.bse_fe
            pv = res.pvalues[fe.index]
            ci = res.conf_int().loc[fe.index]
            variances = {n: float(v) for n, v in zip(model.exog_vc.names, res.vcomp)}
            variances["residual"] = float(res.scale)
            converged = bool(res.converged)
        else:
            res = smf.ols(formula, data).fit()
            fe, bse, pv, ci = res.params, res.bse, res.pvalues, res.conf_int()
            variances = {"residual": float(res.scale)}
            converged = True
            notes.append(f"{metric}: no random effect has two levels; ordinary least squares")
    for w in caught:
        msg = str(w.message).splitlines()[0]
        if msg and f"{metric}: {msg}" not in notes:
            notes.append(f"{metric}: {msg}")
    rows = [{"metric": metric, "term": t, "estimate": float(fe[t]), "std_error": float(bse[t]),
             "p_value": float(pv[t]), "ci_low": float(ci.loc[t].iloc[0]),
             "ci_high": float(ci.loc[t].iloc[1])} for t in fe.index]
    return {"formula": formula + "".join(f" + (1|{k})" for k in vc), "rows": rows,
            "variances": variances, "notes": notes, "converged": converged, "n": len(df)}


def load_set_metrics(eval_dirs) -> list[dict]:
    out = []
    for d in eval_dirs:
        f = Path(d) / "set_metrics.json"
        if f.is_file():
            try:
                m = json.loads(f.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{f}: not valid JSON ({exc.msg})") from None
            m["eval_dir"] = str(Path(d).resolve())
            out.append(m)
    return out


def compare(eval_dirs, out_dir, metrics=METRICS, figures: bool = True) -> dict:
    """Fit the mixed model per metric and write tables, figures and compare.json; return the summary."""
    import pandas as pd

    from her2core.util.atomic import atomic_path, write_json

    df = load_tables(eval_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    present = [m for m in metrics if m in df.columns]
    if not present:
        raise UserError(f"compare: none of the columns {', '.join(metrics)} in the tables")
    fits = {m: fit_metric(df, m) for m in present}
    fixed = pd.DataFrame([r for f in fits.values() for r in f["rows"]])
    rand = pd.DataFrame([{"metric": m, "component": k, "variance": v}
                         for m, f in fits.items() for k, v in f["variances"].items()])
    with atomic_path(out_dir / "mixed_effects.csv") as tmp:
        fixed.to_csv(tmp, index=False)
    with atomic_path(out_dir / "random_effects.csv") as tmp:
        rand.to_csv(tmp, index=False)
    set_metrics = load_set_metrics(eval_dirs)
    figs = {}
    if figures:
        from her2core.evaluation import figures as fg

        figs = fg.write_compare_figures(df, fixed, set_metrics, out_dir)
    summary = {
        "eval_dirs": [str(Path(d).resolve()) for d in eval_dirs],
        "n_rows": len(df),
        "models": sorted(df.model.unique()), "datasets": sorted(df.dataset.unique()),
        "frameworks": sorted(df.framework.unique()),
        "fits": {m: {k: v for k, v in f.items() if k != "rows"} for m, f in fits.items()},
        "notes": [n for f in fits.values() for n in f["notes"]],
        "figures": figs,
        "set_metrics": [{k: m.get(k) for k in ("model", "framework", "dataset", "n", "fid",
                                                "kid_mean", "kid_std", "her2_proxy_kappa",
                                                "eval_dir")} for m in set_metrics],
    }
    write_json(out_dir / "compare.json", summary)
    return summary
