"""Representation similarity between two sets of features of the same N items (here: patches).

linear_cka: CKA with a linear kernel and the biased HSIC (Kornblith et al. 2019).
cknna:      CKA restricted to mutual k-nearest neighbours with the unbiased HSIC (Song et al.
            2012, eq. 5), as defined for the Platonic Representation Hypothesis (Huh et al. 2024):
            Align(K, L) = HSIC_u(M * K, M * L), M_ij = 1[j in kNN_K(i) and j in kNN_L(i), j != i],
            CKNNA = Align(K, L) / sqrt(Align(K, K) Align(L, L)).
Both return a float; nan when a side has no variance (e.g. a collapsed representation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair(X: torch.Tensor, Y: torch.Tensor, min_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(X, torch.Tensor) and isinstance(Y, torch.Tensor)):
        raise ValueError("expected two torch tensors of shape (N, D)")
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"expected (N, Dx) and (N, Dy) with the same N, got {tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} items, got {X.shape[0]}")
    # float64: the HSIC terms are differences of large sums
    return X.detach().double(), Y.detach().to(X.device).double()


def _ratio(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> float:
    denom = float(xx * yy)
    return float(xy) / math.sqrt(denom) if denom > 0 else float("nan")


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T, biased HSIC.

    With column-centred features tr(K H L H) = ||Y^T X||_F^2, so no N x N matrix is formed.
    """
    X, Y = _pair(X, Y, min_n=2)
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    return _ratio((Y.T @ X).square().sum(), (X.T @ X).square().sum(), (Y.T @ Y).square().sum())


def _knn_mask(K: torch.Tensor, k: int) -> torch.Tensor:
    """M_ij = 1 when j is among the k most similar items to i (largest K_ij, j != i)."""
    S = K.clone().fill_diagonal_(float("-inf"))
    return torch.zeros_like(K).scatter_(1, S.topk(k, dim=1).indices, 1.0)


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two N x N kernel matrices, N > 3."""
    m = K.shape[0]
    K = K.clone().fill_diagonal_(0)
    L = L.clone().fill_diagonal_(0)
    trace_kl = (K * L.T).sum()
    sums = K.sum() * L.sum() / ((m - 1) * (m - 2))
    cross = 2 * (K.sum(0) @ L.sum(1)) / (m - 2)   # 1^T K L 1 without the N^3 product
    return (trace_kl + sums - cross) / (m * (m - 3))


def cknna(X: torch.Tensor, Y: torch.Tensor, k: int = 10, normalize: bool = True) -> float:
    """Mutual-kNN CKA with the unbiased HSIC on linear kernels.

    normalize: L2-normalise each row first (cosine kernels), as the Platonic-representation
    measurements do. Needs 2 <= k < N and N >= 4.
    """
    X, Y = _pair(X, Y, min_n=4)
    n = X.shape[0]
    if not 2 <= k < n:
        raise ValueError(f"cknna needs 2 <= k < N, got k={k}, N={n}")
    if normalize:
        X, Y = F.normalize(X, dim=1), F.normalize(Y, dim=1)
    K, L = X @ X.T, Y @ Y.T
    mask_k, mask_l = _knn_mask(K, k), _knn_mask(L, k)
    mutual = mask_k * mask_l
    return _ratio(hsic_unbiased(mutual * K, mutual * L),
                  hsic_unbiased(mask_k * K, mask_k * K), hsic_unbiased(mask_l * L, mask_l * L))
