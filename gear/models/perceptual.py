"""Perceptual losses for tokenizer training: LPIPS-VGG (local weights only) or a frozen feature distance.

Both modules' forward(x, target) returns the scalar mean over images (the training loss);
`LPIPS.distance` gives the per-image values (B,) for metrics. `check_perceptual` is the cheap check
a stage runs first: `tokenizer.perceptual: lpips` without its weight files fails in one line
before any work; a weight file that is truncated, empty or a pickle fails in one line when loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from gear.io import ArtifactError, load_torch

VGG_FILES = ("vgg16.pth", "vgg16-397923af.pth")  # torchvision ImageNet VGG16 state dict
LIN_FILES = ("lpips_vgg.pth", "vgg.pth")         # LPIPS v0.1 linear heads (lin{i}.model.1.weight)
VGG_TAPS = (3, 8, 15, 22, 29)                    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG_CHANNELS = (64, 128, 256, 512, 512)


def _find(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ArtifactError(f"LPIPS weights: no {what} in {folder} (expected one of {', '.join(names)})")


def lpips_files(weights_dir: str | Path | None) -> tuple[Path, Path]:
    """(VGG16 file, LPIPS heads file) in weights_dir; one ArtifactError line when either is missing."""
    if weights_dir is None:
        raise ArtifactError("tokenizer.perceptual = lpips needs tokenizer.lpips_weights: a local folder with "
                            f"{VGG_FILES[0]} and {LIN_FILES[0]} (nothing is downloaded)")
    folder = Path(weights_dir)
    if not folder.is_dir():
        raise ArtifactError(f"LPIPS weights folder {folder} not found (set tokenizer.lpips_weights)")
    return _find(folder, VGG_FILES, "VGG16 weights"), _find(folder, LIN_FILES, "LPIPS heads")


def check_perceptual(tokenizer_params) -> None:
    """Cheap check of params.tokenizer's perceptual loss, for the start of every stage that builds
    it (and for params validation): lpips needs its weight files (unless its weight is 0: then
    the loss is never built, see train/tokenizer_objective.build_perceptual)."""
    if tokenizer_params.perceptual == "lpips" and tokenizer_params.perceptual_weight != 0:
        lpips_files(tokenizer_params.lpips_weights)


def _state_dict(path: Path, what: str) -> dict:
    sd = load_torch(path, what)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ArtifactError(f"{what} {path} hold a {type(sd).__name__}, not a state dict of tensors")
    return sd


class LPIPS(nn.Module):
    """LPIPS with a VGG16 trunk: unit-normalise each tapped feature over channels, square the
    difference, weight channels with the learned 1x1 heads, average over space, sum over taps.

    `weights_dir` holds the torchvision VGG16 file and the LPIPS linear-head file (names in
    VGG_FILES / LIN_FILES). Nothing is ever downloaded. Parameters are frozen."""

    def __init__(self, weights_dir: str | Path):
        super().__init__()
        vgg_path, lin_path = lpips_files(weights_dir)
        import torchvision  # here, not at module level: ~3.5 s of start-up every stage would pay

        self.vgg = torchvision.models.vgg16(weights=None).features[: VGG_TAPS[-1] + 1]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in VGG_CHANNELS)
        # LPIPS input scaling: [-1, 1] images to the VGG's ImageNet statistics
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

        vgg_sd = _state_dict(vgg_path, "LPIPS VGG16 weights")
        vgg_sd = {k[len("features."):]: v for k, v in vgg_sd.items() if k.startswith("features.")}
        vgg_sd = {k: v for k, v in vgg_sd.items() if int(k.split(".")[0]) <= VGG_TAPS[-1]}
        self._load(self.vgg, vgg_sd, vgg_path)
        lin_sd = _state_dict(lin_path, "LPIPS heads")
        expected = [f"lin{i}.model.1.weight" for i in range(len(VGG_CHANNELS))]
        if any(k not in lin_sd for k in expected):
            raise ArtifactError(f"LPIPS heads file {lin_path} lacks keys {[k for k in expected if k not in lin_sd]}")
        self._load(self.lins, {f"{i}.weight": lin_sd[k] for i, k in enumerate(expected)}, lin_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _load(module: nn.Module, sd: dict, path: Path) -> None:
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"LPIPS weights {path} do not fit: {' '.join(str(e).split())[:300]}") from None

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always eval: frozen metric network

    def features(self, x: Tensor) -> list[Tensor]:
        h, taps = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.vgg):
            h = layer(h)
            if i in VGG_TAPS:
                taps.append(h)
        return taps

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-image LPIPS (B,) between images in [-1, 1]."""
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for lin, fx, fy in zip(self.lins, self.features(x), self.features(y)):
            fx = fx.float() / (fx.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy.float() / (fy.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fx - fy).pow(2)).mean((1, 2, 3))
        return total

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.distance(x, y).mean()


class FeaturePerceptual(nn.Module):
    """Mean squared distance between unit-normalised patch features of a frozen feature function,
    feature_fn(images in [-1, 1]) -> (B, N, D). Target features are computed without gradient;
    the caller keeps feature_fn's own parameters frozen (a Module feature_fn is held in eval mode)."""

    def __init__(self, feature_fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.feature_fn = feature_fn
        self.eval()

    def train(self, mode: bool = True) -> "FeaturePerceptual":
        return super().train(False)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        fx = self.feature_fn(x)
        with torch.no_grad():
            fy = self.feature_fn(target)
        if fx.dim() != 3 or fx.shape != fy.shape:
            raise ValueError(f"feature_fn must return equal (B, N, D) features, got {tuple(fx.shape)} and {tuple(fy.shape)}")
        fx, fy = F.normalize(fx.float(), dim=-1), F.normalize(fy.float(), dim=-1)
        return (fx - fy).pow(2).sum(-1).mean()


def make_perceptual(kind: str, weights_path: str | Path | None = None,
                    feature_fn: Callable[[Tensor], Tensor] | None = None) -> nn.Module | None:
    """'lpips' (weights_path: the LPIPS weights folder), 'teacher' (needs feature_fn) or 'none' (None)."""
    if kind == "lpips":
        return LPIPS(weights_path)  # lpips_files: one line when weights_path is None or incomplete
    if kind == "teacher":
        if feature_fn is None:
            raise ValueError("perceptual = teacher needs a frozen feature function (the teacher's patch features)")
        return FeaturePerceptual(feature_fn)
    if kind == "none":
        return None
    raise ValueError(f"unknown perceptual loss {kind!r}; known: lpips, teacher, none")
