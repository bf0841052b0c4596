"""`her2 translate`: virtual HER2 for a folder of H&E tiles, a slide region or a whole slide.

    her2 translate --run RUN --tiles HE_DIR --out OUT_DIR            # one PNG per tile
    her2 translate --run RUN --slide he.ome.tif --out virtual.ome.tif [--roi rois.geojson |
                   --region x,y,w,h]                                 # pyramidal OME-TIFF

A killed slide translation resumes when run again with the same arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="run folder written by `her2 train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiles", type=Path, help="folder of H&E tiles (PNG/JPEG/TIFF)")
    src.add_argument("--slide", type=Path, help="H&E slide (OME-TIFF, TIFF, or a vendor format: .svs .mrxs .ndpi ...)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (--tiles) or virtual HER2 .ome.tif (--slide)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--roi", type=Path, help="QuPath GeoJSON: translate the ROIs' box, white outside")
    where.add_argument("--region", help="x,y,w,h in level-0 pixels of the slide")
    opt.add_inference_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    opt.add_confidence_arguments(
        p, "also write the per-pixel confidence: OUT's .confidence.ome.tif pyramid and per-ROI "
           "summaries (--slide), or OUT/confidence/*.png + confidence.csv (--tiles)")


def run(args: argparse.Namespace) -> int:
    from her2core.errors import UserError
    from her2core.util.progress import tqdm_bars

    options = opt.inference_options(args)
    if args.tiles is not None:
        if args.roi or args.region or args.mpp or args.work_mpp:
            raise UserError("--roi, --region, --mpp and --work-mpp apply to --slide only")
        from her2core.inference.tiles import translate_tile_folder

        with tqdm_bars("tile") as bars:
            translate_tile_folder(args.run, args.tiles, args.out, options,
                                  overwrite=args.overwrite, progress=bars)
        print(f"wrote {args.out}")
        if args.confidence:
            from her2core.inference.confidence_out import confidence_tile_folder

            with tqdm_bars("tile") as bars:
                conf = confidence_tile_folder(args.run, args.tiles, args.out, options,
                                              settings=opt.confidence_settings(args),
                                              runs=args.runs, overwrite=args.overwrite,
                                              progress=bars)
            print(f"wrote {conf} and {args.out / 'confidence.csv'}")
        return 0

    from her2core.inference.region import parse_region
    from her2core.inference.slide import translate_slide

    if args.out.suffix.lower() not in (".tif", ".tiff"):
        raise UserError(f"{args.out}: give a .ome.tif output path for --slide")
    region = parse_region(args.region) if args.region else None
    if args.confidence and args.out.exists() and not args.overwrite:
        out = args.out  # a rerun to resume the confidence map keeps the finished virtual slide
        print(f"kept {out}")
    else:
        with tqdm_bars("tile") as bars:
            out = translate_slide(args.run, args.slide, args.out, options, roi=args.roi,
                                  region=region, overwrite=args.overwrite, progress=bars)
        print(f"wrote {out}")
    if out is not None and (args.roi or args.region):
        _print_placement(out, args.slide)
    if args.confidence:
        from her2core.inference.confidence_out import translate_slide_confidence

        with tqdm_bars("tile") as bars:
            conf = translate_slide_confidence(
                args.run, args.slide, args.out, options, settings=opt.confidence_settings(args),
                runs=args.runs, roi=args.roi, region=region, overwrite=args.overwrite,
                progress=bars)
        if conf is not None:
            print(f"wrote {conf} (and its .confidence_rois.json)")
    return 0


def _print_placement(out: Path, slide: Path) -> None:
    """Where the region's pixels sit on the H&E, and the one command that overlays it in QuPath."""
    from her2core.slide import open_slide

    with open_slide(out) as v:
        (x0, y0), mpp = v.origin_xy, v.mpp
        src = v.properties.get("slide_mpp")
    f = mpp / src if src else 1.0
    print(f"  region: level-0 origin ({x0:g}, {y0:g}) of {slide.name}, {f:g} level-0 px per pixel "
          f"({mpp:g} µm/px); napari places it from the file")
    print(f"  QuPath: her2 qupath project --out PROJECT --image {slide} --virtual {out}")
