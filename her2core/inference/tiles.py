"""Translate tiles: a uint8 batch in memory, or a folder of tile images to a folder of PNGs.

Pixels cross this boundary as RGB uint8 (N, H, W, 3); the framework sees float NCHW in
[-1, 1] and its `translate` runs in eval mode with EMA weights where there are any.
Outputs are rounded (the references truncated, biasing every pixel down by ½ level).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from her2core.datasets.paired import read_rgb
from her2core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _device_of(framework) -> torch.device:
    p = next(iter(framework.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def inference_mode_of(run_or_framework) -> str | None:
    """How the framework runs at inference when it has a choice (pyramid pix2pix: 'reference' or
    'eval'), from a built framework or a run folder's run.json; None for frameworks without one."""
    if isinstance(run_or_framework, (str, Path)):
        from her2core.models import registry
        from her2core.training import read_run

        run = read_run(run_or_framework)
        legacy = registry.get(run["framework"]).LEGACY
        return run.get("model_config", {}).get("inference", legacy.get("inference"))
    return getattr(run_or_framework, "inference_mode", None)


def translate_batch(framework, he_uint8, *, steps: int | None = None, seed: int = 0, device=None) -> np.ndarray:
    """RGB uint8 (N, H, W, 3) H&E → RGB uint8 (N, H, W, 3) virtual HER2 (deterministic by `seed`)."""
    arr = np.asarray(he_uint8)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise UserError(f"translate_batch wants RGB uint8 (N, H, W, 3), got {arr.dtype} {arr.shape}")
    dev = torch.device(device) if device is not None else _device_of(framework)
    if _device_of(framework) != dev:
        framework.to(dev)
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    with torch.no_grad():
        y = framework.translate(x, steps=steps, generator=gen)
    y = ((y.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def translate_tile_folder(run_or_framework, in_dir, out_dir, *, steps: int | None = None, batch_size: int = 8,
                          seed: int = 0, progress: bool = True, device=None, overwrite: bool = False,
                          scheduler: str | None = None) -> Path:
    """One PNG per input tile in `out_dir`, same file names (suffix .png).

    Tiles already present in `out_dir` are kept unless `overwrite` (so a killed job resumes).
    Tiles of equal size are batched together; a batch whose first tile is number i (sorted
    order) is translated with seed `seed + i` (matters for the stochastic diffusion samplers).
    """
    from her2core.util.atomic import write_png

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise UserError(f"{in_dir}: tile folder not found")
    files = sorted(p for p in in_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"{in_dir}: no tile images ({', '.join(IMAGE_SUFFIXES)})")
    if out_dir.resolve() == in_dir.resolve():
        raise UserError(f"{out_dir}: output folder is the input folder; choose another --out")
    stems = [p.stem for p in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise UserError(f"{in_dir}: several tiles named {dupes[0]} (different suffixes); outputs would collide")
    if isinstance(run_or_framework, (str, Path)):
        from her2core.training import load_run

        framework = load_run(run_or_framework, device=device or _default_device())
    else:
        framework = run_or_framework
    if scheduler is not None:
        framework.use_scheduler(scheduler)
    todo = [(i, p) for i, p in enumerate(files) if overwrite or not (out_dir / f"{p.stem}.png").exists()]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="translate", unit="tile")
    try:
        pending: dict[tuple, list] = {}

        def flush(key):
            group = pending.pop(key)
            batch = np.stack([img for _, _, img in group])
            outs = translate_batch(framework, batch, steps=steps, seed=seed + group[0][0], device=device)
            for (_, path, _), out in zip(group, outs):
                write_png(out_dir / f"{path.stem}.png", out)
            if bar is not None:
                bar.update(len(group))

        for i, path in todo:
            img = read_rgb(path)
            key = img.shape
            pending.setdefault(key, []).append((i, path, img))
            if len(pending[key]) >= batch_size:
                flush(key)
        for key in list(pending):
            flush(key)
    finally:
        if bar is not None:
            bar.close()
    return out_dir


def _default_device():
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
