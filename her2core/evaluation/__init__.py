"""Evaluation: pixel, perceptual, distribution and DAB metrics; mixed-effects comparison; report.

Modules: `pixel` (psnr, ssim, ssim_gaussian, ms_ssim; batched), `perceptual` (LPIPS),
`distribution` (FID, KID), `pathology` (DAB metrics, HER2 proxy), `pairs` (folder
pairing and checks), `evaluate` (per_image.csv + set_metrics.json), `mixed` + `lmm`
(crossed random intercepts by REML, Satterthwaite t tests as lmerTest), `figures`, `report` (HTML builder). Imports are lazy.
"""

from __future__ import annotations


def compare(eval_dirs, out_dir, **kwargs) -> dict:
    """Mixed-effects comparison of evaluation folders (see her2core.evaluation.mixed)."""
    from her2core.evaluation.mixed import compare as _compare

    return _compare(eval_dirs, out_dir, **kwargs)


def evaluate_folders(pred_dir, target_dir, out_dir, settings=None, **kwargs) -> dict:
    """per_image.csv + set_metrics.json of virtual vs real tiles (see her2core.evaluation.evaluate)."""
    from her2core.evaluation.evaluate import evaluate_folders as _ev

    return _ev(pred_dir, target_dir, out_dir, settings, **kwargs)


def __getattr__(name):
    import importlib

    if name in ("pixel", "perceptual", "distribution", "pathology", "pairs", "figures", "report"):
        return importlib.import_module(f"her2core.evaluation.{name}")
    if name in ("psnr", "ssim", "ssim_gaussian", "ms_ssim"):
        return getattr(importlib.import_module("her2core.evaluation.pixel"), name)
    raise AttributeError(name)
