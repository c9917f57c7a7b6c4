"""Generation metrics from features, for evaluations spread over processes.

Each rank runs torch-fidelity's own feature extractor module (the registered extractor of a
fidelity.Extractor, built by torch_fidelity's create_feature_extractor) on its share of the
images; rank 0 gathers the features in the original order and calls torch-fidelity's
feature-level functions (fid_features_to_statistics / fid_statistics_to_metric,
isc_features_to_metric, prc_features_to_metric) with the settings calculate_metrics uses. Fed the
same batches this gives exactly the numbers of torch-fidelity's calculate_metrics, whatever the
number of processes (the IS splits follow the gathered order, as they follow the input order there).

The real-set cache holds torch-fidelity's own files (fidelity.cache_files, the bytes its
calculate_metrics caches) beside our summary (fidelity.meta_path).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from torch_fidelity.utils import create_feature_extractor

from gear import paths
from gear.io import ArtifactError, load_torch, read_json, sha256_file
from gear.metrics.fidelity import (DINOV2_ARCH, Extractor, Images, cache_files, make_extractor, meta_path,
                                  probe_logits, write_meta)
from gear.teachers import HUB_TEACHERS, load_teacher

Features = dict[str, torch.Tensor]  # layer name -> (N, D) float features on the CPU
SPATIAL = "spatial"  # ADM's sFID features (Inception only): Mixed_6d 1x1 branch, 7 channels, (H, W, C) order


class FeatureModel:
    """One feature space's torch-fidelity extractor module on one device.

    logits=False leaves the IS layer out (FID, precision / recall only). A custom space has IS only
    when its fn returns logits, probed on a blank batch of image_size (px, or (H, W)): the same
    answer on every rank.
    spatial=True (Inception only) adds ADM's sFID features under SPATIAL: TF's mixed_6/conv is
    torch-fidelity's Mixed_6d.branch1x1 (conv, batch norm, ReLU), read by a forward hook.
    """

    def __init__(self, ext: Extractor, device: torch.device | str, image_size: int | tuple[int, int],
                 logits: bool = True, spatial: bool = False):
        self.ext, self.device = ext, torch.device(device)
        self.isc_layer = ext.isc_layer if logits else None
        if self.isc_layer is not None and ext.space == "custom":
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            blank = torch.zeros(2, 3, h, w, dtype=torch.uint8, device=self.device)
            self.isc_layer = ext.isc_layer if probe_logits(ext, blank) else None
        self.layers = sorted({ext.fid_layer} | ({self.isc_layer} if self.isc_layer else set()))
        # cuda=False, then .to(): this rank's device, not whichever CUDA device is current
        self.module = create_feature_extractor(ext.name, self.layers, cuda=False, verbose=False,
                                               **ext.options).to(self.device)
        self._spatial = None
        if spatial:
            if ext.space != "inception":
                raise ValueError(f"spatial (sFID) features need the inception space, not {ext.space!r}")
            self.module.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, out: torch.Tensor) -> None:
        # (N, 192, 17, 17) -> first 7 channels, flattened as TF's NHWC tensor is
        self._spatial = out[:, :7].permute(0, 2, 3, 1).flatten(1).float()

    @torch.no_grad()
    def __call__(self, images: Images) -> Features:
        """Features of one batch of uint8 images, (N, H, W, 3) or (N, 3, H, W)."""
        x = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else images
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
            raise ValueError(f"expected a non-empty uint8 batch (N,H,W,3) or (N,3,H,W), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        if x.shape[1] != 3 and x.shape[-1] != 3:
            raise ValueError(f"no RGB axis of size 3 in shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        # contiguous NCHW, as torch-fidelity's DataLoader collates it: the memory format picks the
        # convolution kernels, and another one may change the last bits of the features
        out = self.module(x.contiguous().to(self.device))
        feats = {k: v.cpu() for k, v in self.module.convert_features_tuple_to_dict(out).items()}
        if self._spatial is not None:
            feats[SPATIAL], self._spatial = self._spatial.cpu(), None
        return feats

    def extract(self, images: Images, batch_size: int) -> Features:
        """Features of an in-memory image set, batch_size images at a time (as calculate_metrics)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return concat([self(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])


def concat(parts: list[Features]) -> Features:
    """Per-batch features, in order -> one (N, D) tensor per layer."""
    if not parts:
        raise ValueError("no features: every batch was empty")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


# --- metrics (torch-fidelity's functions and defaults) -------------------------------------------

def fid_statistics(features: torch.Tensor) -> dict:
    """{'mu', 'sigma'} (float64 numpy) of (N, D) features."""
    return fid_features_to_statistics(features)


def frechet_distance(gen: dict, real: dict) -> float:
    """FID between two statistics, generated first (torch-fidelity's input1 / input2 order)."""
    return float(fid_statistics_to_metric(gen, real, verbose=False)[KEY_METRIC_FID])


def inception_score(logits: torch.Tensor, splits: int) -> dict:
    """IS mean / std over `splits` chunks of the seeded shuffle torch-fidelity draws (order matters)."""
    if len(logits) < splits:
        raise ValueError(f"IS with isc_splits={splits} needs at least that many images, got {len(logits)}")
    out = isc_features_to_metric(logits, splits, DEFAULTS["samples_shuffle"], DEFAULTS["rng_seed"])
    return {"is_mean": float(out[KEY_METRIC_ISC_MEAN]), "is_std": float(out[KEY_METRIC_ISC_STD])}


def precision_recall(gen: torch.Tensor, real: torch.Tensor, k: int) -> dict:
    """Precision (generated inside the real manifold) and recall, k-NN balls (k = pr_k)."""
    for what, f in (("generated", gen), ("real", real)):
        if len(f) <= k:
            raise ValueError(f"precision/recall with k={k} needs more than {k} {what} images, got {len(f)}")
    out = prc_features_to_metric(gen, real, prc_neighborhood=k, save_cpu_ram=True, verbose=False)
    return {"precision": float(out[KEY_METRIC_PRECISION]), "recall": float(out[KEY_METRIC_RECALL])}


# --- the real-set cache --------------------------------------------------------------------------

@dataclass
class RealSet:
    """The cached real set: FID-layer features and FID statistics."""
    features: torch.Tensor
    stats: dict
    num_real: int


def _save(obj, path: Path) -> None:
    with open(path, "wb") as f:  # a file object, as torch-fidelity saves: same archive name, same bytes
        torch.save(obj, f)


def write_real_cache(cache_dir: str | Path, cache_key: str, fm: FeatureModel, feats: Features,
                     isc_splits: int = 10) -> dict:
    """Store the real set's features and FID statistics in cache_dir (write it into a fresh folder
    that replaces the old one whole: io.atomic_dir). Returns {feature_space, extractor, num_real
    [, is_mean, is_std of the real images]}."""
    meta = meta_path(str(cache_dir), cache_key, fm.ext)
    num_real = len(feats[fm.ext.fid_layer])
    isc = inception_score(feats[fm.isc_layer], isc_splits) if fm.isc_layer else {}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    *files, stat_file = cache_files(Path(cache_dir), cache_key, fm.ext, fm.layers)
    for layer, path in zip(fm.layers, files):
        _save(feats[layer], path)
    _save(fid_statistics(feats[fm.ext.fid_layer]), stat_file)
    write_meta(meta, num_real, fm.ext, fm.layers)
    return {"feature_space": fm.ext.space, "extractor": fm.ext.name, "num_real": num_real, **isc}


def read_real_cache(cache_dir: str | Path, cache_key: str, ext: Extractor) -> RealSet:
    """The cached real set, every file read and checked: a missing, empty, truncated or foreign
    file, or one that disagrees with the others, is one ArtifactError line. Cheap enough for every
    rank to call before any compute (the features are memory-mapped), so a damaged cache fails
    before the evaluation, not after it."""
    meta = meta_path(str(cache_dir), cache_key, ext)
    feat_file, stat_file = cache_files(Path(cache_dir), cache_key, ext, [ext.fid_layer])
    num_real = read_json(meta, "real-set cache summary").get("num_real")
    features = load_torch(feat_file, "cached real features", mmap=True)
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ArtifactError(f"cached real features {feat_file} hold {type(features).__name__}, not a 2-D tensor")
    if len(features) != num_real:
        raise ArtifactError(f"stale cache {feat_file}: {len(features)} features but {meta} says {num_real} images")
    return RealSet(features, _load_stats(stat_file, features.shape[1]), num_real)


def _load_stats(path: Path, dim: int | None = None) -> dict:
    """FID statistics {'mu', 'sigma'}: float64 numpy arrays, pickled as torch-fidelity stores
    them. weights_only with numpy's array reconstruction allowed, so the file still runs no code."""
    from numpy._core.multiarray import _reconstruct

    allowed = [_reconstruct, np.ndarray, np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType]
    stats = load_torch(path, "cached real statistics", allowed=allowed)
    mu, sigma = (stats.get(k) if isinstance(stats, dict) else None for k in ("mu", "sigma"))
    d = dim or (mu.shape[0] if isinstance(mu, np.ndarray) and mu.ndim == 1 else -1)
    if not (isinstance(mu, np.ndarray) and isinstance(sigma, np.ndarray) and mu.shape == (d,) and sigma.shape == (d, d)):
        raise ArtifactError(f"cached real statistics {path} are not {{'mu': ({d},), 'sigma': ({d}, {d})}} arrays "
                            f"of the cached features")
    return stats


def generation_metrics(feats: Features, real: RealSet, fm: FeatureModel, pr_k: int = 3, isc_splits: int = 10) -> dict:
    """FID, precision / recall [, IS] of generated features against the real set: the numbers of
    torch-fidelity's calculate_metrics on the same images."""
    gen = feats[fm.ext.fid_layer]
    res = {"feature_space": fm.ext.space, "extractor": fm.ext.name, "num_samples": len(gen),
           "num_real": real.num_real, "fid": frechet_distance(fid_statistics(gen), real.stats),
           **precision_recall(gen, real.features, pr_k)}
    return res | (inception_score(feats[fm.isc_layer], isc_splits) if fm.isc_layer else {})


# ---- the params' feature space (gear evaluate, gear t2i-evaluate) ---------------------------------

DEMO_EXTRACTOR = "demo-teacher"


def space_fingerprint(params) -> dict:
    """What the feature space is built from; eval/real is stale when this changes."""
    m, space = params.metrics, params.metrics.feature_space
    if space == "demo":
        weights = str(paths.teacher_dir() / "model.safetensors")
    elif space == "inception":
        weights = m.inception_weights
    else:
        weights = params.teachers.weights if params.teacher.startswith("dinov2") else None
    if weights is not None and not Path(weights).is_file():
        raise ArtifactError(f"feature space {space}: weights file {weights} not found")
    return {"feature_space": space, "weights": weights,
            "weights_sha256": sha256_file(weights) if weights is not None else None}


def feature_extractor(params, device: torch.device) -> Extractor:
    """The params' feature space as a torch-fidelity extractor on `device`."""
    space = params.metrics.feature_space
    try:
        if space == "demo":
            teacher = load_teacher(params, device, name="demo")

            def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                x = x.float() / 127.5 - 1  # the teacher reads [-1, 1] images
                return teacher.pooled(x), teacher.logits(x)
            return make_extractor("custom", fn=fn, name=DEMO_EXTRACTOR)
        if space == "inception":
            return make_extractor("inception", weights_path=params.metrics.inception_weights)
        dino = params.teacher.startswith("dinov2")  # reuse the teacher's DINOv2 and its local weights
        return make_extractor("dinov2", weights_path=params.teachers.weights if dino else None,
                              arch=HUB_TEACHERS[params.teacher].arch if dino else DINOV2_ARCH)
    except RuntimeError as e:  # weights that cannot be loaded: one line, before any compute
        raise ArtifactError(f"feature space {space}: {e}") from None
