"""The one place where a device and a numeric precision are chosen, for training, inference and
evaluation alike (frameworks take no decision of their own: they run under `autocast`).

    dev = resolve_device("auto")            # CUDA (this rank's under torchrun), else MPS, else CPU
    prec = resolve_precision("auto", dev)   # bf16 on a CUDA GPU that has it, else fp32
    with autocast(dev, prec): ...
"""

from __future__ import annotations

import contextlib
import os

from her2core.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(spec=None, *, local_rank: int | None = None):
    """torch.device of `spec` ("auto"/None, "cpu", "cuda", "cuda:N", "mps", or a torch.device);
    a UserError when it is unknown or not present here. A bare "cuda" means this rank's GPU."""
    import torch

    rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else int(local_rank)
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {spec}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available here; use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", rank % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UserError(f"--device {spec}: MPS is not available here; use --device cpu or auto")
    elif dev.type != "cpu":
        raise UserError(f"--device {spec}: unsupported device type; use auto, cpu, cuda or mps")
    return dev


def resolve_precision(spec: str, device) -> str:
    """'fp32' | 'bf16' | 'fp16' for `device` ('auto': bf16 on a CUDA GPU that supports it)."""
    import torch

    if spec not in PRECISIONS:
        raise UserError(f"--precision {spec}: use fp32, bf16, fp16 or auto")
    if spec == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if spec == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return spec


def autocast(device, precision: str):
    """Autocast context of a resolved precision (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
