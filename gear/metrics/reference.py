"""The ADM reference batch (params metrics.reference) and ADM's way of scoring samples against it.

The seed's gFID, IS, precision and recall come from guided-diffusion's evaluations/evaluator.py
against VIRTUAL_imagenet256_labeled.npz: `mu`, `sigma` (Inception pool_3 statistics over the
ImageNet train set), `arr_0` (10k uint8 NHWC reference images) and `mu_s`, `sigma_s` (spatial
statistics, for sFID). Scored as that evaluator scores, with torch-fidelity's port of the same
TF Inception graph:
  FID        Frechet distance of the samples' pool features to the file's mu / sigma
  precision, recall   k-NN radii (k = metrics.pr_k, ADM: 3) over the pool features of arr_0 and of
             the samples (ADM computes the distances in fp16, falling back to fp32; we use fp32)
  IS         softmax of the pool logits without bias (torch-fidelity's `logits_unbiased`, ADM's
             softmax/logits/MatMul), consecutive splits of 5000 samples (10 at 50k), the mean of
             the per-split exp(KL); unshuffled, unlike torch-fidelity's IS
  sFID       ADM's mixed_6/conv: Mixed_6d's 1x1 branch, first 7 channels, 17 x 17, flattened in
             TF's (H, W, C) order (features.SPATIAL); only when the file holds mu_s / sigma_s
check() runs first in `gear sample` and `gear evaluate samples`, before any model is loaded: it
reads the zip's headers and the statistics, never the images, and never unpickles.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gear import npz
from gear.config import ParamsError
from gear.io import ArtifactError

POOL_DIM = 2048                  # Inception pool_3
SPATIAL_DIM = 17 * 17 * 7        # mixed_6/conv[..., :7]
IS_SPLIT_SIZE = 5000             # ADM's compute_inception_score(split_size=5000)


@dataclass
class Reference:
    path: Path
    mu: np.ndarray               # (POOL_DIM,) float64
    sigma: np.ndarray            # (POOL_DIM, POOL_DIM) float64
    num_images: int
    mu_s: Optional[np.ndarray] = None
    sigma_s: Optional[np.ndarray] = None

    def images(self) -> np.ndarray:
        """arr_0, uint8 (N, H, W, 3), memory-mapped when stored uncompressed."""
        return npz.load_array(self.path, "arr_0")


def _stats(path: Path, f, mu: str, sigma: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    m, s = f[mu], f[sigma]
    if m.shape != (dim,) or s.shape != (dim, dim):
        raise ValueError(f"{path}: {mu} / {sigma} are statistics of dimension {m.shape} / {s.shape}; the feature "
                         f"extractor gives {dim} (Inception {'pool_3' if dim == POOL_DIM else 'mixed_6/conv'})")
    m, s = m.astype(np.float64), s.astype(np.float64)
    if not (np.isfinite(m).all() and np.isfinite(s).all()):
        raise ValueError(f"{path}: {mu} / {sigma} hold non-finite values")
    return m, s


def read_reference(path: str | Path, resolution: int, dim: int = POOL_DIM) -> Reference:
    """The statistics of an ADM reference batch, checked: ValueError (one line) on a file that is
    not an .npz, lacks mu / sigma / arr_0, holds an object (pickled) array, statistics of another
    dimension than `dim`, or arr_0 images other than uint8 (N, resolution, resolution, 3)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference batch {path} not found")
    names = npz.members(path)
    missing = [n for n in ("mu", "sigma", "arr_0") if n not in names]
    if missing:
        raise ValueError(f"{path} holds no {' / '.join(missing)} (has {', '.join(names) or 'nothing'}); "
                         "expected an ADM reference batch (mu, sigma, arr_0)")
    try:
        headers = {n: npz.header(path, n) for n in names}
    except ValueError as e:
        raise ValueError(f"{path}: unreadable array header ({e})") from None
    pickled = [n for n, h in headers.items() if h.dtype.hasobject]
    if pickled:
        raise ValueError(f"{path}: {pickled[0]!r} is an object array (a pickle); refused")
    shape, dtype = headers["arr_0"].shape, headers["arr_0"].dtype
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[0] == 0:
        raise ValueError(f"{path}: arr_0 must hold uint8 images (N, H, W, 3), got {dtype} {shape}")
    if shape[1:3] != (resolution, resolution):
        raise ValueError(f"{path}: arr_0 images are {shape[1]}x{shape[2]}, the samples "
                         f"{resolution}x{resolution} (data.resolution)")
    with np.load(path, allow_pickle=False) as f:
        mu, sigma = _stats(path, f, "mu", "sigma", dim)
        spatial = _stats(path, f, "mu_s", "sigma_s", SPATIAL_DIM) if {"mu_s", "sigma_s"} <= set(names) else (None, None)
    return Reference(path, mu, sigma, shape[0], *spatial)


def check(params, resolution: int | None = None) -> Optional[Reference]:
    """params.metrics.reference, read and checked before any work (None: our own real statistics);
    its images must be the samples' size: `resolution`, default data.resolution."""
    m = params.metrics
    if m.reference is None:
        return None
    if m.feature_space != "inception":
        raise ParamsError(f"metrics.reference = {m.reference!r}: an ADM reference batch holds Inception "
                          f"statistics; it needs metrics.feature_space inception, not {m.feature_space}")
    try:
        ref = read_reference(m.reference, resolution or params.data.resolution, POOL_DIM)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"metrics.reference: {e}") from None
    if ref.num_images <= m.pr_k:
        raise ArtifactError(f"metrics.reference: {ref.path} holds {ref.num_images} images; precision / recall "
                            f"with metrics.pr_k = {m.pr_k} need more")
    return ref


def inception_score(logits: torch.Tensor, split_size: int = IS_SPLIT_SIZE) -> dict:
    """ADM's IS: softmax of the logits, consecutive splits of split_size samples (the last may be
    shorter), mean over splits of exp(mean KL(p(y|x) || p(y)))."""
    p = torch.softmax(logits.double(), dim=1).numpy()
    scores = []
    for s in range(0, len(p), split_size):
        part = p[s:s + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores)), "is_splits": len(scores)}


def reference_metrics(gen: dict, real: dict, ref: Reference, fid_layer: str, isc_layer: str,
                      pr_k: int = 3, split_size: int = IS_SPLIT_SIZE) -> dict:
    """FID [, sFID], precision / recall, IS of the samples' features `gen` against the reference
    (its statistics, and `real`: the features of its arr_0 images)."""
    # local: torch-fidelity is a slow import, and `gear sample` needs only check()
    from gear.metrics.features import SPATIAL, fid_statistics, frechet_distance, precision_recall
    g = fid_statistics(gen[fid_layer])
    res = {"fid": frechet_distance({k: v.astype(np.float64) for k, v in g.items()}, {"mu": ref.mu, "sigma": ref.sigma}),
           **precision_recall(gen[fid_layer], real[fid_layer], pr_k), **inception_score(gen[isc_layer], split_size)}
    if SPATIAL in gen and ref.mu_s is not None:
        s = fid_statistics(gen[SPATIAL])
        res["sfid"] = frechet_distance({k: v.astype(np.float64) for k, v in s.items()},
                                       {"mu": ref.mu_s, "sigma": ref.sigma_s})
    return res
