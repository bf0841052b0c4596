"""PatchNCE (CUT, Park et al. 2020) and the adaptive supervised PatchNCE of ASP (Li et al. 2023).

A "patch" is one feature-map location of the generator encoder; an MLP head per layer
projects sampled locations to L2-normalised 256-d vectors; the positive of a query is the
key at the same location, the negatives are the other sampled locations of the same image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PatchSampleF(nn.Module):
    """CUT `mlp_sample`: one Linear-ReLU-Linear head per NCE layer.

    Upstream creates the MLPs lazily on the first forward (0 parameters before it); here they
    are built up front from the known channel counts, so optimisers and checkpoints see them
    from the start. Same layers, same count.
    """

    def __init__(self, channels: list[int], nc: int = 256):
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in channels)

    def forward(self, feats, num_patches: int, patch_ids=None):
        out, ids_out = [], []
        for i, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            _b, _c, h, w = feat.shape
            flat = feat.permute(0, 2, 3, 1).flatten(1, 2)  # (B, HW, C)
            if patch_ids is not None:
                ids = patch_ids[i]
            else:
                ids = torch.randperm(h * w, device=feat.device)[: min(num_patches, h * w)]
            x = flat[:, ids, :].flatten(0, 1)
            x = F.normalize(mlp(x), dim=1, eps=1e-7)
            out.append(x)
            ids_out.append(ids)
        return out, ids_out


def patch_nce(feat_q: torch.Tensor, feat_k: torch.Tensor, batch_size: int, tau: float = 0.07):
    """Per-patch InfoNCE loss (no reduction) and the positive cosine similarities.

    feat_q, feat_k: (B*P, D) L2-normalised; negatives are the other patches of the same image
    (`nce_includes_all_negatives_from_minibatch=False`).
    """
    n, d = feat_q.shape
    feat_q, feat_k = feat_q.float(), feat_k.detach().float()
    l_pos = (feat_q * feat_k).sum(dim=1, keepdim=True)
    q = feat_q.view(batch_size, -1, d)
    k = feat_k.view(batch_size, -1, d)
    p = q.shape[1]
    l_neg = torch.bmm(q, k.transpose(2, 1))
    eye = torch.eye(p, device=q.device, dtype=torch.bool)[None]
    l_neg = l_neg.masked_fill(eye, -10.0).view(-1, p)
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    loss = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=q.device), reduction="none")
    return loss, l_pos.squeeze(1)


def asp_schedule(progress: float, mode: str = "lambda", decay_fraction: float = 0.25) -> float:
    """Weight p of the uniform term at training progress t∈[0,1) (ASP `asp_loss_mode` scheduler).

    lambda: p = 1 until t ≥ k = 1 − decay_fraction, then linear to 0 (30+10 epochs → k = 0.75).
    """
    t = progress
    if mode == "lambda":
        k = 1 - decay_fraction
        m = 1 / (1 - k)
        return m - m * t if t >= k else 1.0
    if mode == "sigmoid":
        return float(1 / (1 + np.exp((t - 0.5) * 10)))
    if mode == "linear":
        return 1 - t
    if mode == "zero":
        return 1.0
    raise ValueError(f"unknown ASP scheduler {mode}")


def asp_weights(l_pos: torch.Tensor, p: float, lookup: str = "linear") -> torch.Tensor:
    """w = p·1 + (1−p)·w₁(cos sim of the positive pair), normalised to mean 1 (ASP)."""
    x = l_pos.detach()
    if lookup == "linear":
        w1 = torch.relu(x)
    elif lookup == "uniform":
        w1 = torch.ones_like(x)
    else:
        raise ValueError(f"unknown ASP lookup {lookup} (linear, uniform)")
    w = p * 1.0 + (1 - p) * w1
    return w / w.sum().clamp_min(1e-12) * len(w)
