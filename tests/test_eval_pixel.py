"""Pixel metrics equal scikit-image (reference scripts) and torchmetrics (MS-SSIM)."""

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from her2core.evaluation import pixel as px


def _noisy(img, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(float) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def _pairs():
    rng = np.random.default_rng(1)
    ihc = data.immunohistochemistry()  # bundled, no download
    yield rng.integers(0, 256, (96, 80, 3), dtype=np.uint8), rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    yield ihc[:200, :200], _noisy(ihc[:200, :200], 25)  # real tile vs noisy copy
    yield ihc[100:356, 50:306], ihc[110:366, 60:316]  # real tile vs shifted real tile


@pytest.mark.parametrize("k", range(3))
def test_psnr_ssim_equal_skimage(k):
    a, b = list(_pairs())[k]
    assert px.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(b, a, data_range=255), abs=1e-6)
    ref = structural_similarity(a, b, channel_axis=-1, data_range=255)
    assert px.ssim(a, b) == pytest.approx(ref, abs=1e-6)
    ref_g = structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True,
                                  sigma=1.5, use_sample_covariance=False)
    assert px.ssim_gaussian(a, b) == pytest.approx(ref_g, abs=1e-6)


def test_batched_equals_per_image_and_torch_path():
    ps = list(_pairs())[1:]
    a = np.stack([p[0][:192, :192] for p in ps])
    b = np.stack([p[1][:192, :192] for p in ps])
    for fn, one in ((px.psnr_batch, px.psnr), (px.ssim_batch, px.ssim),
                    (px.ssim_gaussian_batch, px.ssim_gaussian), (px.ms_ssim_batch, px.ms_ssim)):
        cpu = fn(a, b)
        assert np.allclose(cpu, [one(x, y) for x, y in zip(a, b)], atol=1e-12)
        # the torch (GPU) code path, run on the CPU, gives the same numbers
        assert np.allclose(fn(a, b, device=torch.device("cpu")), cpu, atol=1e-9)


def test_ms_ssim_matches_torchmetrics():
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm

    ihc = data.immunohistochemistry()
    a, b = ihc[:256, :256], _noisy(ihc[:256, :256], 20)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float()
    assert px.ms_ssim_scales(256) == 5
    assert px.ms_ssim(a, b) == pytest.approx(float(tm(t(a), t(b), data_range=255.0)), abs=1e-4)
    # small tile: 4 scales, the first 4 weights renormalised
    a, b = a[:128, :128], b[:128, :128]
    assert px.ms_ssim_scales(128) == 4 and px.ms_ssim_scales(64) == 3
    ref = float(tm(t(a), t(b), data_range=255.0, betas=px.ms_ssim_betas(4)))
    assert px.ms_ssim(a, b) == pytest.approx(ref, abs=1e-4)
    assert px.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_identical_and_degraded():
    a = data.immunohistochemistry()[:128, :128]
    assert px.psnr(a, a) == np.inf
    assert px.ssim(a, a) == pytest.approx(1.0)
    mild, strong = _noisy(a, 5), _noisy(a, 40)
    for fn in (px.psnr, px.ssim, px.ssim_gaussian, px.ms_ssim):
        assert fn(mild, a) > fn(strong, a)


def test_rejects_non_rgb():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError):
        px.ssim(a, np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError):
        px.ssim(a, np.zeros((32, 32, 3), np.float32))
