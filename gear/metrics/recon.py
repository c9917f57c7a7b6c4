"""Reconstruction quality: PSNR and SSIM per image (scikit-image's implementations).

Inputs: a batch of images as numpy arrays or tensors, (N,3,H,W) or (N,H,W,3) (also 1 channel),
either uint8 in [0, 255] (data_range 255) or floating point in [-1, 1] (the tokenizer's range;
mapped to [0, 1], data_range 1, since SSIM's luminance term is not shift invariant). Both give
the same value for the same picture. Results are per image
(numpy float64, shape (N,)); average them for a dataset figure.
PSNR of identical images is infinite; it is reported as PSNR_MAX so means stay finite.
SSIM uses skimage defaults (7x7 uniform window, K1 0.01, K2 0.03), so images need H, W >= 7.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PSNR_MAX = 100.0  # dB, reported for identical images (MSE 0)
Images = Union[np.ndarray, torch.Tensor]


def _to_nhwc(x: Images, what: str) -> tuple[np.ndarray, float]:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy() if x.dtype == torch.bfloat16 else x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty batch (N,C,H,W) or (N,H,W,C), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)
    elif x.shape[-1] not in (1, 3):
        raise ValueError(f"{what}: no channel axis of size 1 or 3 in shape {x.shape}")
    if x.dtype == np.uint8:
        return x, 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: expected uint8 or floating point images, got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"{what}: floating point images must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]")
    return (x.astype(np.float64).clip(-1, 1) + 1) / 2, 1.0


def _pair(a: Images, b: Images) -> tuple[np.ndarray, np.ndarray, float]:
    a, ra = _to_nhwc(a, "a")
    b, rb = _to_nhwc(b, "b")
    if a.shape != b.shape or ra != rb:
        raise ValueError(f"a and b must have the same shape and kind, got {a.shape}/{a.dtype} and {b.shape}/{b.dtype}")
    return a, b, ra


def psnr(a: Images, b: Images) -> np.ndarray:
    """PSNR in dB per image, shape (N,); identical images give PSNR_MAX."""
    a, b, rng = _pair(a, b)
    out = [PSNR_MAX if np.array_equal(x, y) else min(PSNR_MAX, peak_signal_noise_ratio(x, y, data_range=rng))
           for x, y in zip(a, b)]
    return np.asarray(out, dtype=np.float64)


def ssim(a: Images, b: Images) -> np.ndarray:
    """SSIM per image (mean over the image and channels), shape (N,); 1 for identical images."""
    a, b, rng = _pair(a, b)
    if min(a.shape[1:3]) < 7:
        raise ValueError(f"ssim needs images of at least 7x7 pixels, got {a.shape[1]}x{a.shape[2]}")
    out = [structural_similarity(x, y, channel_axis=-1, data_range=rng) for x, y in zip(a, b)]
    return np.asarray(out, dtype=np.float64)
