"""Evaluation speed: reference-compatible PSNR + SSIM, batched vs a per-image scikit-image loop.

200 pairs of synthetic 1024x1024 RGB tiles (generated batch by batch, so memory
stays bounded); the same pairs go through
  (a) the reference scripts' loop: skimage peak_signal_noise_ratio + structural_similarity
      (channel_axis=-1, data_range=255) per image, and
  (b) her2core.evaluation.pixel.psnr_batch + ssim_batch (exact integer box sums;
      torch on the GPU when there is one).
Prints both speeds and their ratio, and asserts the numbers are equal (|diff| < 1e-6).

    python benchmarks/eval_speed.py [--pairs 200] [--size 1024] [--batch 8] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_batch(rng, n, size):
    """Smooth 'tissue' plus noise as target; a blurred, shifted, noisy copy as prediction."""
    from scipy import ndimage as ndi

    base = rng.normal(0, 1, (n, size // 8, size // 8, 3))
    base = ndi.zoom(base, (1, 8, 8, 1), order=1)
    target = np.clip(160 + 40 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    pred = np.roll(target, 2, axis=2).astype(np.float32) * 0.9 + 20 + rng.normal(0, 15, target.shape)
    return np.clip(pred, 0, 255).astype(np.uint8), target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from her2core.evaluation import pixel

    device = args.device or pixel.default_device()
    dev = "cpu" if device == "cpu" else __import__("torch").device(device)
    rng = np.random.default_rng(args.seed)
    t_ref = t_new = 0.0
    max_diff = 0.0
    done = 0
    while done < args.pairs:
        n = min(args.batch, args.pairs - done)
        pred, target = make_batch(rng, n, args.size)
        t0 = time.perf_counter()
        ref = np.array([pixel.reference_psnr_ssim(pred[i], target[i]) for i in range(n)])
        t1 = time.perf_counter()
        new = np.stack([pixel.psnr_batch(pred, target, device=dev),
                        pixel.ssim_batch(pred, target, device=dev)], 1)
        t2 = time.perf_counter()
        t_ref += t1 - t0
        t_new += t2 - t1
        max_diff = max(max_diff, float(np.abs(ref - new).max()))
        done += n
    print(f"{args.pairs} pairs of {args.size}^2 RGB tiles, device {device}")
    print(f"per-image skimage loop (reference scripts): {t_ref:.2f} s  ({args.pairs / t_ref:.2f} pairs/s)")
    print(f"batched reference-compatible:               {t_new:.2f} s  ({args.pairs / t_new:.2f} pairs/s)")
    print(f"speed-up: {t_ref / t_new:.2f}x   max |difference| in PSNR/SSIM: {max_diff:.2e}")
    assert max_diff < 1e-6, "numbers differ from the reference loop"
    print("numbers equal (|diff| < 1e-6)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
