"""`her2 review HE REGISTERED --out DIR`: residual shift per region, correlation, previews, flags."""

from __future__ import annotations

import argparse

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("he", help="H&E slide")
    p.add_argument("registered", help="HER2 slide already in the H&E pixel grid (her2_registered.ome.tif)")
    p.add_argument("--out", required=True, help="output folder: review.json, review.html, preview PNGs")
    p.add_argument("--transform", default=None, help="transform.json to check for plausibility "
                   "(default: the one beside the registered slide)")
    p.add_argument("--region", type=opt.int_range(16), default=1024, help="region side, level-0 px")
    p.add_argument("--threshold-um", type=opt.positive_float, default=5.0, help="flag regions with a larger residual shift")
    p.add_argument("--min-correlation", type=opt.float_range(-1.0, 1.0), default=0.5,
                   help="a patch counts when its correlation after the shift reaches this")
    p.add_argument("--mpp", type=opt.mpp_float, default=None, help="microns per pixel of both slides, if missing")


def run(args) -> int:
    from her2core.registration import review
    from her2core.util.progress import tqdm_bars

    with tqdm_bars("region") as progress:
        r = review(args.he, args.registered, args.out, region=args.region, threshold_um=args.threshold_um,
                   min_correlation=args.min_correlation, transform=args.transform, he_mpp=args.mpp,
                   registered_mpp=args.mpp, progress=progress)
    s = r["summary"]
    print(f"{s['regions']} regions: residual shift median {s['median_shift_um']} µm, p90 {s['p90_shift_um']} µm, "
          f"max {s['max_shift_um']} µm; {s['flagged']} flagged -> {args.out}/review.html")
    for w in r["warnings"]:
        print(f"WARNING: {w}")
    return 0
