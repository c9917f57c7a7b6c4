"""Feature spaces for the generation metrics (FID / FDD, Inception Score, precision / recall),
as torch-fidelity feature extractors, and the file layout of the real-set cache.

gear/metrics/features.py runs these extractors batch by batch (over several processes) and calls
torch-fidelity's feature-level functions; this module builds the spaces:
- 'inception': torch-fidelity's `inception-v3-compat` (the TF-FID Inception-v3; pool features for
  FID and precision/recall, unbiased logits for IS). Offline it needs a local weights file.
- 'dinov2':    timm DINOv2 (default ViT-B/14), CLS token after the final norm, images resized to
  224 px: FID in this space is FDD. Weights from a local file or the hub.
- 'custom':    any fn(images_uint8 [N,3,H,W]) -> (features [N,D], logits [N,C] | None); the
  embedded default passes the demo teacher (pooled patch features, classifier-head logits).
Convention (torch-fidelity's): input1 = generated samples, input2 = real images. Precision is the
share of samples inside the real manifold (union of k-NN balls of real features); recall is the
share of real images inside the sample manifold.
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
    """Feature space for gear/metrics/features.py (FeatureModel).

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


# --- the real-set cache files ----------------------------------------------------------------

def cache_files(cache_dir: Path, key: str, ext: Extractor, layers: list[str]) -> list[Path]:
    """The real-set cache files: features of each layer, then the FID statistics. File names of
    torch-fidelity 0.4.0 (utils.extract_featuresdict_from_input_id_cached and
    metric_fid.fid_featuresdict_to_statistics_cached)."""
    files = [cache_dir / f"{key}-{ext.name}-features-{layer}.pt" for layer in layers]
    return files + [cache_dir / f"{key}-{ext.name}-stat-fid-{ext.fid_layer}.pt"]


def write_meta(meta: Path, num_real: int, ext: Extractor, layers: list[str]) -> None:
    meta.write_text(json.dumps({"num_real": num_real, "extractor": ext.name, "layers": layers}))


def meta_path(cache_dir: Optional[str], cache_key: Optional[str], ext: Extractor) -> Optional[Path]:
    """Our side file next to torch-fidelity's cache: how many real images it was built from."""
    if (cache_dir is None) != (cache_key is None):
        raise ValueError("cache_dir and cache_key must be given together")
    if cache_key is None:
        return None
    if not _NAME_RE.match(cache_key):
        raise ValueError(f"cache_key {cache_key!r} must match {_NAME_RE.pattern}")
    return Path(cache_dir) / f"{cache_key}-{ext.name}-meta.json"
