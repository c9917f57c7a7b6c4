"""Codebook health: hard-index usage and entropy, soft-assignment entropy and mass.

usage = distinct indices / K; entropy H (nats) of the index histogram; effective size exp(H)
(K for a uniform histogram, 1 when a single code is used). Soft statistics are per token,
averaged: entropy of softmax(-d) and of softmax(-d / tau), and the mass the top 1 / 10 / 100
codes hold under softmax(-d / tau).
"""
from __future__ import annotations

import math

import torch

_ROWS = 4096  # tokens per chunk in soft_assignment_stats (bounds the temporaries at 4096 x K)


def _check_indices(indices: torch.Tensor, K: int) -> torch.Tensor:
    if K < 1:
        raise ValueError(f"codebook size K must be >= 1, got {K}")
    if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {getattr(indices, 'dtype', type(indices))}")
    flat = indices.reshape(-1)
    if flat.numel() == 0:
        raise ValueError("indices is empty")
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi >= K:
        raise ValueError(f"indices must lie in [0, {K}), got range [{lo}, {hi}]")
    return flat


def histogram_stats(hist: torch.Tensor, histogram: bool = False) -> dict:
    """Statistics of an index histogram (counts per code, length K)."""
    hist = hist.detach().to("cpu", torch.float64)
    total = float(hist.sum())
    if total <= 0:
        raise ValueError("histogram is empty")
    p = hist[hist > 0] / total
    entropy = float(-(p * p.log()).sum())
    out = {"usage": float((hist > 0).sum()) / len(hist), "entropy": entropy,
           "effective_size": math.exp(entropy), "num_tokens": int(total)}
    if histogram:
        out["histogram"] = [int(c) for c in hist.tolist()]
    return out


class CodebookAccumulator:
    """Codebook usage, entropy (nats), effective_size, num_tokens [, histogram] of indices of any
    shape, streamed: update(indices) per batch, result() at the end."""

    def __init__(self, K: int):
        if K < 1:
            raise ValueError(f"codebook size K must be >= 1, got {K}")
        self.K = K
        self.hist = torch.zeros(K, dtype=torch.long)

    def update(self, indices: torch.Tensor) -> None:
        flat = _check_indices(indices, self.K)
        self.hist += torch.bincount(flat, minlength=self.K).cpu()

    def result(self, histogram: bool = False) -> dict:
        return histogram_stats(self.hist, histogram)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


def soft_assignment_stats(dist: torch.Tensor, tau: float) -> dict:
    """Per-token soft statistics of distances dist (..., K) to the K codes, averaged over tokens.

    Returns soft_entropy (of softmax(-d)), soft_entropy_tau (of softmax(-d / tau)), and
    top1_mass / top10_mass / top100_mass of softmax(-d / tau) (top-k capped at K).
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if not isinstance(dist, torch.Tensor) or dist.ndim < 1 or dist.numel() == 0:
        raise ValueError("dist must be a non-empty tensor (..., K)")
    K = dist.shape[-1]
    d = dist.detach().reshape(-1, K).float()
    tops = (1, 10, 100)
    sums = torch.zeros(2 + len(tops), dtype=torch.float64)
    for rows in d.split(_ROWS):
        logp_tau = torch.log_softmax(-rows / tau, dim=-1)
        top = logp_tau.topk(min(max(tops), K), dim=-1).values.exp().cumsum(-1)
        sums += torch.stack([_entropy(torch.log_softmax(-rows, dim=-1)).sum(), _entropy(logp_tau).sum(),
                             *[top[:, min(t, K) - 1].sum() for t in tops]]).double().cpu()
    mean = (sums / len(d)).tolist()
    return {"soft_entropy": mean[0], "soft_entropy_tau": mean[1],
            "top1_mass": mean[2], "top10_mass": mean[3], "top100_mass": mean[4]}
