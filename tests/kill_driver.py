"""One her2 job per process, for the SIGKILL tests of test_kill_resume.py (no tests here).

    python kill_driver.py tiles MODEL IN_DIR OUT_DIR    translate_tile_folder (convnet or a tiny framework)
    python kill_driver.py slide SLIDE OUT               translate_slide with the test ConvNet
    python kill_driver.py batch CASES.csv OUT           run_batch with the test ConvNet
    python kill_driver.py batch-confidence CASES.csv OUT    run_batch --confidence, tiny pix2pix
"""

from __future__ import annotations

import sys

import torch
from test_inference_support import ConvNet

from her2core.inference.options import InferenceOptions


def framework(name: str):
    if name == "convnet":
        return ConvNet()
    from her2core.models import registry

    cls = registry.get(name)
    torch.manual_seed(0)  # the same untrained weights in every process
    return cls(cls.preset("tiny")).eval()


def main(job: str, *args: str) -> None:
    torch.set_num_threads(1)
    if job == "tiles":
        from her2core.inference.tiles import translate_tile_folder

        model, src, out = args
        translate_tile_folder(framework(model), src, out,
                              InferenceOptions(steps=2, batch_size=2, seed=0))
    elif job == "slide":
        from her2core.inference.slide import translate_slide

        slide, out = args
        translate_slide(ConvNet(), slide, out,
                        InferenceOptions(work_mpp=0.5, tile=64, overlap=16, batch_size=2))
    elif job == "batch":
        from her2core.pipelines.batch import run_batch

        cases, out = args
        run_batch(ConvNet(), cases, out,
                  InferenceOptions(work_mpp=0.5, tile=64, overlap=16, batch_size=2),
                  metric_tile=64)
    elif job == "batch-confidence":
        from her2core.inference.confidence import ConfidenceSettings
        from her2core.pipelines.batch import run_batch

        cases, out = args
        run_batch(framework("pyramid_pix2pix"), cases, out,
                  InferenceOptions(work_mpp=0.5, tile=64, overlap=16, batch_size=2),
                  confidence=ConfidenceSettings(samples=2))
    else:
        raise SystemExit(f"unknown job {job}")


if __name__ == "__main__":
    main(*sys.argv[1:])
