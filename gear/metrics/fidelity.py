"""Generation metrics (FID / FDD, Inception Score, precision / recall) through torch-fidelity.

torch-fidelity computes every statistic; this module only hands it images and a feature space:
- 'inception': torch-fidelity's `inception-v3-compat` (the TF-FID Inception-v3; pool features for
  FID and precision/recall, unbiased logits for IS). Offline it needs a local weights file.
- 'dinov2':    timm DINOv2 (default ViT-B/14), CLS token after the final norm, images resized to
  224 px: FID in this space is FDD. Weights from a local file or the hub.
- 'custom':    any fn(images_uint8 [N,3,H,W]) -> (features [N,D], logits [N,C] | None); the
  embedded default passes the demo teacher (pooled patch features, classifier-head logits).
Convention (torch-fidelity's): input1 = generated samples, input2 = real images. Precision is the
share of samples inside the real manifold (union of k-NN balls of real features); recall is the
share of real images inside the sample manifold. features.py computes the same numbers from
features extracted batch by batch (over several processes) with the same extractors.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from gear.hub import offline, reachable

FeatureFn = Callable[[torch.Tensor], tuple[torch.Tensor, Optional[torch.Tensor]]]
Images = Union[np.ndarray, torch.Tensor]

SPACES = ("inception", "dinov2", "custom")
DINOV2_ARCH = "vit_base_patch14_dinov2"
DINOV2_RES = 224
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # safe inside a cache file name


@dataclass(frozen=True, eq=False)
class Extractor:
    """One feature space, ready for torch-fidelity (build it with make_extractor)."""
    space: str                  # inception | dinov2 | custom
    name: str                   # torch-fidelity registry name; also part of the cache file names
    fid_layer: str              # feature used for FID and precision / recall
    isc_layer: Optional[str]    # class logits for IS (custom: used only if fn returns logits)
    options: dict = field(default_factory=dict)  # extra torch-fidelity kwargs (weights, callable)


# --- torch-fidelity feature extractors ---------------------------------------------------------

class _CallableExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of fn(images_uint8) -> (features, logits | None)."""

    def __init__(self, name, features_list, gear_feature_fn=None, **kwargs):
        super().__init__(name, features_list)
        if gear_feature_fn is None:
            raise ValueError(f"feature extractor {name!r} was created without its callable")
        # Kept out of the module tree: torch-fidelity calls eval() / requires_grad_(False) /
        # cuda() on the extractor, which must not change the caller's model.
        object.__setattr__(self, "fn", gear_feature_fn)

    def forward(self, x):
        feats, logits = self.fn(x)
        out = {"features": feats.float()}
        if "logits" in self.features_list:
            if logits is None:
                raise ValueError(f"feature fn of {self.name!r} returned no logits")
            out["logits"] = logits.float()
        return tuple(out[k] for k in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


class _TimmDinoV2(FeatureExtractorBase):
    """timm DINOv2: CLS token after the final norm of images resized to 224 px."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None,
                 gear_timm_arch=DINOV2_ARCH, **kwargs):
        super().__init__(name, features_list)
        import timm  # heavy import, only when this space is used
        overlay = {} if feature_extractor_weights_path is None else {
            "pretrained_cfg_overlay": dict(file=str(feature_extractor_weights_path))}
        try:  # num_classes=0: forward returns the pooled CLS token (global_pool='token')
            self.model = timm.create_model(gear_timm_arch, pretrained=True, num_classes=0,
                                           img_size=DINOV2_RES, **overlay)
        except Exception as e:
            where = feature_extractor_weights_path or "the hub"
            msg = str(e).splitlines()[0] if str(e) else ""
            raise RuntimeError(f"cannot load {gear_timm_arch} weights from {where} "
                               f"({type(e).__name__}: {msg}); pass weights_path= a local "
                               f".pth/.safetensors file") from None
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def forward(self, x):
        x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(DINOV2_RES, DINOV2_RES),
                                                      align_corners=False)
        return (self.model((x - self.mean) / self.std).float(),)

    @staticmethod
    def get_provided_features_list():
        return ("cls",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "cls"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, DINOV2_RES, DINOV2_RES, dtype=torch.uint8)


def _register(name: str, cls) -> None:
    known = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if known is None:
        torch_fidelity.register_feature_extractor(name, cls)
    elif known is not cls:
        raise ValueError(f"feature extractor name {name!r} is taken by torch-fidelity's {known.__name__}")


# --- extractor construction --------------------------------------------------------------------

def _existing_file(path, what: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"{what} weights file not found: {path}")
    return str(path)


def _inception_weights(weights_path) -> Optional[str]:
    """Local file to load, or None to let torch-fidelity download (checked reachable first)."""
    if weights_path is not None:
        return _existing_file(weights_path, "inception")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)
    if cached.is_file():
        return str(cached)
    hint = f"pass weights_path (params: metrics.inception_weights) = a local copy of {URL_INCEPTION_V3}"
    if offline():
        raise RuntimeError(f"inception weights are not cached and HF_HUB_OFFLINE is set; {hint}")
    if not reachable(URL_INCEPTION_V3, timeout=5.0):
        raise RuntimeError(f"inception weights are not cached and cannot be downloaded; {hint}")
    return None


def make_extractor(space: str, *, weights_path: Optional[str] = None, fn: Optional[FeatureFn] = None,
                   name: Optional[str] = None, arch: str = DINOV2_ARCH) -> Extractor:
    """Feature space for compute_generation_metrics.

    inception: weights_path = torch-fidelity's pt_inception weights file (None: torch hub cache or
               download; fails at once, with a one-line RuntimeError, when neither is possible).
    dinov2:    weights_path = local timm/.pth/.safetensors file of `arch` (None: hub name).
    custom:    fn(images_uint8 [N,3,H,W] on the metric device) -> (features [N,D], logits [N,C] or
               None), run under no_grad; put its model in eval mode on that device. `name` is
               required: it names the extractor in torch-fidelity and in the cache files.
    """
    if space not in SPACES:
        raise ValueError(f"unknown feature space {space!r}; known: {', '.join(SPACES)}")
    if space != "custom" and (fn is not None or name is not None):
        raise ValueError(f"fn= and name= are only for space='custom', not {space!r}")
    if space != "dinov2" and arch != DINOV2_ARCH:
        raise ValueError(f"arch= is only for space='dinov2', not {space!r}")
    if space == "inception":
        return Extractor("inception", "inception-v3-compat", "2048", "logits_unbiased",
                         {"feature_extractor_weights_path": _inception_weights(weights_path)})
    if space == "dinov2":
        if weights_path is not None:
            weights_path = _existing_file(weights_path, "dinov2")
        reg = f"gear-{arch}"
        _register(reg, _TimmDinoV2)
        return Extractor("dinov2", reg, "cls", None,
                         {"feature_extractor_weights_path": weights_path, "gear_timm_arch": arch})
    if fn is None or not callable(fn):
        raise ValueError("space='custom' needs fn= a callable images_uint8 -> (features, logits|None)")
    if name is None or not _NAME_RE.match(name):
        raise ValueError(f"space='custom' needs name= matching {_NAME_RE.pattern} (got {name!r})")
    if weights_path is not None:
        raise ValueError("space='custom' takes no weights_path (fn owns its model)")
    reg = f"gear-custom-{name}"
    _register(reg, _CallableExtractor)
    return Extractor("custom", reg, "features", "logits", {"gear_feature_fn": fn})


# --- inputs ------------------------------------------------------------------------------------

class _Images(Dataset):
    """uint8 images (N,3,H,W) or (N,H,W,3) served as (3,H,W) tensors, without a full copy."""

    def __init__(self, x: Images, what: str):
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}: expected a numpy array or tensor, got {type(x).__name__}")
        if t.dtype != torch.uint8 or t.ndim != 4 or len(t) == 0:
            raise ValueError(f"{what}: expected non-empty uint8 images (N,H,W,3) or (N,3,H,W), "
                             f"got {t.dtype} {tuple(t.shape)}")
        if t.shape[1] != 3 and t.shape[-1] != 3:
            raise ValueError(f"{what}: no RGB axis of size 3 in shape {tuple(t.shape)}")
        self.x, self.nhwc = t.cpu(), t.shape[1] != 3

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i].permute(2, 0, 1) if self.nhwc else self.x[i]


class _CachedOnly(Dataset):
    """Stand-in for the real set when its features come from the cache (never read)."""

    def __len__(self):
        return 0

    def __getitem__(self, i):
        raise RuntimeError("real images were needed but real_uint8=None (cache incomplete)")


def cache_files(cache_dir: Path, key: str, ext: Extractor, layers: list[str]) -> list[Path]:
    """The real-set cache files: features of each layer, then the FID statistics. File names of
    torch-fidelity 0.4.0 (utils.extract_featuresdict_from_input_id_cached and
    metric_fid.fid_featuresdict_to_statistics_cached)."""
    files = [cache_dir / f"{key}-{ext.name}-features-{layer}.pt" for layer in layers]
    return files + [cache_dir / f"{key}-{ext.name}-stat-fid-{ext.fid_layer}.pt"]


def write_meta(meta: Path, num_real: int, ext: Extractor, layers: list[str]) -> None:
    meta.write_text(json.dumps({"num_real": num_real, "extractor": ext.name, "layers": layers}))


def probe_logits(ext: Extractor, x: torch.Tensor) -> bool:
    """Run the custom fn on a uint8 batch x [N,3,H,W] (on its device): check its outputs and
    learn whether it gives logits."""
    with torch.no_grad():
        out = ext.options["gear_feature_fn"](x)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"feature fn of {ext.name!r} must return (features, logits or None)")
    feats, logits = out
    for what, t in (("features", feats), ("logits", logits)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.ndim != 2 or len(t) != len(x)):
            raise ValueError(f"feature fn of {ext.name!r}: {what} must be a [N, D] tensor for N={len(x)} "
                             f"images, got {getattr(t, 'shape', type(t).__name__)}")
    return logits is not None


# --- metrics -----------------------------------------------------------------------------------

def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return dev


def meta_path(cache_dir: Optional[str], cache_key: Optional[str], ext: Extractor) -> Optional[Path]:
    """Our side file next to torch-fidelity's cache: how many real images it was built from."""
    if (cache_dir is None) != (cache_key is None):
        raise ValueError("cache_dir and cache_key must be given together")
    if cache_key is None:
        return None
    if not _NAME_RE.match(cache_key):
        raise ValueError(f"cache_key {cache_key!r} must match {_NAME_RE.pattern}")
    return Path(cache_dir) / f"{cache_key}-{ext.name}-meta.json"


def _check_not_stale(meta: Optional[Path], num_real: int) -> None:
    if meta is not None and meta.is_file():
        cached = json.loads(meta.read_text())["num_real"]
        if cached != num_real:
            raise ValueError(f"stale cache {meta}: it holds {cached} real images, got {num_real}; "
                             "use a cache_key that names this real set")


def _isc_layer(ext: Extractor, images: _Images, dev: torch.device, isc_splits: int) -> Optional[str]:
    layer = ext.isc_layer
    if ext.space == "custom":
        probe = torch.stack([images[i] for i in range(min(2, len(images)))]).to(dev)
        layer = layer if probe_logits(ext, probe) else None
    if layer is not None and len(images) < isc_splits:
        raise ValueError(f"IS with isc_splits={isc_splits} needs at least that many images, got {len(images)}")
    return layer


def _calculate(dev: torch.device, ext: Extractor, isc_layer: Optional[str], **kw) -> dict:
    kw.update(feature_extractor=ext.name, feature_layer_fid=ext.fid_layer, feature_layer_prc=ext.fid_layer,
              fid=True, isc=isc_layer is not None, feature_layer_isc=isc_layer, cuda=dev.type == "cuda",
              save_cpu_ram=True,  # no DataLoader worker processes: the images are already in memory
              **ext.options)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            return torch_fidelity.calculate_metrics(**kw)
    return torch_fidelity.calculate_metrics(**kw)


def _isc(out: dict) -> dict:
    return {"is_mean": float(out[torch_fidelity.KEY_METRIC_ISC_MEAN]),
            "is_std": float(out[torch_fidelity.KEY_METRIC_ISC_STD])}


def cache_real_statistics(real_uint8: Images, extractor: Extractor, *, cache_dir: str, cache_key: str,
                          batch_size: int = 64, device: str = "cpu", isc_splits: int = 10,
                          verbose: bool = False) -> dict:
    """Extract the real set's features and FID statistics into cache_dir once (features are
    computed a single time), so that compute_generation_metrics(..., real_uint8=None, same
    cache_dir / cache_key / extractor) reads no real image.
    Returns {feature_space, extractor, num_real [, is_mean, is_std of the real images]}.
    """
    real = _Images(real_uint8, "real")
    if cache_dir is None or cache_key is None or batch_size < 1 or isc_splits < 1:
        raise ValueError("cache_real_statistics needs cache_dir, cache_key, batch_size >= 1, isc_splits >= 1")
    meta = meta_path(cache_dir, cache_key, extractor)
    dev = _device(device)
    _check_not_stale(meta, len(real))
    isc_layer = _isc_layer(extractor, real, dev, isc_splits)
    # input1 and input2 share the cache name: the second lookup hits what the first stored.
    out = _calculate(dev, extractor, isc_layer, input1=real, input2=real, input1_cache_name=cache_key,
                     input2_cache_name=cache_key, cache=True, cache_root=str(cache_dir),
                     batch_size=batch_size, isc_splits=isc_splits, verbose=verbose)
    layers = sorted({extractor.fid_layer} | ({isc_layer} if isc_layer else set()))
    write_meta(meta, len(real), extractor, layers)
    res = {"feature_space": extractor.space, "extractor": extractor.name, "num_real": len(real)}
    return res | (_isc(out) if isc_layer else {})


def compute_generation_metrics(samples_uint8: Images, real_uint8: Optional[Images], extractor: Extractor, *,
                               pr_k: int = 3, batch_size: int = 64, cache_dir: Optional[str] = None,
                               cache_key: Optional[str] = None, device: str = "cpu",
                               isc_splits: int = 10, verbose: bool = False) -> dict:
    """FID (FDD in the dinov2 space), precision / recall (k = pr_k) and, when the space has class
    logits, IS (mean, std over isc_splits) of samples against real images.

    Images: uint8, (N,H,W,3) or (N,3,H,W), any size (each extractor resizes as it needs).
    cache_dir + cache_key: the real set's features and FID statistics are stored there on the
    first call (or by cache_real_statistics) and reused afterwards: the real images are then not
    read and real_uint8 may be None. cache_key must identify the real set (split, count,
    resolution); a count mismatch with the cached set raises.
    Returns {feature_space, extractor, num_samples, num_real, fid, precision, recall
             [, is_mean, is_std]}.
    """
    samples = _Images(samples_uint8, "samples")
    real = None if real_uint8 is None else _Images(real_uint8, "real")
    meta = meta_path(cache_dir, cache_key, extractor)
    if pr_k < 1 or batch_size < 1 or isc_splits < 1:
        raise ValueError(f"pr_k, batch_size, isc_splits must be >= 1 (got {pr_k}, {batch_size}, {isc_splits})")
    for what, ds in (("samples", samples), ("real", real)):
        if ds is not None and len(ds) <= pr_k:
            raise ValueError(f"precision/recall with k={pr_k} needs more than {pr_k} {what} images, got {len(ds)}")
    dev = _device(device)
    isc_layer = _isc_layer(extractor, samples, dev, isc_splits)
    layers = sorted({extractor.fid_layer} | ({isc_layer} if isc_layer else set()))

    if real is None:
        needed = [] if meta is None else [meta, *cache_files(meta.parent, cache_key, extractor, layers)]
        missing = [p for p in needed if not p.is_file()]
        if meta is None or missing:
            raise ValueError("real_uint8=None needs a complete real-set cache (cache_dir + cache_key); "
                             f"missing: {missing[0] if missing else 'cache_dir/cache_key'}")
        num_real = json.loads(meta.read_text())["num_real"]
    else:
        num_real = len(real)
        _check_not_stale(meta, num_real)

    out = _calculate(dev, extractor, isc_layer, input1=samples,
                     input2=real if real is not None else _CachedOnly(),
                     prc=True, prc_neighborhood=pr_k, batch_size=batch_size, isc_splits=isc_splits,
                     cache=meta is not None, cache_root=None if meta is None else str(cache_dir),
                     input2_cache_name=cache_key, verbose=verbose)
    if meta is not None and real is not None and not meta.is_file():
        write_meta(meta, num_real, extractor, layers)

    res = {"feature_space": extractor.space, "extractor": extractor.name,
           "num_samples": len(samples), "num_real": num_real,
           "fid": float(out[torch_fidelity.KEY_METRIC_FID]),
           "precision": float(out[torch_fidelity.KEY_METRIC_PRECISION]),
           "recall": float(out[torch_fidelity.KEY_METRIC_RECALL])}
    return res | (_isc(out) if isc_layer else {})
