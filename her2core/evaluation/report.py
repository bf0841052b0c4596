"""Self-contained HTML reports: sections of text, tables, figures and image grids.

A small builder the `her2 report` command and the demo share (the demo adds its
own sections, e.g. registration review and slide previews):

    rep = Report("HER2 evaluation")
    sec = rep.section("Set metrics")
    sec.table(rows_or_dataframe); sec.figure("fig.png"); sec.html("<p>...</p>")
    sec.image_grid([[he, virtual, real], ...], columns=["H&E", "virtual", "real"], captions=[...])
    rep.write("report.html")

Images (PNG files, matplotlib figures or RGB uint8 arrays) are embedded as base64,
so the page is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import html as _html
import io
import json
from pathlib import Path

import numpy as np

from her2core.errors import UserError

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td.t{text-align:left}img{max-width:100%}.grid td{text-align:center;border:none}
.grid img{width:192px;image-rendering:auto}.note{color:#666;font-size:13px}h2{border-bottom:1px solid #ddd}"""


def png_data_uri(img, max_side: int | None = None) -> str:
    """data: URI of a PNG path, bytes, matplotlib figure or RGB uint8 array."""
    if isinstance(img, (str, Path)):
        data = Path(img).read_bytes()
    elif isinstance(img, bytes):
        data = img
    elif hasattr(img, "savefig"):
        buf = io.BytesIO()
        img.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        data = buf.getvalue()
    else:
        from PIL import Image

        im = Image.fromarray(np.asarray(img, dtype=np.uint8))
        if max_side and max(im.size) > max_side:
            im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return ""
    return str(v)


class Section:
    """One titled part of a report; blocks are appended in order."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[str] = []

    def html(self, fragment: str) -> Section:
        self.blocks.append(fragment)
        return self

    def text(self, text: str, note: bool = False) -> Section:
        cls = ' class="note"' if note else ""
        return self.html(f"<p{cls}>{_html.escape(text)}</p>")

    def table(self, rows, columns: list[str] | None = None) -> Section:
        """rows: a pandas DataFrame, a list of dicts or a dict (two columns)."""
        if hasattr(rows, "to_dict"):
            columns = columns or [str(c) for c in rows.columns]
            rows = rows.to_dict("records")
        elif isinstance(rows, dict):
            rows = [{"setting": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                    for k, v in rows.items()]
        rows = list(rows)
        columns = columns or list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{_html.escape(str(c))}</th>" for c in columns)
        body = []
        for r in rows:
            cells = []
            for c in columns:
                v = r.get(c)
                cls = ' class="t"' if not isinstance(v, (int, float)) else ""
                cells.append(f"<td{cls}>{_html.escape(_fmt(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return self.html(f"<table><tr>{head}</tr>{''.join(body)}</table>")

    def figure(self, img, caption: str | None = None) -> Section:
        cap = f"<figcaption>{_html.escape(caption)}</figcaption>" if caption else ""
        return self.html(f'<figure><img src="{png_data_uri(img)}">{cap}</figure>')

    def image_grid(self, rows, columns: list[str] | None = None, captions: list[str] | None = None,
                   max_side: int = 256) -> Section:
        """rows: list of lists of images (path or RGB array); one caption per row."""
        head = ("<tr><th></th>" + "".join(f"<th>{_html.escape(c)}</th>" for c in columns) + "</tr>"
                if columns else "")
        body = []
        for i, row in enumerate(rows):
            cap = _html.escape(captions[i]) if captions else ""
            cells = "".join(
                f'<td><img src="{png_data_uri(_load(im), max_side)}"></td>' if im is not None
                else "<td>(missing)</td>" for im in row)
            body.append(f'<tr><td class="t">{cap}</td>{cells}</tr>')
        return self.html(f'<table class="grid">{head}{"".join(body)}</table>')

    def render(self) -> str:
        return f"<section><h2>{_html.escape(self.title)}</h2>{''.join(self.blocks)}</section>"


def _load(im):
    if isinstance(im, (str, Path)):
        from PIL import Image

        with Image.open(im) as f:
            return np.asarray(f.convert("RGB"))
    return im


class Report:
    """An HTML page made of sections."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[Section] = []

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def to_html(self) -> str:
        t = _html.escape(self.title)
        body = "".join(s.render() for s in self.sections)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title>"
                f"<style>{_CSS}</style></head><body><h1>{t}</h1>{body}</body></html>\n")

    def write(self, path) -> Path:
        from her2core.util.atomic import write_text

        write_text(path, self.to_html())
        return Path(path)


# ---- reports of `her2 evaluate` and `her2 compare` folders ---------------------------------

def _find(folder: Path, stem: str) -> Path | None:
    from her2core.evaluation.pairs import IMAGE_EXTS

    for ext in IMAGE_EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


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
    pred_dir, target_dir = Path(sm["pred_dir"]), Path(sm["target_dir"])
    he = Path(he_dir) if he_dir else (Path(sm["he_dir"]) if sm.get("he_dir") else None)
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
