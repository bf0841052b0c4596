"""`her2 register HE HER2 --out DIR`: move the HER2 slide onto the H&E slide, write transform + review."""

from __future__ import annotations

import argparse

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("he", help="H&E slide (the fixed one)")
    p.add_argument("her2", help="HER2 IHC slide (moved onto the H&E slide)")
    p.add_argument("--out", required=True, help="output folder: transform.json, her2_registered.ome.tif, review")
    p.add_argument("--mpp", type=opt.mpp_float, default=None, help="microns per pixel of both slides, if missing")
    p.add_argument("--he-mpp", type=opt.mpp_float, default=None, help="microns per pixel of the H&E slide")
    p.add_argument("--her2-mpp", type=opt.mpp_float, default=None, help="microns per pixel of the HER2 slide")
    p.add_argument("--max-rotation", type=opt.float_range(0.0, 180.0), default=180.0, help="search rotations up to +/- this (deg)")
    p.add_argument("--no-field", action="store_true", help="affine only, no local displacement field")
    p.add_argument("--no-image", action="store_true", help="write the transform only (no registered slide)")
    p.add_argument("--review-region", type=opt.int_range(16), default=1024, help="review region side, level-0 px")
    p.add_argument("--threshold-um", type=opt.positive_float, default=5.0, help="review flags regions shifted more")
    p.add_argument("--seed", type=opt.seed_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a registration already in --out")


def run(args) -> int:
    from her2core.registration import RegistrationConfig, register
    from her2core.util.progress import tqdm_bars

    cfg = RegistrationConfig(max_rotation=args.max_rotation, review_region=args.review_region,
                             review_threshold_um=args.threshold_um, seed=args.seed)
    if args.no_field:
        cfg.field_passes, cfg.dense = (), False
    with tqdm_bars("step") as progress:
        res = register(args.he, args.her2, args.out, he_mpp=args.he_mpp or args.mpp,
                       her2_mpp=args.her2_mpp or args.mpp, config=cfg, write_image=not args.no_image,
                       progress=progress, overwrite=args.overwrite)
    print(f"transform: {res.transform_path}")
    if res.registered_path:
        print(f"registered HER2: {res.registered_path}")
    if res.review:
        s = res.review["summary"]
        print(f"review: {s['regions']} regions, residual shift median {s['median_shift_um']} µm, "
              f"p90 {s['p90_shift_um']} µm, {s['flagged']} flagged -> {args.out}/review.html")
    for w in res.warnings:
        print(f"WARNING: implausible transform: {w}")
    return 0
