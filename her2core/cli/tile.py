"""`her2 tile`: a paired tile dataset (tissue ∩ ROIs, QC, case-stratified splits, manifest).

Cases CSV (the same file `her2 batch` reads; header row; paths relative to the CSV): case, he,
her2_registered (or her2 and transform), her2_score (0, 1+, 2+, 3+), optional rois (QuPath GeoJSON
on the H&E slide), optional mode.
"""

from __future__ import annotations

import argparse

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    src = p.add_argument_group("input (a cases CSV, or one case)")
    src.add_argument("--cases", help="CSV of cases (see above)")
    src.add_argument("--he", help="H&E slide of a single case")
    src.add_argument("--her2-registered", help="registered HER2 slide of a single case")
    src.add_argument("--her2", help="original HER2 slide of a single case (with --transform)")
    src.add_argument("--transform", help="transform.json of a single case (with --her2)")
    src.add_argument("--case", default="case", help="case id of a single case")
    src.add_argument("--score", default=None, help="HER2 score of a single case (0, 1+, 2+, 3+)")
    src.add_argument("--rois", help="QuPath GeoJSON ROIs of a single case")
    src.add_argument("--split", choices=("train", "val", "test"), help="split of a single case")
    p.add_argument("--out", required=True, help="dataset folder (re-running resumes)")
    p.add_argument("--splits", help="fixed case -> split file (JSON {'splits': {...}} or CSV case,split); "
                   "use the splits.json of another dataset to get the same splits")
    p.add_argument("--seed", type=opt.seed_int, default=0, help="seed of the case-stratified split")
    p.add_argument("--require-review", action="store_true",
                   help="refuse cases whose registration no person accepted (review_decision.json, "
                        "written by the napari registration widget)")
    p.add_argument("--config", help="TileConfig JSON (e.g. a tile_config.json); options below override it")
    g = p.add_argument_group("tiles")
    g.add_argument("--tile-px", type=opt.int_range(16), help="tile side at the source scale (default 1024)")
    g.add_argument("--source-mpp", type=opt.mpp_float, help="µm/px of the source scale (default 0.25)")
    g.add_argument("--out-px", type=opt.int_range(16), help="written tile side (default 512)")
    g.add_argument("--out-mpp", type=opt.mpp_float, help="µm/px of written tiles (default 0.5)")
    g.add_argument("--stride-px", type=opt.positive_int, help="step between tiles at the source scale (default: tile)")
    g.add_argument("--min-coverage", type=opt.fraction, help="share of tissue ∩ ROI a tile needs (default 0.5)")
    g.add_argument("--tissue-channel", choices=("saturation", "od"))
    g.add_argument("--tissue-threshold", type=opt.finite_float, help="fixed tissue threshold (default Otsu)")
    g.add_argument("--min-tissue-area-um2", type=opt.non_negative_float)
    q = p.add_argument_group("tile QC")
    q.add_argument("--max-background", type=opt.fraction)
    q.add_argument("--max-blur", type=opt.fraction)
    q.add_argument("--max-dark", type=opt.fraction)
    q.add_argument("--max-ink", type=opt.fraction)
    q.add_argument("--max-shift-um", type=opt.non_negative_float, help="residual shift limit in µm (0 = off; consecutive "
                   "sections: 0 or ~20 with --shift-smooth-um 6)")
    q.add_argument("--shift-smooth-um", type=opt.non_negative_float)
    p.add_argument("--mpp", type=opt.mpp_float, default=None, help="microns per pixel of slides that lack it")
    p.add_argument("--workers", type=opt.int_range(1, 64), default=1, help="tiles read/written in parallel threads")


def build_config(args):
    from her2core.tiling import TileConfig
    from her2core.util.configs import load, replace

    cfg = load(TileConfig, args.config) if args.config else TileConfig()
    top = {"tile_px": args.tile_px, "source_mpp": args.source_mpp, "out_px": args.out_px,
           "out_mpp": args.out_mpp, "stride_px": args.stride_px, "min_coverage": args.min_coverage,
           "seed": args.seed}
    cfg = replace(cfg, **{k: v for k, v in top.items() if v is not None})
    if args.out_px is None and args.tile_px is not None and args.out_mpp is None:
        # keep the physical size: default working scale is 0.5 µm/px
        cfg.out_px = round(cfg.tile_px * cfg.source_mpp / cfg.out_mpp)
    tis = {"channel": args.tissue_channel, "threshold": args.tissue_threshold,
           "min_area_um2": args.min_tissue_area_um2}
    cfg.tissue = replace(cfg.tissue, **{k: v for k, v in tis.items() if v is not None})
    qc = {"max_background": args.max_background, "max_blur": args.max_blur, "max_dark": args.max_dark,
          "max_ink": args.max_ink, "max_shift_um": args.max_shift_um, "shift_smooth_um": args.shift_smooth_um}
    cfg.qc = replace(cfg.qc, **{k: v for k, v in qc.items() if v is not None})
    return cfg


def run(args) -> int:
    from pathlib import Path

    from her2core.errors import UserError
    from her2core.tiling import Case, build_dataset, read_cases_csv
    from her2core.util.progress import tqdm_bars

    splits = args.splits
    if args.cases:
        cases = read_cases_csv(args.cases)
    elif args.he:
        if args.score is None:
            raise UserError("--score is needed with --he (HER2 score of the case: 0, 1+, 2+ or 3+)")
        p = lambda v: Path(v) if v else None
        cases = [Case(case=args.case, he=Path(args.he), her2_score=args.score,
                      her2_registered=p(args.her2_registered), her2=p(args.her2), transform=p(args.transform),
                      rois=p(args.rois)).check("her2 tile")]
        if splits is None:
            if args.split is None:
                raise UserError("one case cannot be split by case; give --split train|val|test or --splits FILE")
            splits = {args.case: args.split}
    else:
        raise UserError("give --cases CSV, or --he with --her2-registered (or --her2 and --transform)")
    cfg = build_config(args)
    with tqdm_bars("tile") as progress:
        s = build_dataset(cases, args.out, cfg, splits=splits, mpp=args.mpp, workers=args.workers,
                          require_review=args.require_review,
                          progress=progress)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["reasons"].items())) or "none"
    print(f"{s['kept']} of {s['candidates']} tiles kept (train {s['per_split']['train']}, val "
          f"{s['per_split']['val']}, test {s['per_split']['test']}); dropped: {reasons} -> {args.out}/manifest.csv")
    return 0
