"""Review a registration region by region: residual in microns, measured independently, previews.

Why: a user must *see* whether a registration is good enough before trusting its tiles
(ecosystem notes §5: per-region residuals, checkerboard, overlap image, warnings on
implausible transforms). The review does not trust the transform: it compares the H&E
slide with the registered HER2 slide on hematoxylin optical density, patch by patch inside
each tissue region (default 1024² level-0 px), by block matching (a coarse phase correlation
at `coarse_mpp` for large offsets, refined at `review_mpp`), which is a different measurement
from the dense optimisation that made the field. A patch counts only when its correlation
after the shift is high; a region's residual is the median over its counted patches. A region
with too few counted patches is "no reliable match": listed apart (`no_match_regions`), never
flagged as misregistered and never part of the statistics. Thresholds are in microns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.registration.match import patch_shift
from her2core.registration.warp import read_he_patch
from her2core.stain import hematoxylin_od
from her2core.util.atomic import write_json, write_png
from her2core.util.progress import Progress, ensure


def _regions(w: int, h: int, region: int):
    for y in range(0, h, region):
        for x in range(0, w, region):
            yield x, y, min(region, w - x), min(region, h - y)


def measure_residual(he, reg, center_xy, *, fine_mpp: float, coarse_mpp: float, fine_um: float = 48.0,
                     coarse_um: float = 128.0, min_signal: float = 0.05) -> tuple[np.ndarray, float] | None:
    """(dx, dy) µm that the registered slide is off at level-0 `center_xy`, and the correlation after it.

    Positive dx: the registered HER2 content sits to the right of the H&E's. None when the
    H&E patch holds too little hematoxylin to measure anything.
    """
    from scipy.ndimage import gaussian_filter

    mpp0 = he.require_mpp()
    nc = max(16, round(coarse_um / coarse_mpp))
    a = hematoxylin_od(read_he_patch(he, center_xy, nc, coarse_mpp))
    if (a > 0.1).mean() < min_signal:
        return None
    b = hematoxylin_od(read_he_patch(reg, center_xy, nc, coarse_mpp))
    # tissue-scale texture for the coarse search (nuclear density, not single nuclei)
    sg = 4.0 / coarse_mpp
    sh, _ = patch_shift(gaussian_filter(a, sg), gaussian_filter(b, sg), normalization=None)
    coarse = -sh[::-1] * coarse_mpp                      # (dx, dy) µm of reg relative to H&E
    if np.abs(coarse).max() > 0.35 * coarse_um:
        coarse = np.zeros(2)
    nf = max(16, round(fine_um / fine_mpp))
    a = hematoxylin_od(read_he_patch(he, center_xy, nf, fine_mpp))
    moved = np.asarray(center_xy, float) + coarse / mpp0
    b = hematoxylin_od(read_he_patch(reg, moved, nf, fine_mpp))
    sf, corr = patch_shift(a, b)
    return coarse - sf[::-1] * fine_mpp, corr


def review(he_path, registered_path, out_dir, *, region: int = 1024, threshold_um: float = 5.0,
           min_correlation: float = 0.5, min_patches: int = 3, min_patch_share: float = 0.2,
           min_tissue: float = 0.25, patch_um: float = 48.0, patches_per_side: int = 4,
           review_mpp: float | None = None,
           coarse_mpp: float = 2.0, transform=None, he_mpp: float | None = None,
           registered_mpp: float | None = None, preview_size: int = 1024,
           progress: Progress | None = None) -> dict:
    """Score `registered_path` against `he_path`; writes review.json, review.html and preview PNGs.

    Patches of `patch_um` (at most `patches_per_side`² per region, spread evenly) count when
    their correlation after the shift reaches `min_correlation`; a region needs `min_patches`
    and `min_patch_share` of its patches with signal to be measured. `transform`: a Transform
    or a transform.json path (default: transform.json beside the registered slide, if any)
    whose plausibility is checked. `progress` hears `("review", regions done, regions)`.
    Returns the review dict.
    """
    from her2core.registration.transform import Transform, load_transform
    from her2core.slide import open_slide
    from her2core.slide.tissue import TissueConfig, detect_tissue

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    he = open_slide(he_path, mpp=he_mpp)
    reg = open_slide(registered_path, mpp=registered_mpp)
    try:
        mpp = he.require_mpp()
        reg_mpp = reg.require_mpp()
        if abs(reg_mpp - mpp) > 1e-3 * mpp or reg.dimensions != he.dimensions:
            raise UserError(f"{registered_path}: not in the H&E pixel grid of {he_path} "
                            f"({reg.dimensions} at {reg_mpp:g} µm/px vs {he.dimensions} at {mpp:g} µm/px); "
                            "review takes the her2_registered.ome.tif written by `her2 register`")
        if transform is None and (Path(registered_path).parent / "transform.json").exists():
            transform = Path(registered_path).parent / "transform.json"
        if transform is not None and not isinstance(transform, Transform):
            transform = load_transform(transform)
        rmpp = review_mpp or max(mpp, 0.5)
        cmpp = max(coarse_mpp, rmpp)
        tissue = detect_tissue(he, TissueConfig(mask_mpp=max(8.0, mpp)))
        W, H = he.dimensions
        boxes = [b for b in _regions(W, H, region) if tissue.coverage(*b) >= min_tissue]
        rows, unmatched, all_counted = [], [], []
        pitch = patch_um / mpp                                 # patch centres, level-0 px apart
        p = ensure(progress)
        for i, (x, y, w, h) in enumerate(boxes):
            p.check("review")
            nx = min(patches_per_side, max(1, int(w // pitch)))
            ny = min(patches_per_side, max(1, int(h // pitch)))
            cx = x + (np.arange(nx) + 0.5) * (w / nx)
            cy = y + (np.arange(ny) + 0.5) * (h / ny)
            shifts, corrs, measured = [], [], 0
            for yy in cy:
                for xx in cx:
                    if not tissue.contains_xy(np.array([[xx, yy]]))[0]:
                        continue
                    res = measure_residual(he, reg, (xx, yy), fine_mpp=rmpp, coarse_mpp=cmpp,
                                           fine_um=patch_um, coarse_um=max(2.5 * patch_um, 96.0))
                    if res is None:
                        continue
                    measured += 1
                    if res[1] >= min_correlation:
                        shifts.append(res[0])
                        corrs.append(res[1])
            row = {"x": x, "y": y, "w": w, "h": h, "patches": measured, "patches_matched": len(shifts)}
            if len(shifts) < max(min_patches, min_patch_share * measured):
                why = (f"{len(shifts)} of {measured} patches match with correlation >= {min_correlation:g} "
                       "(no reliable match)")
                row.update(status="no_match", reasons=[why])
                unmatched.append(row)
            else:
                sv = np.array(shifts)
                mag = np.linalg.norm(sv, axis=1)
                s_um = float(np.median(mag))
                dx, dy = (float(v) for v in np.median(sv, axis=0))
                reasons = [f"residual {s_um:.1f} µm > {threshold_um:g} µm"] if s_um > threshold_um else []
                all_counted.extend(mag.tolist())
                row.update(status="measured", residual_um=round(s_um, 3), shift_um=round(s_um, 3),
                           p90_um=round(float(np.percentile(mag, 90)), 3), dx_um=round(dx, 3),
                           dy_um=round(dy, 3), correlation=round(float(np.median(corrs)), 4),
                           flagged=bool(reasons), reasons=reasons)
                rows.append(row)
            p.update("review", i + 1, len(boxes))
        shifts = np.array([r["shift_um"] for r in rows]) if rows else np.zeros(0)
        summary = {
            "regions": len(rows),
            "flagged": int(sum(r["flagged"] for r in rows)),
            "no_match": len(unmatched),
            "median_shift_um": float(np.median(shifts)) if rows else None,
            "p90_shift_um": float(np.percentile(shifts, 90)) if rows else None,
            "max_shift_um": float(shifts.max()) if rows else None,
            "patch_median_um": float(np.median(all_counted)) if all_counted else None,
            "patch_p90_um": float(np.percentile(all_counted, 90)) if all_counted else None,
            "median_correlation": float(np.median([r["correlation"] for r in rows])) if rows else None,
        }
        warnings = []
        tinfo = None
        if transform is not None:
            warnings = transform.plausibility_warnings()
            tinfo = {"affine": transform.affine_decomposition(),
                     "field_min_jacobian": transform.field_jacobian_min()}
        if not rows and not unmatched:
            warnings.append("no tissue region large enough to review")
        elif not rows:
            warnings.append("no region could be measured (no reliable match anywhere)")
        previews = _write_previews(he, reg, out_dir, rows + unmatched, preview_size)
        result = {"he": str(he_path), "registered": str(registered_path), "mpp": mpp, "review_mpp": rmpp,
                  "coarse_mpp": cmpp, "patch_um": patch_um, "region_px": region, "threshold_um": threshold_um,
                  "min_correlation": min_correlation, "summary": summary, "regions": rows,
                  "no_match_regions": unmatched, "warnings": warnings, "transform": tinfo,
                  "previews": previews}
        write_json(out_dir / "review.json", result)
        _report(result, out_dir).write(out_dir / "review.html")
        return result
    finally:
        he.close()
        reg.close()


def _norm(h: np.ndarray) -> np.ndarray:
    hi = float(np.percentile(h, 99.5)) if h.size else 1.0
    return np.clip(h / max(hi, 1e-6), 0, 1)


def _write_previews(he, reg, out_dir: Path, rows: list[dict], size: int) -> dict:
    from skimage.draw import rectangle_perimeter

    from her2core.slide.reader import resize_rgb

    a, ds = he.thumbnail(size)
    b, _ = reg.thumbnail(size)
    hh, ww = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    a, b = a[:hh, :ww], b[:hh, :ww]
    if b.shape != a.shape:
        b = resize_rgb(b, a.shape[:2])
    sq = max(8, max(hh, ww) // 12)
    yy, xx = np.mgrid[0:hh, 0:ww]
    checker = np.where((((yy // sq) + (xx // sq)) % 2 == 0)[..., None], a, b)
    ha, hb = _norm(hematoxylin_od(a)), _norm(hematoxylin_od(b))
    overlay = (np.stack([ha, hb, ha], axis=-1) * 255).astype(np.uint8)
    flagged = overlay.copy()
    for r in rows:
        color = ((160, 160, 160) if r.get("status") == "no_match"
                 else (255, 40, 40) if r["flagged"] else (90, 90, 255))
        r0, c0 = int(r["y"] / ds), int(r["x"] / ds)
        r1, c1 = int((r["y"] + r["h"]) / ds) - 1, int((r["x"] + r["w"]) / ds) - 1
        rr, cc = rectangle_perimeter((r0, c0), end=(max(r0, r1 - 1), max(c0, c1 - 1)), shape=flagged.shape[:2])
        flagged[rr, cc] = color
    names = {"checkerboard": "review_checkerboard.png", "overlay": "review_overlay.png",
             "regions": "review_regions.png"}
    write_png(out_dir / names["checkerboard"], checker)
    write_png(out_dir / names["overlay"], overlay)
    write_png(out_dir / names["regions"], flagged)
    return names


def _report(r: dict, out_dir: Path):
    """The review as an HTML page (the project's one builder, previews embedded)."""
    from her2core.util.html_report import Report

    s = r["summary"]
    rep = Report("Registration review")
    head = rep.section("Summary")
    head.table({"H&E": r["he"], "registered HER2": r["registered"]})
    head.table([{"regions measured": s["regions"], "flagged": s["flagged"],
                 "no reliable match": s.get("no_match", 0),
                 "median residual µm": s["median_shift_um"], "p90 µm": s["p90_shift_um"],
                 "max µm": s["max_shift_um"], "median correlation": s["median_correlation"]}])
    head.text(f"Regions of {r['region_px']} px at level 0, measured patch by patch "
              f"({r.get('patch_um', 0):g} µm patches, block matching on hematoxylin at "
              f"{r['review_mpp']:g} µm/px); a patch counts when its correlation after the shift is at "
              f"least {r['min_correlation']:g}; a region's residual is the median over its counted "
              f"patches and it is flagged when that exceeds {r['threshold_um']:g} µm. Regions with too "
              "few counted patches are listed apart as \"no reliable match\" and left out of every "
              "statistic.")
    warn = rep.section("Warnings")
    for w in r["warnings"] or ["none"]:
        warn.text(w)
    prev = rep.section("Previews")
    prev.text("checkerboard (H&E / registered HER2) · overlay (magenta H&E nuclei, green HER2 "
              "nuclei, white where they agree) · regions (red = flagged)", note=True)
    for key, name in r["previews"].items():
        prev.figure(out_dir / name, caption=key)
    rep.section("Flagged regions").table(
        [{"x": x["x"], "y": x["y"], "residual µm": x["shift_um"], "correlation": x["correlation"],
          "why": "; ".join(x["reasons"])} for x in r["regions"] if x["flagged"]]
        or [{"x": "none"}])
    rep.section("No reliable match (not measured, not in the statistics)").table(
        [{"x": x["x"], "y": x["y"], "patches matched": f"{x['patches_matched']} / {x['patches']}"}
         for x in r.get("no_match_regions", [])] or [{"x": "none"}])
    return rep
