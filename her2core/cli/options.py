"""Validated option types: every numeric/enum option of `her2` is checked by argparse, in one place.

Each helper is an argparse `type=` callable; a bad value becomes one argparse line naming the
option and the allowed range (`her2 train: error: argument --crop: 0 is not allowed: a whole
number >= 1`), exit status 2, before any work starts. `OneLineParser` keeps argparse's
errors to that one line (no usage block), as every other bad input of `her2` is reported.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from her2core.inference.options import CONFIDENCE_METHODS, InferenceOptions
from her2core.util.device import PRECISIONS

#: Presets every framework has (her2core.models.base.Framework.presets).
PRESETS = ("tiny", "paper")
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


class OptionError(Exception):
    """A bad command line, already reported on stderr; `her2core.cli.main` returns 2 for it."""

    exit_code = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), then OptionError."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise OptionError(message)


def _refuse(text: str, allowed: str):
    return argparse.ArgumentTypeError(f"{text!r} is not allowed: {allowed}")


def int_range(lo: int | None = None, hi: int | None = None):
    """A whole number within [lo, hi] (either bound may be open)."""
    if lo is not None and hi is not None:
        allowed = f"a whole number from {lo} to {hi}"
    elif lo is not None:
        allowed = f"a whole number >= {lo}"
    elif hi is not None:
        allowed = f"a whole number <= {hi}"
    else:
        allowed = "a whole number"

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise _refuse(text, allowed) from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _refuse(text, allowed)
        return value

    parse.__name__ = "int"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, what: str = "a finite number"):
    """A finite float within lo..hi; `lo_open`/`hi_open` exclude the bound itself."""
    bounds = []
    if lo is not None and hi is not None and not (lo_open or hi_open):
        bounds.append(f"from {lo:g} to {hi:g}")
    elif lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None and (lo is None or lo_open or hi_open):
        bounds.append(f"{'<' if hi_open else '<='} {hi:g}")
    allowed = what + (f" {' and '.join(bounds)}" if bounds else "")

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise _refuse(text, allowed) from None
        if not math.isfinite(value):
            raise _refuse(text, allowed)
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise _refuse(text, allowed)
        if hi is not None and (value > hi or (hi_open and value == hi)):
            raise _refuse(text, allowed)
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
seed_int = int_range(0, 2**32 - 1)
positive_float = float_range(0.0, lo_open=True)
non_negative_float = float_range(0.0)
finite_float = float_range()
fraction = float_range(0.0, 1.0, what="a fraction")



def mpp_float(text: str) -> float:
    """Microns per pixel within her2core.slide.mpp.MPP_RANGE (imported here: `her2 --help` stays
    free of numpy)."""
    from her2core.slide.mpp import MPP_RANGE

    return float_range(*MPP_RANGE, what="microns per pixel")(text)


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def device(text: str) -> str | None:
    """cpu, cuda, cuda:N or mps that exists here; None for auto (every command's default: the best)."""
    value = str(text).strip().lower()
    if not _DEVICE.match(value):
        raise _refuse(text, f"choose {DEVICE_HELP}")
    if value == "auto":
        return None
    if value.startswith("cuda") or value == "mps":
        import torch

        if value == "mps" and not torch.backends.mps.is_available():
            raise _refuse(text, "MPS is not available here; use cpu or auto")
        if value.startswith("cuda"):
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(value.partition(":")[2] or 0)
            if index >= n:
                have = f"{n} CUDA device(s)" if n else "no CUDA device"
                raise _refuse(text, f"this machine has {have}; use cpu or auto")
    return value


def preset(text: str) -> str:
    """One of the presets every framework has."""
    if text not in PRESETS:
        raise _refuse(text, f"choose {' or '.join(PRESETS)}")
    return text


# --------------------------------------------------------------------------- inference options
# `her2 translate` and `her2 batch` add these with one call and build one InferenceOptions
# (her2core.inference.options) from them: names, defaults and range checks live here once.



def add_inference_arguments(p: argparse.ArgumentParser, *, slide_mpp: bool = True,
                            device_help: str = "cuda, cuda:1, mps or cpu (default: best)") -> None:
    """The options of InferenceOptions; `slide_mpp`: also `--mpp` (one slide's µm/px)."""
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampling steps (diffusion models)")
    p.add_argument("--scheduler", default=None,
                   help="diffusion sampler (default: the reference's; DDIB: ddim, ddim-diffusers, "
                        "dpmsolver++, euler; consistency: multistep, cm-diffusers); recorded with "
                        "the output")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="tiles per model call (default 8)")
    p.add_argument("--seed", type=seed_int, default=0)
    if slide_mpp:
        p.add_argument("--mpp", type=mpp_float, default=None,
                       help="microns per pixel of the slide when its file does not record it")
    p.add_argument("--work-mpp", type=mpp_float, default=None,
                   help="microns per pixel to translate at (default: what the run was trained at)")
    p.add_argument("--tile", type=positive_int, default=512,
                   help="tile size at the working mpp (default 512)")
    p.add_argument("--overlap", type=non_negative_int, default=64,
                   help="tile overlap for blending (default 64)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 on CUDA that supports it, else fp32")
    p.add_argument("--device", type=device, default=None, help=device_help)
    p.add_argument("--workers", type=int_range(1, 64), default=None,
                   help="CPU threads of the slide pipeline, shared by reading, blending and "
                        "pyramid encoding (default: the cores, up to 8)")


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The InferenceOptions of parsed `add_inference_arguments` options."""
    return InferenceOptions(steps=args.steps, scheduler=args.scheduler,
                            batch_size=args.batch_size, seed=args.seed,
                            slide_mpp=getattr(args, "mpp", None), work_mpp=args.work_mpp,
                            tile=args.tile, overlap=args.overlap, device=args.device,
                            precision=args.precision, workers=getattr(args, "workers", None))


def add_confidence_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """`--confidence` (what it writes: `what`), its method, K and ensemble runs."""
    c = p.add_argument_group("confidence maps")
    c.add_argument("--confidence", action="store_true", help=what)
    c.add_argument("--confidence-method", default="auto", choices=CONFIDENCE_METHODS,
                   help="auto: seeds for diffusion models, dihedral test-time augmentation for GANs "
                        "(+ dropout samples where the network has dropout)")
    c.add_argument("--confidence-samples", type=int_range(2), default=None,
                   help="predictions per tile K (default 4 on a CPU, 8 on a GPU)")
    c.add_argument("--runs", nargs="+", type=Path, default=[],
                   help="more runs of the same family: the confidence spans this ensemble too")


def confidence_settings(args: argparse.Namespace):
    """The ConfidenceSettings of parsed `add_confidence_arguments` options."""
    from her2core.inference.confidence import ConfidenceSettings

    return ConfidenceSettings(method=args.confidence_method, samples=args.confidence_samples)
