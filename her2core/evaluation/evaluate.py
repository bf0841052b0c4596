"""Evaluate a folder of virtual tiles against real ones: per_image.csv + set_metrics.json.

Streams the pairs in batches (bounded memory), computes the pixel metrics batched
(GPU when there is one, same numbers on the CPU), LPIPS when its weights exist,
the DAB metrics per pair and Inception features for FID/KID, and writes both
outputs atomically with every setting recorded.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.evaluation import pairs as pairing
from her2core.evaluation import pixel
from her2core.evaluation.pathology import DabSettings, cohen_kappa
from her2core.evaluation.tile_metrics import PIXEL_COLUMNS, tile_metrics
from her2core.util.hashing import sha256_file
from her2core.util.progress import Progress, ensure

#: a row's identity: the tile (`image`, its name in the test set), the model, its framework, the
#: model's training `dataset`, and the evaluated `test_set` (her2 compare crosses tiles of a test set)
ID_COLUMNS = ["image", "model", "framework", "dataset", "test_set"]
DAB_COLUMNS = ["dab_od_mae", "iod_ratio", "dab_grid_r", "dab_pos_frac_virtual",
               "dab_pos_frac_real", "her2_proxy_virtual", "her2_proxy_real"]
DEFAULT_MPP = 0.5  # the study's working scale (HER2match 1024^2 at 0.25 um/px halved)


@dataclass
class EvalSettings:
    model: str = ""
    framework: str = ""
    dataset: str = ""  # the model's training dataset ('' when unknown)
    test_set: str = ""  # the evaluated test set ('' -> the target folder's name, or DATA/SPLIT)
    mpp: float | None = None  # None -> DEFAULT_MPP, recorded as such
    device: str | None = None  # None -> cuda when present, else cpu
    batch_size: int = 8
    lpips_weights: str | None = None
    inception_weights: str | None = None
    set_metrics: bool = True  # FID/KID
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    dab: DabSettings = field(default_factory=DabSettings)
    inference_mode: str | None = None  # pyramid pix2pix: 'reference' (test.py without --eval) or 'eval'


def framework_of(model: str) -> str:
    """'gan' or 'dm' when `model` names a registered framework, else '' (a run name, say)."""
    from her2core.models import registry

    key = model.lower().replace("-", "_")
    return registry.family(key) if key in registry.names() else ""


def evaluate_folders(pred_dir, target_dir, out_dir, settings: EvalSettings | None = None, *,
                     he_dir=None, progress: Progress | None = None, log: Callable[[str], None] = print,
                     extra_columns: dict[str, dict[str, object]] | None = None) -> dict:
    """Write out_dir/per_image.csv and out_dir/set_metrics.json; return the set metrics.

    `extra_columns` maps column name -> {image name: value} (e.g. the dataset's HER2 label).
    `progress` hears `("evaluate", batches done, batches)`.
    """
    import pandas as pd
    import torch

    from her2core.util.atomic import atomic_path, write_json

    s = settings or EvalSettings()
    pairs = pairing.pair_folders(pred_dir, target_dir)
    pairing.check_pairs(pairs)  # every header first: bad input fails before any work
    if s.framework and s.framework not in ("gan", "dm"):
        raise UserError(f"--framework {s.framework}: choose gan or dm")
    framework = s.framework or framework_of(s.model)
    test_set = s.test_set or Path(target_dir).resolve().name
    mpp = float(s.mpp) if s.mpp else DEFAULT_MPP
    device = s.device or pixel.default_device()
    tdev = torch.device(device)
    pix_dev = "cpu" if tdev.type == "cpu" else tdev

    from her2core.evaluation import perceptual

    lp_path = perceptual.find_alexnet_weights(s.lpips_weights)
    lp_model = None
    notes = []
    if lp_path is None:
        msg = perceptual.lpips_missing_message()
        notes.append(msg)
        log(msg)
    else:
        lp_model = perceptual.load_lpips(lp_path, device=tdev)

    inception = None
    if s.set_metrics:
        from her2core.evaluation import distribution

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            inception = distribution.load_inception(s.inception_weights, device=tdev)

    rows, feats_v, feats_r = [], [], []
    shape = None
    batches = range(0, len(pairs), s.batch_size)
    report = ensure(progress)
    for done, start in enumerate(batches):
        report.update("evaluate", done, len(batches))
        chunk = pairs[start:start + s.batch_size]
        imgs = [pairing.read_pair(p, t) for _, p, t in chunk]
        for (name, p, t), (a, _) in zip(chunk, imgs):
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise UserError(f"{p}: {a.shape[1]}x{a.shape[0]} differs from the other tiles "
                                f"({shape[1]}x{shape[0]}); evaluate one tile size at a time")
        pv = np.stack([a for a, _ in imgs])
        rv = np.stack([b for _, b in imgs])
        extra = {}
        if lp_model is not None:
            extra["lpips"] = perceptual.lpips_batch(lp_model, pv, rv, device=tdev)
        metrics = tile_metrics(pv, rv, mpp, dab=s.dab, device=pix_dev, extra=extra)
        if inception is not None:
            feats_v.append(inception(pv, device=tdev))
            feats_r.append(inception(rv, device=tdev))
        for i, (name, _, _) in enumerate(chunk):
            row = {"image": name, "model": s.model, "framework": framework, "dataset": s.dataset,
                   "test_set": test_set}
            row.update(metrics[i])
            for col, values in (extra_columns or {}).items():
                row[col] = values.get(name)
            rows.append(row)

    report.update("evaluate", len(batches), len(batches))
    df = pd.DataFrame(rows)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "per_image.csv") as tmp:
        df.to_csv(tmp, index=False)

    result = {
        "n": len(df),
        "resolution": {"height": int(shape[0]), "width": int(shape[1])},
        "mpp": mpp,
        "mpp_source": "given" if s.mpp else f"default ({DEFAULT_MPP} um/px, the study's working scale)",
        "model": s.model, "framework": framework, "dataset": s.dataset, "test_set": test_set,
        "pred_dir": str(Path(pred_dir).resolve()), "target_dir": str(Path(target_dir).resolve()),
        "he_dir": str(Path(he_dir).resolve()) if he_dir else None,
        "means": {c: _finite_mean(df[c]) for c in df.columns if c not in ID_COLUMNS
                  and pd.api.types.is_numeric_dtype(df[c])},
        "her2_proxy_kappa": cohen_kappa(df.her2_proxy_virtual, df.her2_proxy_real),
        "her2_proxy_kappa_quadratic": cohen_kappa(df.her2_proxy_virtual, df.her2_proxy_real,
                                                  weights="quadratic"),
        "her2_proxy_agreement": float((df.her2_proxy_virtual == df.her2_proxy_real).mean()),
        "notes": notes,
        "settings": {
            **{k: v for k, v in asdict(s).items() if k != "dab"},
            "device": device, "dab": s.dab.to_dict(),
            "psnr": "per-image 10 log10(255^2/MSE), RGB uint8, averaged over images",
            "ssim": "skimage structural_similarity defaults: 7x7 uniform, sample covariance, "
                    "channel_axis=-1, data_range=255",
            "ssim_gaussian": "Wang et al.: Gaussian sigma 1.5 (11x11), population covariance, "
                             "data_range=255",
            "ms_ssim": {"algorithm": "torchmetrics MS-SSIM (11x11 Gaussian sigma 1.5, relu)",
                        "scales": pixel.ms_ssim_scales(shape[0], shape[1]),
                        "betas": list(pixel.ms_ssim_betas(pixel.ms_ssim_scales(shape[0], shape[1])))},
            "lpips": ({"net": "alex", "version": "0.1", "backbone_weights": str(lp_path)}
                      if lp_path else None),
        },
    }
    if inception is not None:
        from her2core.evaluation import distribution as dist

        fv, fr = np.concatenate(feats_v), np.concatenate(feats_r)
        if len(fv) >= 2:
            kid_m, kid_s, m = dist.kid_from_features(fv, fr, s.kid_subsets, s.kid_subset_size, s.seed)
            result.update(fid=dist.fid_from_features(fv, fr), kid_mean=kid_m, kid_std=kid_s)
            result["settings"]["fid_kid"] = {
                "features": "Inception-v3 pool3, 2048-d", "weights": inception.source,
                "weights_sha256": sha256_file(Path(inception.source)),
                "preprocess": "uint8 -> [-1,1], bilinear resize to 299x299",
                "kid_kernel": "(x.y/2048 + 1)^3", "kid_subsets": s.kid_subsets,
                "kid_subset_size_used": m, "n_virtual": len(fv), "n_real": len(fr)}
        else:
            notes.append("FID/KID left out: they need at least 2 images")
    write_json(out_dir / "set_metrics.json", result)
    return result


def _training_dataset(run_dir) -> str:
    """Name of the dataset a `her2 train` run folder was trained on (run.json), else ''."""
    import json

    try:
        root = json.loads((Path(run_dir) / "run.json").read_text())["data"]["root"]
    except (TypeError, OSError, ValueError, KeyError):
        return ""
    return Path(root).name


def _finite_mean(col) -> float | None:
    v = np.asarray(col, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def evaluate_run(run_dir, data_root, split, out_dir, settings: EvalSettings | None = None, *,
                 progress: Progress | None = None, log: Callable[[str], None] = print,
                 steps: int | None = None,
                 overwrite: bool = False) -> dict:
    """Translate a dataset split's H&E tiles with a trained run, then evaluate them.

    `run_dir`: a `her2 train` run folder, or an already built framework (tests, the demo).
    The split's pairs are linked into out_dir/inputs/{he,ihc} under the H&E name, the
    virtual tiles go to out_dir/virtual, and the dataset's HER2 score becomes the
    `her2_label` column when known. out_dir records the run's fingerprint, the dataset and the
    split (`her2core.util.outputs`): the same evaluation resumes, another one is refused unless
    `overwrite` (which first removes the old inputs, virtual tiles and tables). `progress` hears
    the translation and the evaluation.
    """
    from her2core.util.outputs import locked

    with locked(out_dir, "her2 evaluate --run"):
        return _evaluate_run(run_dir, data_root, split, Path(out_dir), settings, progress=progress,
                             log=log, steps=steps, overwrite=overwrite)


def _clear_evaluation(out_dir: Path) -> None:
    import shutil

    for name in ("inputs", "virtual"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("per_image.csv", "set_metrics.json"):
        (out_dir / name).unlink(missing_ok=True)


def _evaluate_run(run_dir, data_root, split, out_dir: Path, settings, *, progress, log, steps,
                  overwrite) -> dict:
    from her2core.datasets import open_paired  # lazy: only this path needs datasets/inference
    from her2core.inference.options import InferenceOptions
    from her2core.inference.tiles import translate_tile_folder
    from her2core.util.outputs import claim

    s = settings or EvalSettings()
    ds = open_paired(data_root, split)
    if not ds.pairs:
        raise UserError(f"{data_root}: split '{split}' has no tile pairs")
    if isinstance(run_dir, (str, Path)):
        from her2core.training.runs import run_fingerprint

        run_name, run_sha = str(Path(run_dir).resolve()), run_fingerprint(run_dir)
    else:
        from her2core.inference.model import weights_fingerprint

        run_name, run_sha = getattr(run_dir, "name", type(run_dir).__name__), weights_fingerprint(run_dir)
    claim(out_dir, {"command": "her2 evaluate --run", "run": run_name, "run_sha256": run_sha,
                    "data": str(Path(data_root).resolve()), "split": split, "steps": steps},
          overwrite=overwrite, clear=_clear_evaluation)
    he_dir, ihc_dir = out_dir / "inputs" / "he", out_dir / "inputs" / "ihc"
    labels = {}
    for d in (he_dir, ihc_dir):
        d.mkdir(parents=True, exist_ok=True)
    for he, ihc, score in ds.pairs:  # one flat folder per side, linked by the H&E name
        for src, d in ((Path(he), he_dir), (Path(ihc), ihc_dir)):
            link = d / (Path(he).stem + src.suffix)
            if not link.exists():  # relative: the folder tree can be moved as a whole
                link.symlink_to(os.path.relpath(src.resolve(), link.parent.resolve()))
        if score is not None and int(score) >= 0:
            labels[Path(he).stem] = int(score)
    virtual = out_dir / "virtual"
    # scored in fp32 as the reference evaluations are; the device is the metrics' device
    translate_tile_folder(run_dir, he_dir, virtual,
                          InferenceOptions(steps=steps, device=s.device, precision="fp32"),
                          progress=progress, command="her2 evaluate --run")
    if s.inference_mode is None:
        from her2core.inference.tiles import inference_mode_of

        s.inference_mode = inference_mode_of(run_dir)
    if not s.model:
        is_path = isinstance(run_dir, (str, Path))
        s.model = Path(run_dir).name if is_path else getattr(run_dir, "name", type(run_dir).__name__)
        if not s.framework:
            s.framework = "" if is_path else getattr(run_dir, "family", "")
    if not s.dataset:  # the training dataset recorded by `her2 train`, not the evaluated one
        s.dataset = _training_dataset(run_dir)
    if not s.test_set:
        s.test_set = f"{Path(data_root).name}/{split}"
    if s.mpp is None:
        s.mpp = getattr(ds, "mpp", None)
    extra = {"her2_label": labels} if labels else None
    result = evaluate_folders(virtual, ihc_dir, out_dir, s, he_dir=he_dir, progress=progress,
                              log=log, extra_columns=extra)
    return result


__all__ = [
    "DAB_COLUMNS",
    "ID_COLUMNS",
    "PIXEL_COLUMNS",
    "EvalSettings",
    "evaluate_folders",
    "evaluate_run",
    "framework_of",
]
