"""Frozen alignment teachers: per-patch features on the tokenizer's token grid.

    teacher = load_teacher(params, device)
    y = teacher.features(images, grid)   # images float in [-1, 1] (B, 3, H, W) -> (B, grid*grid, dim) float32

Each teacher normalizes its input, resizes it to grid * patch pixels (plain bicubic after the
normalization, no antialias and no clamp: the release's target preprocessing), runs with
position embeddings interpolated to that grid (timm `dynamic_img_size`; open_clip resamples its
embedding once, at build time, to the params' grid), and returns the final-norm patch tokens in
row-major order with CLS / register tokens dropped. Always eval mode, no grad, frozen; bf16
autocast when params.compute.precision is bf16 and the device has fast bf16 (features come back
as float32).

Registry (params.teacher): `demo` (trained by `gear teacher`, read from paths.teacher_dir()),
`dinov2_vitb14`, `dinov2_vitl14`, `dinov3_vitb16` (timm), `siglip2_vitb16`, `clip_vitb16`
(open_clip) and `vjepa2_vitl16` (V-JEPA 2 ViT-L, transformers' VJEPA2Model: an image is fed as a
clip of one tubelet, the frame repeated, as V-JEPA 2's image probes do; 3D RoPE, so any grid).
Hub weights come from the Hugging Face cache (downloaded when online) or from the local file
params.teachers.weights (for V-JEPA: a folder written by `save_pretrained`). With neither, loading
fails at once with a one-line message (offline or hub unreachable) instead of the hub client's
~46 s retry loop.

Target z-score (params.teachers.zscore; `auto` = on for the non-DINO teachers siglip2 and clip,
as in the reference, off for the DINO ones and `demo`): per image and channel, over the patches,
    y <- (1 - s) * y + s * (y - mean_patches(y)) / (std_patches(y) + 1e-6),  s = zscore_strength.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gear import paths
from gear import hub
from gear.io import ArtifactError, load_tensors, read_json
from gear.models.demo_teacher import DemoViT


@dataclass(frozen=True)
class HubSpec:
    library: str          # timm | open_clip
    arch: str             # timm model name | open_clip model name
    tag: str              # timm pretrained tag | open_clip pretrained tag
    hub_id: str           # Hugging Face repo that holds the weights
    files: tuple          # weight files in that repo (any one cached is enough)
    patch: int
    pool_size: int        # input side for pooled() (the model's pre-training resolution)
    dino: bool


_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

HUB_TEACHERS = {
    "dinov2_vitb14": HubSpec("timm", "vit_base_patch14_dinov2", "lvd142m", "timm/vit_base_patch14_dinov2.lvd142m",
                             _TIMM_FILES, 14, 224, True),
    "dinov2_vitl14": HubSpec("timm", "vit_large_patch14_dinov2", "lvd142m", "timm/vit_large_patch14_dinov2.lvd142m",
                             _TIMM_FILES, 14, 224, True),
    "dinov3_vitb16": HubSpec("timm", "vit_base_patch16_dinov3", "lvd1689m", "timm/vit_base_patch16_dinov3.lvd1689m",
                             _TIMM_FILES, 16, 256, True),
    "siglip2_vitb16": HubSpec("open_clip", "ViT-B-16-SigLIP2", "webli", "timm/ViT-B-16-SigLIP2",
                              _OPEN_CLIP_FILES, 16, 224, False),
    "clip_vitb16": HubSpec("open_clip", "ViT-B-16-quickgelu", "openai", "timm/vit_base_patch16_clip_224.openai",
                           _OPEN_CLIP_FILES, 16, 224, False),
    "vjepa2_vitl16": HubSpec("transformers", "VJEPA2Model", "", "facebook/vjepa2-vitl-fpc64-256",
                             ("model.safetensors",), 16, 256, False),
}
TEACHER_NAMES = ("demo", *HUB_TEACHERS)


def bf16_helps(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX); on an
    AVX2-only CPU bf16 matmuls are emulated and ~50x slower than fp32."""
    return device.type == "cuda" or (device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def spatial_zscore(y: torch.Tensor, strength: float) -> torch.Tensor:
    """(B, N, D) -> blend of y and its per-image, per-channel z-score over the N patches."""
    if strength == 0:
        return y
    z = (y - y.mean(dim=1, keepdim=True)) / (y.std(dim=1, keepdim=True) + 1e-6)
    return torch.lerp(y, z, strength)


def zscore_strength(params, name: str | None = None) -> float:
    """The z-score strength params ask for, for teacher `name` (default params.teacher)."""
    name = name or params.teacher
    mode = params.teachers.zscore
    on = mode == "on" or (mode == "auto" and name in HUB_TEACHERS and not HUB_TEACHERS[name].dino)
    return params.teachers.zscore_strength if on else 0.0


# ----------------------------------------------------------------------------------------------
# the teacher interface


class Teacher(nn.Module):
    """Frozen feature extractor. Subclasses implement `_forward(x) -> (patch tokens, pooled)` on
    normalized inputs whose side is a multiple of `patch`."""

    def __init__(self, name: str, dim: int, patch: int, pool_size: int, mean, std,
                 zscore: float = 0.0, precision: str = "bf16"):
        super().__init__()
        self.name, self.dim, self.patch, self.pool_size = name, dim, patch, pool_size
        self.zscore, self.precision = zscore, precision
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # a teacher never leaves eval mode

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _prepare(self, images: torch.Tensor, side: int, release: bool = True) -> torch.Tensor:
        """[-1, 1] images -> normalized input of side x side. release: normalize, then plain
        bicubic (the release's alignment targets). Otherwise (the pooled FID-space feature):
        bicubic antialiased when shrinking, clamped to [0, 1], then normalized."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"teacher {self.name}: expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = (images.float().to(self.mean.device) + 1) / 2
        resize = x.shape[-2:] != (side, side)
        if release:
            x = (x - self.mean) / self.std
            return F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False) if resize else x
        if resize:
            down = side < min(x.shape[-2:])
            x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False, antialias=down).clamp(0, 1)
        return (x - self.mean) / self.std

    def _autocast(self, x: torch.Tensor):
        on = self.precision == "bf16" and bf16_helps(x.device)
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=on)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast(x):
            tokens, pooled = self._forward(x)
        return tokens.float(), pooled.float()

    def features(self, images: torch.Tensor, grid: int, grad: bool = False) -> torch.Tensor:
        """Final-norm patch tokens on a grid x grid token grid: (B, grid*grid, dim) float32.
        grad=True lets gradients reach `images` (a perceptual loss); the weights stay frozen."""
        with torch.set_grad_enabled(grad):
            tokens, _ = self._run(self._prepare(images, grid * self.patch))
        if tokens.shape[1:] != (grid * grid, self.dim):
            raise RuntimeError(f"teacher {self.name}: got tokens {tuple(tokens.shape)} for grid {grid}")
        return spatial_zscore(tokens, self.zscore)

    @torch.no_grad()
    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Global image embedding at the teacher's own resolution (FID feature space): (B, P)."""
        return self._run(self._prepare(images, self.pool_size, release=False))[1]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"teacher {self.name} has no classifier head; logits need the demo teacher")


class DemoTeacher(Teacher):
    def __init__(self, vit: DemoViT, classes: list[str], zscore: float = 0.0, precision: str = "bf16"):
        cfg = vit.config
        # the demo ViT sees images in [-1, 1]: mean = std = 0.5 undo the [0, 1] mapping of _prepare
        super().__init__("demo", cfg["dim"], cfg["patch"], cfg["image_size"], (0.5,) * 3, (0.5,) * 3, zscore, precision)
        self.vit, self.classes = vit, list(classes)
        self._freeze()

    def _forward(self, x):
        tokens = self.vit.tokens(x)
        return tokens[:, 1:], tokens[:, 0]

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits at the training resolution: (B, num_classes) float32."""
        x = self._prepare(images, self.pool_size)
        with self._autocast(x):
            return self.vit(x).float()


class TimmTeacher(Teacher):
    """A timm ViT built with dynamic_img_size=True (position embeddings resampled per input)."""

    def __init__(self, name: str, model: nn.Module, patch: int, pool_size: int, zscore: float = 0.0,
                 precision: str = "bf16"):
        cfg = model.pretrained_cfg
        super().__init__(name, model.num_features, patch, pool_size, cfg["mean"], cfg["std"], zscore, precision)
        self.model = model
        self._freeze()

    def _forward(self, x):
        tokens = self.model.forward_features(x)  # (B, prefix + N, D), after the final norm
        pooled = self.model.forward_head(tokens, pre_logits=True)
        return tokens[:, self.model.num_prefix_tokens:], pooled


class OpenClipTeacher(Teacher):
    """An open_clip image tower built for one grid (open_clip resamples its position embedding
    when it loads the weights); `features` accepts that grid only."""

    def __init__(self, name: str, visual: nn.Module, patch: int, grid: int, mean, std, zscore: float = 0.0,
                 precision: str = "bf16"):
        trunk = getattr(visual, "trunk", None)  # SigLIP2: a timm ViT inside open_clip
        dim = trunk.num_features if trunk is not None else visual.transformer.width
        super().__init__(name, dim, patch, grid * patch, mean, std, zscore, precision)
        self.visual, self.grid = visual, grid
        if trunk is None:
            visual.output_tokens = True
        self._freeze()

    def _forward(self, x):
        trunk = getattr(self.visual, "trunk", None)
        if trunk is not None:
            tokens = trunk.forward_features(x)
            pooled = self.visual.head(trunk.forward_head(tokens))
            return tokens[:, trunk.num_prefix_tokens:], pooled
        pooled, tokens = self.visual(x)  # tokens: after ln_post, class token dropped
        return tokens, pooled

    def features(self, images, grid, grad=False):
        if grid != self.grid:
            raise ValueError(f"teacher {self.name} was built for a {self.grid}x{self.grid} grid, got {grid}; "
                             f"load it with load_teacher(..., grid={grid})")
        return super().features(images, grid, grad)


class VJepaTeacher(Teacher):
    """V-JEPA 2's encoder (transformers' VJEPA2Model, predictor skipped): the image repeated over
    one tubelet of frames; its final-norm patch tokens (no class token), their mean as pooled."""

    def __init__(self, name: str, model: nn.Module, patch: int, pool_size: int, zscore: float = 0.0,
                 precision: str = "bf16"):
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # V-JEPA 2's video processor's

        super().__init__(name, model.config.hidden_size, patch, pool_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
                         zscore, precision)
        self.model, self.frames = model, model.config.tubelet_size
        self._freeze()

    def _forward(self, x):
        clip = x.unsqueeze(1).expand(-1, self.frames, -1, -1, -1)  # (B, T, 3, H, W)
        tokens = self.model(pixel_values_videos=clip, skip_predictor=True).last_hidden_state
        return tokens, tokens.mean(dim=1)


# ----------------------------------------------------------------------------------------------
# loading


def resolve_weights(name: str, weights: str | None) -> str | None:
    """A local weights file, or None when the hub can serve them (cached or reachable).
    Raises RuntimeError at once when neither."""
    spec = HUB_TEACHERS[name]
    if weights:
        path = Path(weights).expanduser()
        if spec.library == "transformers":
            if not (path / "config.json").is_file():
                raise RuntimeError(f"teacher {name}: teachers.weights {path} is not a save_pretrained folder "
                                   "(no config.json)")
        elif not path.is_file():
            raise RuntimeError(f"teacher {name}: teachers.weights file {path} not found")
        return str(path)
    why = hub.not_served(any(hub.cached(spec.hub_id, f) for f in spec.files))
    if why is None:
        return None
    raise RuntimeError(f"teacher {name}: weights for hub id {spec.hub_id} are not in the Hugging Face cache "
                       f"and {why}; download them once (huggingface-cli download {spec.hub_id}) or pass a "
                       f"local file: --set teachers.weights=/path/to/{spec.files[0]}")


def build_timm(spec: HubSpec, weights: str | None, pretrained: bool = True, **kwargs) -> nn.Module:
    import timm

    overlay = dict(file=weights) if weights else None
    return timm.create_model(f"{spec.arch}.{spec.tag}", pretrained=pretrained, pretrained_cfg_overlay=overlay,
                             dynamic_img_size=True, num_classes=0, **kwargs)


def build_open_clip(spec: HubSpec, weights: str | None, image_size: int, pretrained: bool = True) -> tuple:
    """(image tower, mean, std); the text tower is dropped."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.arch, spec.tag)  # normalization of the checkpoint, known offline
    source = (weights or spec.tag) if pretrained else None
    model = open_clip.create_model(spec.arch, pretrained=source, force_image_size=image_size)
    return model.visual, cfg["mean"], cfg["std"]


def build_transformers(spec: HubSpec, weights: str | None) -> nn.Module:
    import transformers

    return getattr(transformers, spec.arch).from_pretrained(weights or spec.hub_id)


def unavailable(name: str, weights: str | None) -> str | None:
    """Why teacher `name` cannot be loaded here (its library or its weights), or None. Quick: no
    download is tried."""
    if name == "demo":
        return None
    return hub.unavailable(f"teacher {name}", HUB_TEACHERS[name].library, lambda: resolve_weights(name, weights),
                           RuntimeError)


def load_demo(params, zscore: float = 0.0) -> DemoTeacher:
    """The trained demo teacher from paths.teacher_dir(); a clear error when it is missing or stale."""
    d = paths.teacher_dir()
    cfg_path, weights = d / "config.json", d / "model.safetensors"
    if not cfg_path.is_file():
        raise ArtifactError(f"demo teacher not found in {d}; run `gear teacher` first")
    cfg = read_json(cfg_path, "demo teacher config")
    arch = cfg.get("architecture")
    if not cfg.get("trained") or arch is None:
        raise ArtifactError(f"{cfg_path} holds no trained demo teacher (it was written for teacher "
                            f"{cfg.get('teacher')!r}); run `gear teacher` with teacher=demo first")
    if not weights.is_file():
        raise ArtifactError(f"demo teacher weights {weights} not found; run `gear teacher` first")
    t = params.teachers
    want = dict(patch=t.demo_patch, dim=t.demo_dim, depth=t.demo_depth, heads=t.demo_heads)
    for key, value in want.items():
        if arch.get(key) != value:
            raise ArtifactError(f"demo teacher in {d} has {key}={arch.get(key)} but params give "
                                f"teachers.demo_{key}={value}; rerun `gear teacher`")
    vit = DemoViT(**arch)
    try:
        vit.load_state_dict(load_tensors(weights, "demo teacher weights"))
    except RuntimeError as e:
        raise ArtifactError(f"demo teacher weights {weights} do not match its config ({str(e).splitlines()[0]})") from None
    return DemoTeacher(vit, cfg["classes"], zscore, params.compute.precision)


def load_teacher(params, device: torch.device | str = "cpu", name: str | None = None,
                 grid: int | None = None) -> Teacher:
    """The frozen teacher `name` (default params.teacher) on `device`. `grid` (default: the
    tokenizer's token grid) matters only for open_clip teachers, which are built for one grid."""
    name = name or params.teacher
    if name not in TEACHER_NAMES:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(TEACHER_NAMES)}")
    strength = zscore_strength(params, name)
    if name == "demo":
        return load_demo(params, strength).to(device)
    spec = HUB_TEACHERS[name]
    weights = resolve_weights(name, params.teachers.weights)
    grid = grid or params.data.resolution // params.tokenizer.downsample
    if spec.library == "timm":
        teacher = TimmTeacher(name, build_timm(spec, weights), spec.patch, spec.pool_size, strength,
                              params.compute.precision)
    elif spec.library == "transformers":
        teacher = VJepaTeacher(name, build_transformers(spec, weights), spec.patch, spec.pool_size, strength,
                               params.compute.precision)
    else:
        visual, mean, std = build_open_clip(spec, weights, grid * spec.patch)
        teacher = OpenClipTeacher(name, visual, spec.patch, grid, mean, std, strength, params.compute.precision)
    return teacher.to(device)
