"""The demo's HTML report: registration review, examples, metrics, mixed effects, slide previews.

Built from a demo folder alone (its `demo_summary.json`, paths relative to the folder), with the
project's one HTML builder (`util.html_report`) and the evaluation and comparison sections of
`evaluation.report`, extended with what only the demo has (registration, virtual slides, the
key finding, stage timings). `her2 report DEMO_FOLDER` and `her2 demo` both call it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _region_rgb(slide_path: Path, region, max_side: int = 512) -> np.ndarray:
    from her2core.slide import open_slide
    from her2core.slide.reader import resize_rgb

    x, y, w, h = region
    with open_slide(slide_path) as s:
        ds = max(w, h) / max_side
        level = s.best_level_for_downsample(max(ds, 1.0))
        lds = s.level_downsamples[level]
        img = s.read_region((x, y), level, (int(w / lds), int(h / lds)))
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        img = resize_rgb(img, (max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))))
    return img


def _virtual_rgb(path: Path, max_side: int = 512) -> np.ndarray:
    from her2core.slide import open_slide

    with open_slide(path) as s:
        img, _ = s.thumbnail(max_side)
    return img


def load_demo_summary(folder: Path) -> dict:
    """The demo folder's demo_summary.json (a UserError naming the file when it is not one)."""
    from her2core.errors import UserError

    path = Path(folder) / "demo_summary.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a readable demo summary ({exc}); run `her2 demo` again") from None
    if not isinstance(state, dict) or state.get("format") != "her2-demo/1":
        raise UserError(f"{path}: not a demo summary of this version; run `her2 demo` again")
    return state


def build_demo_report(folder, out_path) -> Path:
    """report.html of a finished `her2 demo` folder, from its demo_summary.json."""
    from her2core.evaluation.report import add_comparison, add_evaluation
    from her2core.util.html_report import Report

    out = Path(folder)
    state = load_demo_summary(out)
    rep = Report("napari-her2stain demo: virtual HER2 from H&E, end to end")
    f = state["finding"]
    registrations = {k: {**r, "dir": out / r["dir"]} for k, r in state["registrations"].items()}
    evals = {(e["run"], e["test_set"]): {"dir": out / e["dir"], "set": e["set"]} for e in state["evals"]}

    s = rep.section("Key finding: same-section pairs train better models")
    eff = f.get("mixed_effects_dataset_term") or {}
    s.text(
        "Pyramid pix2pix (tiny preset) trained on same-section (cell-to-cell aligned) pairs versus on "
        "consecutive-section pairs of the same cases, evaluated on the same aligned test tiles "
        f"(N = {f['n_test_tiles']}). Mean SSIM {f['ssim_same_trained']:.3f} vs "
        f"{f['ssim_consecutive_trained']:.3f} (difference {f['ssim_difference']:+.3f}); the same-section "
        f"model wins on {f['wins_same']} of {f['n_test_tiles']} tiles (paired Wilcoxon p = "
        f"{f['paired_wilcoxon_p']:.2g}).")
    if eff:
        from her2core.evaluation.mixed import term_line

        cmp_file = out / state["compare"] / "compare.json"
        comparison = json.loads(cmp_file.read_text()) if cmp_file.is_file() else None
        line = term_line(comparison, eff)
        s.text(f"{line[0].upper()}{line[1:]} (SE {eff.get('std_error', float('nan')):.4f}).")

    s = rep.section("Registration review")
    rows = []
    for name, r in registrations.items():
        truth = r["truth"]
        rows.append({"case": name, "section": truth.get("section_mode", truth.get("section", "")),
                     "HER2 score": truth.get("her2_score"),
                     "residual median (µm)": r.get("median_um"), "residual p90 (µm)": r.get("p90_um"),
                     "flagged regions": r.get("flagged"), "no reliable match": r.get("no_match")})
    s.table(rows)
    s.text("Residual shift per region after registration, measured independently of the fitted field by "
           "block matching of the hematoxylin channel; regions where too few patches match are reported "
           "as 'no reliable match' and left out of the statistics. Consecutive-section pairs find no "
           "cell-level match at all: their cells are not the same cells.", note=True)
    previews = []
    for name in list(registrations)[:2]:
        d = registrations[name]["dir"]
        for png in sorted(Path(d).glob("*.png"))[:2]:
            previews.append((f"{name}: {png.stem}", png))
    for caption, png in previews:
        s.figure(str(png), caption)

    s = rep.section("Virtual HER2 slides")
    grid, caps = [], []
    for label, v in state["virtual"].items():
        case = out / v["case"]
        he = _region_rgb(case / "he.ome.tif", v["region"])
        virt = _virtual_rgb(out / v["path"])
        real = _region_rgb(case / "her2.ome.tif", v["region"]) if label.startswith("real") else None
        if not label.startswith("real"):
            reg = registrations[case.name]["dir"] / "her2_registered.ome.tif"
            real = _region_rgb(reg, v["region"]) if reg.exists() else None
        grid.append([he, virt, real])
        caps.append(f"{label}: {case.name}, region {v['region']} (level-0 x, y, w, h)")
    s.image_grid(grid, columns=["H&E", "virtual HER2 (p2p same)", "real HER2"], captions=caps, max_side=384)
    s.text("Each virtual slide is a pyramidal OME-TIFF with microns per pixel and its origin; open it in "
           "napari or QuPath next to the real HER2.", note=True)

    for (name, test_ds), e in sorted(evals.items()):
        if test_ds != "same" or "seed" in name:  # one example section per framework and dataset
            continue
        he_dir = out / state["datasets"]["same"]["root"] / "HE_20x" / "test"
        add_evaluation(rep, e["dir"], he_dir=he_dir if he_dir.exists() else None, n_examples=3)
        rep.sections[-1].title = f"Evaluation of {name} on the aligned test tiles"

    s = rep.section("All runs on both test sets (means)")
    rows = []
    for (name, test_ds), e in sorted(evals.items()):
        import pandas as pd

        df = pd.read_csv(Path(e["dir"]) / "per_image.csv")
        row = {"run": name, "trained on": state["runs"][name]["dataset"], "tested on": test_ds, "N": len(df)}
        for m in ("ssim", "psnr", "ms_ssim", "dab_od_mae", "dab_grid_r"):
            if m in df.columns:
                row[m] = float(df[m].mean())
        fset = e["set"] or {}
        for m in ("fid", "kid_mean"):
            if m in fset and isinstance(fset[m], (int, float)):
                row[m] = fset[m]
        rows.append(row)
    s.table(rows)
    s.text("Consecutive-section targets are other cells than the H&E shows, so every model scores lower "
           "against them: this is why pixel metrics on BCI-like data mislead.", note=True)

    add_comparison(rep, out / state["compare"])

    s = rep.section("How this was made")
    s.table([{"stage": st["name"], "seconds": round(st["seconds"], 1), "equivalent command": st["command"]}
             for st in state["stages"]])
    return rep.write(out_path)
