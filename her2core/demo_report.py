"""The demo's HTML report: registration review, examples, metrics, mixed effects, slide previews.

Built from the evaluation package's report blocks (`her2core.evaluation.report`),
extended with the sections only the demo has (registration, virtual slides,
the key finding, stage timings).
"""

from __future__ import annotations

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


def build_demo_report(demo) -> Path:
    from her2core.evaluation.report import Report, add_comparison, add_evaluation

    out = demo.out
    rep = Report("napari-her2stain demo: virtual HER2 from H&E, end to end")
    f = demo.finding

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

        line = term_line(getattr(demo, "comparison", None), eff)
        s.text(f"{line[0].upper()}{line[1:]} (SE {eff.get('std_error', float('nan')):.4f}).")

    s = rep.section("Registration review")
    rows = []
    for name, r in demo.registrations.items():
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
    for name in list(demo.registrations)[:2]:
        d = demo.registrations[name]["dir"]
        for png in sorted(Path(d).glob("*.png"))[:2]:
            previews.append((f"{name}: {png.stem}", png))
    for caption, png in previews:
        s.figure(str(png), caption)

    s = rep.section("Virtual HER2 slides")
    grid, caps = [], []
    for label, v in demo.virtual.items():
        case = Path(v["case"])
        he = _region_rgb(case / "he.ome.tif", v["region"])
        virt = _virtual_rgb(v["path"])
        real = _region_rgb(case / "her2.ome.tif", v["region"]) if label.startswith("real") else None
        if not label.startswith("real"):
            reg = demo.registrations[case.name]["dir"] / "her2_registered.ome.tif"
            real = _region_rgb(reg, v["region"]) if reg.exists() else None
        grid.append([he, virt, real])
        caps.append(f"{label}: {case.name}, region {v['region']} (level-0 x, y, w, h)")
    s.image_grid(grid, columns=["H&E", "virtual HER2 (p2p same)", "real HER2"], captions=caps, max_side=384)
    s.text("Each virtual slide is a pyramidal OME-TIFF with microns per pixel and its origin; open it in "
           "napari or QuPath next to the real HER2.", note=True)

    for (name, test_ds), e in sorted(demo.evals.items()):
        if test_ds != "same" or "seed" in name:  # one example section per framework and dataset
            continue
        he_dir = demo.datasets["same"]["root"] / "HE_20x" / "test"
        add_evaluation(rep, e["dir"], he_dir=he_dir if he_dir.exists() else None, n_examples=3)
        rep.sections[-1].title = f"Evaluation of {name} on the aligned test tiles"

    s = rep.section("All runs on both test sets (means)")
    rows = []
    for (name, test_ds), e in sorted(demo.evals.items()):
        import pandas as pd

        df = pd.read_csv(Path(e["dir"]) / "per_image.csv")
        row = {"run": name, "trained on": demo.runs[name]["dataset"], "tested on": test_ds, "N": len(df)}
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

    add_comparison(rep, demo.out / "compare")

    s = rep.section("How this was made")
    s.table([{"stage": st.name, "seconds": round(st.seconds, 1), "equivalent command": st.command}
             for st in demo.stages])
    return rep.write(out / "report.html")
