"""Compare evaluations: stack per_image.csv tables and fit the study's linear mixed model.

For each metric (ssim, ms_ssim, psnr, lpips; those present) the study's model
    metric ~ framework * dataset + (1|model) + (1|image)
is fitted by REML (`her2core.evaluation.lmm`, equal to lme4's estimates) with
Satterthwaite t tests (as lmerTest). The rows' identity:
    dataset   the model's training dataset (the fixed factor)
    model     the trained model; its random intercept is per (model, dataset)
    test_set  the evaluated test set; image: the tile's name in it
The image random effect is the tile of a test set, *crossed* with model, framework and
training dataset: the same tile scored by every model is one image. Tables written
before `test_set` was recorded load as one test set, with a note.
Factors with a single level are dropped from the formula and the drop is written to
the notes (one dataset, one framework, one model, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.util.safe_io import read_csv_frame

METRICS = ("ssim", "ms_ssim", "psnr", "lpips")
DIST_METRICS = ("ssim", "psnr", "lpips")
REQUIRED = ("image", "model", "framework", "dataset")
IDENTITY = (*REQUIRED, "test_set")
ENGINE = "her2core.evaluation.lmm: REML (lme4's criterion), Satterthwaite df (as lmerTest)"


def load_tables(eval_dirs, notes: list[str] | None = None) -> pd.DataFrame:  # noqa: F821
    """Stack per_image.csv of every evaluation folder; NaN or missing columns are user errors.

    How an old table (no test_set column) was read is appended to `notes`.
    """
    import pandas as pd

    frames, old = [], []
    if not eval_dirs:
        raise UserError("compare: give at least one evaluation folder")
    for d in eval_dirs:
        f = Path(d) / "per_image.csv" if Path(d).is_dir() else Path(d)
        if not f.is_file():
            raise UserError(f"{f}: no per_image.csv here; run `her2 evaluate` first")
        df = read_csv_frame(f, "per_image.csv", required=REQUIRED, dtype={c: str for c in IDENTITY},
                            fix="run `her2 evaluate` again into that folder")
        if df.empty:
            raise UserError(f"{f}: per_image.csv has no rows; run `her2 evaluate` again into "
                            "that folder")
        if "test_set" not in df.columns:
            df["test_set"] = ""
            old.append(str(f))
        for c in IDENTITY[1:]:
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
    if old and notes is not None:
        more = f" and {len(old) - 1} more" if len(old) > 1 else ""
        notes.append(f"{old[0]}{more}: no test_set column (written before test sets were recorded); "
                     "read as one test set: the same image name is the same tile for every model, "
                     "'dataset' as the model's training dataset")
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(["model", "dataset", "test_set", "image"])
    if dup.any():
        r = df[dup].iloc[0]
        raise UserError(f"{r.source}: image {r.image} of model '{r.model}' (trained on "
                        f"'{r.dataset}') on test set '{r.test_set}' appears twice; give each "
                        "evaluation once")
    df["image_id"] = df["test_set"].astype(str) + "/" + df["image"].astype(str)
    df["model_id"] = df["dataset"].astype(str) + "/" + df["model"].astype(str)
    return df


def formula_for(df, metric: str) -> tuple[str, dict, list[str]]:
    """Fixed-effects formula, random factors (name -> id column) and notes for `df`."""
    notes, fixed = [], []
    for f in ("framework", "dataset"):
        if df[f].nunique() > 1:
            fixed.append(f)
        else:
            notes.append(f"{metric}: '{f}' has one level ({df[f].iloc[0]!r}); term dropped")
    rhs = " * ".join(fixed) if fixed else "1"
    random = {}
    for name, col in (("model", "model_id"), ("image", "image_id")):
        n_levels = df[col].nunique()
        if n_levels <= 1:
            notes.append(f"{metric}: '{name}' has one level; random effect (1|{name}) dropped")
        elif n_levels >= len(df):  # lme4 refuses these: not separable from the residual
            notes.append(f"{metric}: one row per '{name}'; random effect (1|{name}) dropped")
        else:
            random[name] = col
    return f"{metric} ~ {rhs}", random, notes


def design(df, rhs: str) -> tuple[np.ndarray, list[str], list[str], dict[str, list[int]]]:
    """Treatment-coded fixed-effect matrix (R's default: first level, sorted, as reference).

    The factors are categorical, so patsy codes the distinct cells only and rows take their
    cell's row (patsy's per-element loop would dominate at 100k rows). Columns that are
    linear combinations of earlier ones are dropped, as lme4 does. Also returns each formula
    term's columns (for the likelihood-ratio tests).
    """
    import pandas as pd
    import patsy

    factors = [f for f in ("framework", "dataset") if f in rhs]
    if factors:
        cell = df.groupby(factors, sort=True).ngroup().to_numpy()
        cells = df[factors].drop_duplicates().sort_values(factors).reset_index(drop=True)
    else:
        cell, cells = np.zeros(len(df), int), pd.DataFrame(index=[0])
    Xc = patsy.dmatrix(rhs, cells, return_type="dataframe")
    keep, dropped = [], []
    for j in range(Xc.shape[1]):
        cols = keep + [j]
        if np.linalg.matrix_rank(Xc.to_numpy()[:, cols]) == len(cols):
            keep.append(j)
        else:
            dropped.append(str(Xc.columns[j]))
    term_of = {j: name for name, sl in Xc.design_info.term_name_slices.items()
               for j in range(Xc.shape[1])[sl]}
    columns: dict[str, list[int]] = {}
    for i, j in enumerate(keep):
        columns.setdefault(term_of[j], []).append(i)
    return Xc.to_numpy()[cell][:, keep], [str(Xc.columns[j]) for j in keep], dropped, columns


def fit_metric(df, metric: str) -> dict:
    """Fit one metric; returns rows for mixed_effects.csv, variances and notes."""
    from scipy import stats

    formula, random, notes = formula_for(df, metric)
    X, terms, dropped, columns = design(df, formula.split("~")[1].strip())
    if dropped:
        notes.append(f"{metric}: fixed-effect matrix is rank deficient; dropped {', '.join(dropped)}")
    y = df[metric].to_numpy(float)
    if random:
        from her2core.evaluation.lmm import fit_lmm, likelihood_ratio_tests

        groups = {k: df[c].to_numpy() for k, c in random.items()}
        fit = fit_lmm(y, X, terms, groups)
        est, se, dof, ci = fit.beta, fit.std_error, fit.df, fit.conf_int()
        variances, converged = fit.variances, fit.converged
        notes += [f"{metric}: {n}" for n in fit.notes]
        extra = {"reml_criterion": fit.reml_criterion, "boundary": fit.boundary,
                 "theta": [float(t) for t in fit.theta],
                 "likelihood_ratio_tests": likelihood_ratio_tests(y, X, columns, groups)}
    else:
        import statsmodels.api as sm

        res = sm.OLS(y, X).fit()
        est, se = np.asarray(res.params), np.asarray(res.bse)
        dof = np.full(len(terms), float(res.df_resid))
        ci = np.asarray(res.conf_int())
        variances, converged = {"residual": float(res.scale)}, True
        notes.append(f"{metric}: no random effect has two levels; ordinary least squares")
        extra = {}
    tval = est / se
    pval = 2.0 * stats.t.sf(np.abs(tval), dof)
    rows = [{"metric": metric, "term": t, "estimate": float(est[i]), "std_error": float(se[i]),
             "df": float(dof[i]), "t_value": float(tval[i]), "p_value": float(pval[i]),
             "ci_low": float(ci[i, 0]), "ci_high": float(ci[i, 1])} for i, t in enumerate(terms)]
    total = sum(variances.values())
    shares = {k: (v / total if total > 0 else float("nan")) for k, v in variances.items()}
    return {"formula": formula + "".join(f" + (1|{k})" for k in random), "rows": rows,
            "variances": variances, "variance_share": shares, "notes": notes,
            "converged": converged, "n": len(df), "engine": ENGINE if random else "OLS (statsmodels)",
            "levels": {k: int(df[c].nunique()) for k, c in random.items()}, **extra}


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

    read_notes: list[str] = []
    df = load_tables(eval_dirs, read_notes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    present = [m for m in metrics if m in df.columns]
    if not present:
        raise UserError(f"compare: none of the columns {', '.join(metrics)} in the tables")
    fits = {m: fit_metric(df, m) for m in present}
    fixed = pd.DataFrame([r for f in fits.values() for r in f["rows"]])
    rand = pd.DataFrame([{"metric": m, "component": k, "variance": v, "sd": float(np.sqrt(v)),
                          "share": f["variance_share"][k]}
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
        "test_sets": sorted(df.test_set.unique()),
        "notes": read_notes + [n for f in fits.values() for n in f["notes"]],
        "figures": figs,
        "set_metrics": [{k: m.get(k) for k in ("model", "framework", "dataset", "n", "fid",
                                                "kid_mean", "kid_std", "her2_proxy_kappa",
                                                "eval_dir")} for m in set_metrics],
    }
    write_json(out_dir / "compare.json", summary)
    return summary


def term_line(comparison: dict | None, eff: dict, metric: str = "ssim") -> str:
    """One fixed-effect term of a `compare` result in words: its Satterthwaite t test, images crossed."""
    fit = (comparison or {}).get("fits", {}).get(metric, {})
    lv = fit.get("levels", {})
    nan = float("nan")
    return (f"mixed model {fit.get('formula', metric + ' ~ ...')}, images crossed "
            f"({lv.get('image')} test tiles x {lv.get('model')} models): {eff.get('term')} "
            f"{eff.get('estimate', nan):+.4f}, Satterthwaite t({eff.get('df', nan):.1f}) = "
            f"{eff.get('t_value', nan):.2f}, p = {eff.get('p_value', nan):.2g}")
