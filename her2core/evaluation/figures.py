"""Figures of a comparison (matplotlib, Agg backend; PNG at 150 dpi)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = {"ssim": "SSIM (skimage, 7x7 uniform)", "psnr": "PSNR (dB)", "lpips": "LPIPS (AlexNet v0.1)",
          "ms_ssim": "MS-SSIM"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    from her2core.util.atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    _plt().close(fig)
    return path.name


def distributions(df, metric: str, path: Path) -> str:
    """Box plots of `metric` per model, one box per training dataset side by side."""
    plt = _plt()
    models, datasets = sorted(df.model.unique()), sorted(df.dataset.unique())
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(models) * max(1, len(datasets)) ** 0.5), 3.6))
    width = 0.8 / len(datasets)
    for j, d in enumerate(datasets):
        data = [df[(df.model == m) & (df.dataset == d)][metric].to_numpy() for m in models]
        pos = np.arange(len(models)) + (j - (len(datasets) - 1) / 2) * width
        keep = [i for i, v in enumerate(data) if len(v)]
        bp = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=width * 0.9,
                        patch_artist=True, showfliers=False)
        for b in bp["boxes"]:
            b.set_facecolor(f"C{j}")
            b.set_alpha(0.6)
        ax.plot([], [], color=f"C{j}", lw=6, alpha=0.6, label=d or "(no dataset)")
    ax.set_xticks(np.arange(len(models)), [m or "(no model)" for m in models], rotation=30, ha="right")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.legend(fontsize=8, frameon=False, title="training dataset", title_fontsize=8)
    ax.set_title(f"{metric} per model and training dataset")
    return _save(fig, path)


def fid_kid_heatmap(set_metrics: list[dict], path: Path) -> str | None:
    """FID and KID (x1000) as heatmaps of models x datasets."""
    rows = [m for m in set_metrics if m.get("fid") is not None]
    if not rows:
        return None
    plt = _plt()
    models = sorted({m.get("model", "") for m in rows})
    datasets = sorted({m.get("dataset", "") for m in rows})
    fig, axes = plt.subplots(1, 2, figsize=(3 + 1.6 * len(datasets) * 2, 1 + 0.5 * len(models) + 1))
    for ax, key, scale, title in ((axes[0], "fid", 1, "FID"), (axes[1], "kid_mean", 1000, "KID x1000")):
        grid = np.full((len(models), len(datasets)), np.nan)
        for m in rows:
            grid[models.index(m.get("model", "")), datasets.index(m.get("dataset", ""))] = (
                m.get(key, np.nan) * scale)
        im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
        ax.set_yticks(range(len(models)), models)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


SIGNIFICANT_P = 0.001  # the paper's mark: * p <= 0.001


def term_label(term: str) -> str:
    """'framework[T.gan]:dataset[T.same]' -> 'framework gan x dataset same'."""
    return " x ".join(part.replace("[T.", " ").rstrip("]") for part in term.split(":"))


def coefficient_plot(fixed, path: Path) -> str:
    """Fixed-effect estimates with 95 % Satterthwaite-t intervals and significance marks.

    One panel per metric, intercept left out; * marks p <= 0.001 as in the paper's Figure 3.
    """
    plt = _plt()
    metrics = list(dict.fromkeys(fixed.metric))
    n_terms = max(1, int((fixed.term != "Intercept").groupby(fixed.metric).sum().max()))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.5 + 2.6 * len(metrics), 1.2 + 0.45 * n_terms),
                             squeeze=False, sharey=True)
    for ax, m in zip(axes[0], metrics):
        t = fixed[(fixed.metric == m) & (fixed.term != "Intercept")]
        y = np.arange(len(t))[::-1]
        sig = (t.p_value <= SIGNIFICANT_P).to_numpy() if "p_value" in t else np.zeros(len(t), bool)
        ax.errorbar(t.estimate, y, xerr=[t.estimate - t.ci_low, t.ci_high - t.estimate],
                    fmt="none", ecolor="grey", capsize=3)
        ax.scatter(t.estimate[~sig], y[~sig], color="grey", zorder=3)
        ax.scatter(t.estimate[sig], y[sig], color="C3", zorder=3)
        for yi, hi, s in zip(y, t.ci_high, sig):
            if s:
                ax.annotate("*", (hi, yi), xytext=(3, -4), textcoords="offset points",
                            color="C3", fontsize=12)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, [term_label(x) for x in t.term])
        ax.xaxis.set_major_locator(plt.MaxNLocator(3))
        ax.set_title(LABELS.get(m, m), fontsize=9)
        ax.margins(x=0.15)
    fig.suptitle(f"fixed effects, 95 % CI (Satterthwaite t); * p ≤ {SIGNIFICANT_P:g}",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_compare_figures(df, fixed, set_metrics, out_dir: Path) -> dict[str, str]:
    figs = {}
    for m in ("ssim", "psnr", "lpips"):
        if m in df.columns:
            figs[f"distribution_{m}"] = distributions(df, m, out_dir / f"distribution_{m}.png")
    hm = fid_kid_heatmap(set_metrics, out_dir / "fid_kid_heatmap.png")
    if hm:
        figs["fid_kid_heatmap"] = hm
    if len(fixed):
        figs["coefficients"] = coefficient_plot(fixed, out_dir / "coefficients.png")
    return figs
