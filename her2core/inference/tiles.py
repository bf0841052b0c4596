"""Translate tiles: a uint8 batch in memory, or a folder of tile images to a folder of PNGs.

Pixels cross this boundary as RGB uint8 (N, H, W, 3); the framework sees float NCHW in
[-1, 1] and its `translate` runs in eval mode with EMA weights where there are any.
Outputs are rounded (the references truncated, biasing every pixel down by ½ level).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from her2core.datasets.paired import image_size, read_rgb
from her2core.errors import UserError
from her2core.inference.options import InferenceOptions
from her2core.models.diffusion.common import pad_to_multiple
from her2core.util.progress import Progress, ensure

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
    y = _translate_same_size(framework, x, steps=steps, seed=int(seed), device=dev).float()
    if not bool(torch.isfinite(y).all()):
        raise UserError(f"{getattr(framework, 'name', 'the model')}: produced NaN/inf pixels; its weights "
                        "are damaged (retrain, or resume from an earlier checkpoint)")
    y = ((y.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def _translate_same_size(framework, x: torch.Tensor, *, steps, seed: int, device) -> torch.Tensor:
    """`framework.translate(x)` with the input's (H, W), whatever the network's size multiple.

    A GAN generator with k stride-2 stages returns sizes rounded up to 2^k (a 130 x 97 tile
    came back 132 x 100): then the tile is padded (reflect) to the smallest power-of-two
    multiple the network gives back unchanged, and the output cropped. Tiles whose size the
    network keeps are translated as they are (same bytes as before).
    """
    h, w = x.shape[-2:]
    with torch.no_grad():
        y = framework.translate(x, steps=steps, generator=torch.Generator(device=device).manual_seed(seed))
        multiple = 4
        while tuple(y.shape[-2:]) != (h, w):
            if multiple > 512:
                raise UserError(f"{type(framework).__name__}: returns {tuple(y.shape[-2:])} for a "
                                f"{w} x {h} px tile; use tiles whose sides are multiples of 64")
            padded, _ = pad_to_multiple(x, multiple)
            gen = torch.Generator(device=device).manual_seed(seed)
            y = framework.translate(padded, steps=steps, generator=gen)
            if tuple(y.shape[-2:]) == tuple(padded.shape[-2:]):
                y = y[..., :h, :w]
            multiple *= 2
    return y


def translate_tile_folder(run_or_framework, in_dir, out_dir, options: InferenceOptions | None = None,
                          *, overwrite: bool = False, progress: Progress | None = None,
                          command: str = "her2 translate --tiles") -> Path:
    """One PNG per input tile in `out_dir`, same file names (suffix .png).

    `options`: steps, scheduler, batch size, seed, device and precision (the grid fields are for
    slides). `out_dir` records what wrote it (`her2core.util.outputs`: weights fingerprint, input
    folder, steps, seed, batch size) and is locked while written. A rerun of the same job
    keeps the tiles already there (a killed job resumes); another job's folder is refused
    unless `overwrite`, which clears its tiles first and translates every tile again.
    The tiles of one size are cut into fixed batches over the sorted list, batch b seeded
    with `seed + index of its first tile`; a resume re-forms the same batches (a partly
    written one is translated again whole), so the stochastic diffusion samplers give the
    same bytes as an uninterrupted run. `progress` hears `("translate", tiles done, tiles)`
    after each batch and may cancel (`Cancelled`).
    """
    from her2core.inference.model import load_translator
    from her2core.util.atomic import write_png
    from her2core.util.outputs import claim, locked

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise UserError(f"{in_dir}: tile folder not found")
    files = sorted(p for p in in_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"{in_dir}: no tile images ({', '.join(IMAGE_SUFFIXES)})")
    if out_dir.resolve() == in_dir.resolve():
        raise UserError(f"{out_dir}: output folder is the input folder; choose another --out")
    o = options or InferenceOptions()
    report = ensure(progress)
    steps, batch_size, seed = o.steps, o.batch_size, o.seed
    stems = [p.stem for p in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise UserError(f"{in_dir}: several tiles named {dupes[0]} (different suffixes); outputs would collide")
    # the one device/precision rule (util.device), as for slides
    translator = load_translator(run_or_framework, device=o.device, steps=steps,
                                 precision=o.precision, scheduler=o.scheduler)
    run_name = (str(Path(run_or_framework).resolve()) if isinstance(run_or_framework, (str, Path))
                else translator.name)
    record = {"command": command, "run": run_name, "weights_sha256": translator.fingerprint,
              "inputs": str(in_dir.resolve()), **o.to_json("steps", "seed", "batch_size"),
              "precision": translator.precision,
              "scheduler": getattr(translator.framework, "scheduler_name", None),
              "inference_mode": getattr(translator.framework, "inference_mode", None)}
    with locked(out_dir, command):
        claim(out_dir, record, overwrite=overwrite, clear=_clear_tiles)
        for part in out_dir.glob(".*.part.png"):  # a killed writer's temporaries (we hold the lock)
            part.unlink(missing_ok=True)
        batches = _fixed_batches(files, batch_size)
        target = lambda p: out_dir / f"{p.stem}.png"
        todo = [b for b in batches if overwrite or not all(target(files[i]).exists() for i in b)]
        done = len(files) - sum(len(b) for b in todo)
        report.update("translate", done, len(files))
        for b in todo:
            batch = np.stack([read_rgb(files[i]) for i in b])
            outs = translator(batch, seed + b[0])
            for i, out in zip(b, outs):
                if overwrite or not target(files[i]).exists():
                    write_png(target(files[i]), out)
            done += len(b)
            report.update("translate", done, len(files))
    return out_dir


def _fixed_batches(files: list[Path], batch_size: int) -> list[list[int]]:
    """Indices of `files` in batches of one tile size, at most `batch_size` each, in sorted
    order of their first tile; fixed by the file list alone (not by what is already done)."""
    by_size: dict[tuple, list[int]] = {}
    for i, p in enumerate(files):
        by_size.setdefault(image_size(p), []).append(i)
    batches = [ix[k:k + batch_size] for ix in by_size.values() for k in range(0, len(ix), batch_size)]
    return sorted(batches, key=lambda b: b[0])


def _clear_tiles(folder: Path) -> None:
    """Remove another job's tiles (and a killed writer's temporaries) before translating again."""
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            p.unlink()


