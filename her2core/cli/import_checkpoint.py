"""`her2 import`: turn a checkpoint written by a reference repository into a her2 run folder.

    her2 import pyramid_pix2pix latest_net_G.pth --out runs/bci_p2p          # BCI PyramidPix2pix
    her2 import asp latest_net_G.pth --out runs/asp
    her2 import bcistainer model_best_psnr.pth --out runs/bcistainer         # or ckpt-000150.pth
    her2 import bbdm last_model.pth --out runs/bbdm                          # model + EMA weights
    her2 import ddib ema_he.pt ema_ihc.pt --out runs/ddib                    # H&E model, HER2 model
    her2 import consistency ema_0.9999432189950708_800000.pt --out runs/cm

The network settings come from --preset (default `paper`, the reference configurations) and
--set KEY=VALUE (dotted for nested settings: --set unet.model_channels=192). The files are
read with torch.load(weights_only=True) only. The run records each file's path and sha256.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from her2core.cli import options as opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("framework", help="pyramid_pix2pix, asp, bcistainer, bbdm, ddib or consistency")
    p.add_argument("checkpoint", nargs="+", type=Path,
                   help="reference checkpoint file(s); ddib takes two: the H&E model, then the HER2 model")
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument("--preset", type=opt.preset, default="paper", help="settings the checkpoint was trained with (default paper)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one setting of the preset (JSON value), e.g. --set ngf=32")
    p.add_argument("--mpp", type=opt.mpp_float, default=None,
                   help="microns per pixel the checkpoint was trained at (recorded; slides are then "
                        "translated at that scale)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")


def run(args: argparse.Namespace) -> int:
    from her2core.cli.train import _overrides
    from her2core.training.import_run import import_checkpoint

    out = import_checkpoint(args.framework, args.checkpoint, args.out, preset=args.preset,
                            overrides=_overrides(args.set), mpp=args.mpp, overwrite=args.overwrite)
    print(f"run: {out}")
    return 0
