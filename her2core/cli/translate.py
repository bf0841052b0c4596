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
    p.add_argument("--steps", type=opt.positive_int, default=None, help="sampling steps (diffusion models)")
    p.add_argument("--scheduler", default=None,
                   help="diffusion sampler (default: the reference's; DDIB: ddim, ddim-diffusers, "
                        "dpmsolver++, euler; consistency: multistep, cm-diffusers); recorded with the output")
    p.add_argument("--batch-size", type=opt.positive_int, default=8, help="tiles per model call (default 8)")
    p.add_argument("--seed", type=opt.seed_int, default=0)
    p.add_argument("--mpp", type=opt.mpp_float, default=None,
                   help="microns per pixel of the slide when its file does not record it")
    p.add_argument("--work-mpp", type=opt.mpp_float, default=None,
                   help="microns per pixel to translate at (default: what the run was trained at)")
    p.add_argument("--tile", type=opt.positive_int, default=512, help="tile size at the working mpp (default 512)")
    p.add_argument("--overlap", type=opt.non_negative_int, default=64, help="tile overlap for blending (default 64)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CUDA that supports it, else fp32")
    p.add_argument("--device", type=opt.device, default=None, help="cuda, cuda:1, mps or cpu (default: best)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    c = p.add_argument_group("confidence maps")
    c.add_argument("--confidence", action="store_true",
                   help="also write the per-pixel confidence: OUT's .confidence.ome.tif pyramid and "
                        "per-ROI summaries (--slide), or OUT/confidence/*.png + confidence.csv (--tiles)")
    c.add_argument("--confidence-method", default="auto",
                   choices=["auto", "seeds", "tta", "dropout", "tta+dropout"],
                   help="auto: seeds for diffusion models, dihedral test-time augmentation for GANs "
                        "(+ dropout samples where the network has dropout)")
    c.add_argument("--confidence-samples", type=int, default=None,
                   help="predictions per tile K (default 4 on a CPU, 8 on a GPU)")
    c.add_argument("--runs", nargs="+", type=Path, default=[],
                   help="more runs of the same family: the confidence spans this ensemble too")


def run(args: argparse.Namespace) -> int:
    from her2core.errors import UserError

    if args.tiles is not None:
        if args.roi or args.region or args.mpp or args.work_mpp:
            raise UserError("--roi, --region, --mpp and --work-mpp apply to --slide only")
        from her2core.inference.tiles import translate_tile_folder

        translate_tile_folder(args.run, args.tiles, args.out, steps=args.steps,
                              scheduler=args.scheduler,
                              batch_size=args.batch_size, seed=args.seed, progress=True,
                              device=args.device, precision=args.precision,
                              overwrite=args.overwrite)
        print(f"wrote {args.out}")
        if args.confidence:
            from her2core.inference.confidence_out import confidence_tile_folder

            conf = confidence_tile_folder(args.run, args.tiles, args.out,
                                          settings=_confidence_settings(args), runs=args.runs,
                                          steps=args.steps, batch_size=args.batch_size,
                                          seed=args.seed, device=args.device,
                                          overwrite=args.overwrite)
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
        out = translate_slide(args.run, args.slide, args.out, roi=args.roi, region=region,
                              steps=args.steps, scheduler=args.scheduler,
                              batch_size=args.batch_size, seed=args.seed,
                              slide_mpp=args.mpp, work_mpp=args.work_mpp, tile=args.tile,
                              overlap=args.overlap, overwrite=args.overwrite, device=args.device,
                              precision=args.precision, progress=True)
        print(f"wrote {out}")
    if out is not None and (args.roi or args.region):
        _print_placement(out, args.slide)
    if args.confidence:
        from her2core.inference.confidence_out import translate_slide_confidence

        conf = translate_slide_confidence(
            args.run, args.slide, args.out, settings=_confidence_settings(args), runs=args.runs,
            roi=args.roi, region=region, steps=args.steps, batch_size=args.batch_size,
            seed=args.seed, slide_mpp=args.mpp, work_mpp=args.work_mpp, tile=args.tile,
            overlap=args.overlap, overwrite=args.overwrite, device=args.device,
            precision=args.precision, progress=True)
        if conf is not None:
            print(f"wrote {conf} (and its .confidence_rois.json)")
    return 0


def _confidence_settings(args):
    from her2core.inference.confidence import ConfidenceSettings

    return ConfidenceSettings(method=args.confidence_method, samples=args.confidence_samples)


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
