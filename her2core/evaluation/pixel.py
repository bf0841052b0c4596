"""Pixel metrics (PSNR, SSIM, MS-SSIM) on RGB uint8 tiles, batched in torch float64.

WHY one batched implementation: the reference scripts (BCI, ASP, BCIStainer) loop
over images calling scikit-image. Here the same formulas run on a batch of tiles
at once (on the GPU when there is one) and give the same numbers: every filter is
a *valid* convolution, because scikit-image crops the border ((win-1)/2 pixels)
before averaging, so its padding mode never reaches the mean.

Variants (all with data_range = 255, K1 = 0.01, K2 = 0.03, RGB channel mean):
- `ssim`: scikit-image's defaults as the reference scripts meant them:
  7x7 uniform window, sample covariance (N/(N-1)), border of 3 px cropped.
- `ssim_gaussian`: Wang et al. 2004 as scikit-image implements it with
  gaussian_weights=True, sigma=1.5 (truncate 3.5 -> 11x11), use_sample_covariance=False,
  border of 5 px cropped.
- `ms_ssim`: torchmetrics' MultiScaleStructuralSimilarityIndexMeasure (Wang et al. 2003
  weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333; 11x11 Gaussian sigma 1.5; reflect
  padding, SSIM averaged over the whole scale, contrast term over the cropped scale;
  relu on each term; 2x2 average pooling between scales). Small tiles: the number
  of scales is the largest M <= 5 for which the coarsest scale is still >= 11 px
  (64 px -> 3 scales, 128 px -> 4, >= 176 px -> 5); the first M weights are then
  renormalised to sum to 1, so 1 still means identical. `ms_ssim_scales(size)` says M.
- `psnr`: 10 log10(255^2 / MSE) per image (the reference scripts average per-image PSNR);
  identical images give +inf, as scikit-image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DATA_RANGE = 255.0
K1, K2 = 0.01, 0.03
UNIFORM_WIN = 7
GAUSS_SIGMA = 1.5
GAUSS_TRUNCATE = 3.5
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def default_device() -> str:
    """'cuda' when a GPU is present, else 'cpu' (numpy/scipy: the fastest CPU path)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_rgb_pair(pred: np.ndarray, target: np.ndarray) -> None:
    """Both RGB uint8 (H, W, 3) or (N, H, W, 3) of one shape, else ValueError."""
    for name, a in (("pred", pred), ("target", target)):
        if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
            raise ValueError(f"{name}: want RGB uint8 (H, W, 3), got {a.dtype} {a.shape}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in size")


def _xp(device):
    """numpy/scipy for None or "cpu" (the fastest CPU path); torch for a torch.device.

    torch.device("cpu") runs the torch code path on the CPU: tests use it to show
    that the GPU code gives the CPU numbers.
    """
    return device is None or (isinstance(device, str) and device == "cpu")


def _as_nchw(batch: np.ndarray, device, dtype):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) numpy array or torch tensor of `dtype`."""
    a = np.ascontiguousarray(np.moveaxis(batch, -1, 1))
    if _xp(device):
        return a.astype(dtype)
    t = torch.from_numpy(a).to(torch.device(device))
    return t.to({np.int32: torch.int32, np.float64: torch.float64}[dtype])


def _box_sum_valid(x, k: int):
    """Exact integer sum over every k x k window lying inside the image (int32, no rounding).

    uint8 products are < 2^16 and a 1024-px column of 7-px row sums stays < 2^31,
    so two cumulative sums give the box sums exactly; skimage's uniform_filter
    gives the same means up to ~1e-13.
    """
    if x.shape[-1] * k * 255**2 >= 2**31 or x.shape[-2] * k * 255**2 >= 2**31:
        raise ValueError(f"tile {x.shape[-2:]} too large for exact int32 box sums")
    if isinstance(x, np.ndarray):
        c = np.cumsum(x, -1, dtype=np.int32)
        o = c[..., k - 1 :].copy()
        o[..., 1:] -= c[..., :-k]
        c = np.cumsum(o, -2, dtype=np.int32)
        p = c[..., k - 1 :, :].copy()
        p[..., 1:, :] -= c[..., :-k, :]
        return p
    c = torch.cumsum(x, -1, dtype=torch.int32)
    o = c[..., k - 1 :].clone()
    o[..., 1:] -= c[..., :-k]
    c = torch.cumsum(o, -2, dtype=torch.int32)
    p = c[..., k - 1 :, :].clone()
    p[..., 1:, :] -= c[..., :-k, :]
    return p


def _filter_valid(x, k1d: np.ndarray):
    """Valid separable correlation of (..., H, W) float64 with `k1d` on both axes."""
    r = (len(k1d) - 1) // 2
    if isinstance(x, np.ndarray):
        from scipy.ndimage import correlate1d

        y = correlate1d(x, k1d, axis=-1, mode="constant")[..., r:-r]
        return correlate1d(y, k1d, axis=-2, mode="constant")[..., r:-r, :]
    n, c = x.shape[:2]
    k = torch.from_numpy(k1d).to(x)
    flat = x.reshape(n * c, 1, *x.shape[2:])
    flat = F.conv2d(flat, k.view(1, 1, 1, -1))
    flat = F.conv2d(flat, k.view(1, 1, -1, 1))
    return flat.reshape(n, c, *flat.shape[2:])


def _gauss1d(sigma: float = GAUSS_SIGMA, truncate: float = GAUSS_TRUNCATE) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel (radius int(truncate*sigma+0.5)), float64."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (x / sigma) ** 2)
    return phi / phi.sum()


def _ssim_from_moments(ux, uy, uxx, uyy, uxy, cov_norm, clamp=False):
    """SSIM and contrast-structure maps from local means (numpy or torch, float64)."""
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    if clamp:
        vx, vy = vx * (vx > 0), vy * (vy > 0)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    cs = (2 * vxy + c2) / (vx + vy + c2)
    return (2 * ux * uy + c1) / (ux * ux + uy * uy + c1) * cs, cs


def _per_image_mean(m) -> np.ndarray:
    if isinstance(m, np.ndarray):
        return m.reshape(m.shape[0], -1).mean(1)
    return m.flatten(1).mean(1).cpu().numpy()


def _gauss_ssim_maps(x, y, clamp=False):
    """Gaussian-window SSIM/cs maps over the valid region of float64 NCHW x, y."""
    k = _gauss1d()
    n = x.shape[0]
    cat = np.concatenate if isinstance(x, np.ndarray) else torch.cat
    f = _filter_valid(cat([x, y, x * x, y * y, x * y], 0), k)
    ux, uy, uxx, uyy, uxy = (f[i * n : (i + 1) * n] for i in range(5))
    return _ssim_from_moments(ux, uy, uxx, uyy, uxy, 1.0, clamp=clamp)


@torch.no_grad()
def psnr_batch(pred: np.ndarray, target: np.ndarray, device=None) -> np.ndarray:
    """Per-image PSNR (dB) of (N, H, W, 3) uint8 batches, data_range 255."""
    check_rgb_pair(pred, target)
    if _xp(device):
        d = pred.astype(np.int32) - target.astype(np.int32)
        sse = np.einsum("nhwc,nhwc->n", d, d, dtype=np.int64)  # exact
        mse = sse / float(np.prod(pred.shape[1:]))
    else:
        x = _as_nchw(pred, device, np.float64)
        y = _as_nchw(target, device, np.float64)
        mse = ((x - y) ** 2).flatten(1).mean(1).cpu().numpy()
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(DATA_RANGE**2 / mse)


def _uniform_ssim_map(x, y, k: int = UNIFORM_WIN):
    """skimage's default SSIM map (valid region) of int32 planes, from exact box sums.

    With window sums Sx, Sy, Sxx, Syy, Sxy over n = k*k pixels, skimage's terms are
    A1 = 2 ux uy + C1, A2 = 2 vxy + C2, B1 = ux^2 + uy^2 + C1, B2 = vx + vy + C2 with
    ux = Sx/n and vxy = (n Sxy - Sx Sy) / (n (n-1)) (sample covariance). The integer
    parts are exact in int32; only the final products and the division are float64.
    """
    n = k * k
    sx, sy = _box_sum_valid(x, k), _box_sum_valid(y, k)
    sxy = _box_sum_valid(x * y, k)
    pxy = sx * sy
    a2 = n * sxy - pxy
    b1 = sx * sx + sy * sy
    b2 = n * _box_sum_valid(x * x, k) - sx * sx + n * _box_sum_valid(y * y, k) - sy * sy
    f64 = (lambda v: v.astype(np.float64)) if isinstance(x, np.ndarray) else (
        lambda v: v.to(torch.float64))
    c1 = (K1 * DATA_RANGE) ** 2 * n * n
    c2 = (K2 * DATA_RANGE) ** 2 * n * (n - 1)
    num = (2.0 * f64(pxy) + c1) * (2.0 * f64(a2) + c2)
    return num / ((f64(b1) + c1) * (f64(b2) + c2))


@torch.no_grad()
def ssim_batch(pred: np.ndarray, target: np.ndarray, device=None) -> np.ndarray:
    """Per-image SSIM, scikit-image defaults (uniform 7x7, sample covariance)."""
    check_rgb_pair(pred, target)
    if _xp(device):  # plane by plane (small working set), planes on threads (numpy frees the GIL)
        from concurrent.futures import ThreadPoolExecutor

        def plane(ic):
            i, c = ic
            p = pred[i, ..., c].astype(np.int32)
            return _uniform_ssim_map(p, target[i, ..., c].astype(np.int32)).mean()

        jobs = [(i, c) for i in range(pred.shape[0]) for c in range(3)]
        workers = max(1, min(len(jobs), torch.get_num_threads()))
        with ThreadPoolExecutor(workers) as pool:
            means = np.array(list(pool.map(plane, jobs)))
        return means.reshape(-1, 3).mean(1)
    x = _as_nchw(pred, device, np.int32)
    y = _as_nchw(target, device, np.int32)
    return _per_image_mean(_uniform_ssim_map(x, y))


@torch.no_grad()
def ssim_gaussian_batch(pred: np.ndarray, target: np.ndarray, device=None) -> np.ndarray:
    """Per-image SSIM of Wang et al. (Gaussian sigma 1.5, population covariance)."""
    check_rgb_pair(pred, target)
    x = _as_nchw(pred, device, np.float64)
    y = _as_nchw(target, device, np.float64)
    s, _ = _gauss_ssim_maps(x, y)
    return _per_image_mean(s)


def ms_ssim_scales(height: int, width: int | None = None, max_scales: int = 5) -> int:
    """Scales MS-SSIM uses on a tile: coarsest scale must still hold the 11-px kernel."""
    side = min(height, width if width is not None else height)
    ksize = 2 * int(GAUSS_TRUNCATE * GAUSS_SIGMA + 0.5) + 1
    m = max_scales
    while m > 1 and side // 2 ** (m - 1) < ksize:
        m -= 1
    if side < ksize:
        raise ValueError(f"tile of {side} px is smaller than the {ksize}-px MS-SSIM kernel")
    return m


def ms_ssim_betas(scales: int) -> tuple[float, ...]:
    """The first `scales` Wang et al. weights, renormalised to sum to 1."""
    b = MS_SSIM_BETAS[:scales]
    s = sum(b)
    return tuple(v / s for v in b)


@torch.no_grad()
def ms_ssim_batch(pred: np.ndarray, target: np.ndarray, device=None) -> np.ndarray:
    """Per-image MS-SSIM as torchmetrics computes it (see module docstring)."""
    check_rgb_pair(pred, target)
    x = _as_nchw(pred, device, np.float64)
    y = _as_nchw(target, device, np.float64)
    scales = ms_ssim_scales(x.shape[2], x.shape[3])
    pad = (len(_gauss1d()) - 1) // 2
    terms = []
    for i in range(scales):
        if isinstance(x, np.ndarray):
            spec = ((0, 0), (0, 0), (pad, pad), (pad, pad))
            xp, yp = np.pad(x, spec, mode="reflect"), np.pad(y, spec, mode="reflect")
        else:
            xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
            yp = F.pad(y, (pad, pad, pad, pad), mode="reflect")
        s, cs = _gauss_ssim_maps(xp, yp, clamp=True)
        if i < scales - 1:
            terms.append(np.maximum(_per_image_mean(cs[..., pad:-pad, pad:-pad]), 0.0))
            x, y = _avg_pool2(x), _avg_pool2(y)
        else:
            terms.append(np.maximum(_per_image_mean(s), 0.0))
    out = np.ones_like(terms[0])
    for t, b in zip(terms, ms_ssim_betas(scales)):
        out = out * t**b
    return out


def _avg_pool2(x):
    """2x2 average pooling, odd edge dropped (torch's avg_pool2d(2))."""
    if isinstance(x, np.ndarray):
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :h, :w]
        return 0.25 * (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2])
    return F.avg_pool2d(x, 2)


def _one(fn, pred, target) -> float:
    check_rgb_pair(pred, target)
    if pred.ndim != 3:
        raise ValueError("want one (H, W, 3) image; use the *_batch functions for batches")
    return float(fn(pred[None], target[None], device="cpu")[0])


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of one RGB uint8 pair == skimage peak_signal_noise_ratio(data_range=255)."""
    return _one(psnr_batch, pred, target)


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM of one RGB uint8 pair == skimage structural_similarity(channel_axis=-1, data_range=255)."""
    return _one(ssim_batch, pred, target)


def ssim_gaussian(pred: np.ndarray, target: np.ndarray) -> float:
    """Gaussian SSIM (Wang et al.) of one RGB uint8 pair."""
    return _one(ssim_gaussian_batch, pred, target)


def ms_ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """MS-SSIM of one RGB uint8 pair (torchmetrics' algorithm; scales adapt to small tiles)."""
    return _one(ms_ssim_batch, pred, target)


def reference_psnr_ssim(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """The reference scripts' per-image call, fixed for today's scikit-image.

    (`multichannel=True` became `channel_axis=-1`; data_range given explicitly.)
    Kept as the ground truth that tests and the benchmark compare against.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p = peak_signal_noise_ratio(target, pred, data_range=255)
    s = structural_similarity(pred, target, channel_axis=-1, data_range=255)
    return float(p), float(s)


__all__ = [
    "check_rgb_pair",
    "default_device",
    "ms_ssim",
    "ms_ssim_batch",
    "ms_ssim_betas",
    "ms_ssim_scales",
    "psnr",
    "psnr_batch",
    "reference_psnr_ssim",
    "ssim",
    "ssim_batch",
    "ssim_gaussian",
    "ssim_gaussian_batch",
]
