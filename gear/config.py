"""params.yaml as typed, validated plain data.

`load_params(path, overrides)` is the only way the CLI, the Snakefile and the tests read params:
types are checked field by field, unknown keys are rejected by name (with a suggestion), ranges
and cross-field rules are checked once, and every problem raises `ParamsError` with a one-line
message that names the key, the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

QUANTIZERS = ("vq", "lfq", "ibq")
TEACHERS = ("demo", "dinov2_vitb14", "dinov2_vitl14", "dinov3_vitb16", "siglip2_vitb16", "clip_vitb16",
            "vjepa2_vitl16")
E2E_MODES = ("gear", "ste", "none")
AR_SIZES = ("tiny", "small", "B", "L", "XL", "1B", "custom")
TEXT_ENCODERS = ("demo", "qwen3_1.7b", "flan_t5_xl", "clip_vitb16")  # gear/t2i/text_encoders.py


class ParamsError(ValueError):
    """A bad params file or override; the message is one line a person can act on."""


@dataclass
class Data:
    source: Literal["embedded", "imagefolder"] = "embedded"
    train_root: Optional[str] = None
    val_root: Optional[str] = None
    val_fraction: float = 0.1
    resolution: int = 32
    shard_dir: str = "data/shards"
    samples_per_shard: int = 2000
    image_format: Literal["png", "jpg"] = "png"
    embedded_train_per_class: int = 700
    embedded_val_per_class: int = 100
    min_size: int = 0             # imagefolder: skip images whose short side is below this (0: keep all)
    random_crop: bool = True
    hflip: bool = True


@dataclass
class Teachers:
    weights: Optional[str] = None
    zscore: Literal["auto", "on", "off"] = "auto"
    zscore_strength: float = 0.6
    demo_dim: int = 128
    demo_depth: int = 4
    demo_heads: int = 4
    demo_patch: int = 4
    demo_steps: int = 600
    demo_batch_size: int = 64
    demo_lr: float = 1e-3


@dataclass
class Tokenizer:
    ch: int = 16
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    enc_res_blocks: int = 1
    dec_res_blocks: int = 1
    z_channels: int = 64
    attn_lowest: bool = True
    norm_groups: int = 8
    codebook_size: int = 512
    code_dim: int = 8
    l2_norm: bool = True
    commit_weight: float = 0.25
    codebook_weight: float = 1.0
    entropy_weight: float = 0.05
    entropy_temperature: float = 0.01
    recon_loss: Literal["l1", "l2"] = "l1"
    recon_weight: float = 1.0
    perceptual: Literal["lpips", "teacher", "none"] = "teacher"
    perceptual_weight: float = 0.1
    lpips_weights: Optional[str] = None
    gan_weight: float = 0.1
    gan_start: int = 200
    disc_ch: int = 32
    disc_layers: int = 2
    init: str = "scratch"
    init_key: Optional[str] = None  # entry of the init checkpoint dict holding the tokenizer (null: auto)
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 0
    lr_decay: Literal["constant", "cosine"] = "constant"
    disc_lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.99

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass
class AR:
    sizes: list[str] = field(default_factory=lambda: ["tiny"])
    align_layers: list[int] = field(default_factory=list)
    custom_layers: int = 4
    custom_dim: int = 192
    custom_heads: int = 3
    class_dropout: float = 0.1
    token_dropout: float = 0.1
    resid_dropout: float = 0.0      # after attention's output projection (LlamaGen / the release: 0.1)
    ffn_dropout: float = 0.0        # after the SwiGLU (LlamaGen / the release: 0.1)
    projector_hidden: int = 256
    steps: int = 800
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    warmup_steps: int = 50
    init: Optional[str] = None      # a LlamaGen / GEAR-release GPT checkpoint train-ar starts from
    init_key: Optional[str] = None  # entry of that checkpoint dict holding the GPT (null: ema, then model)

    def align_layer_for(self, size: str, default: int) -> int:
        """Tap layer of the final AR of `size` (ar.align_layers, else the top-level align_layer)."""
        return self.align_layers[self.sizes.index(size)] if self.align_layers else default


@dataclass
class Tune:
    ar_size: str = "tiny"
    init: Literal["warmup", "scratch"] = "warmup"
    gan: bool = True
    gan_start: int = 0  # tune step at which the GAN joins (0: the warm-up trained the discriminator)
    soft_forward: Literal["soft", "onehot_st"] = "soft"
    ablations: list[str] = field(default_factory=lambda: ["ste"])
    steps: int = 400
    batch_size: int = 32
    lr_tokenizer: float = 1e-4
    lr_ar: float = 1e-3
    lr_disc: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.99


@dataclass
class Sample:
    per_class: int = 16
    batch_size: int = 64
    cfg_scale: float = 1.5
    cfg_interval: list[float] = field(default_factory=lambda: [0.0, 1.0])
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    use_ema: bool = True
    compile: bool = False


@dataclass
class Metrics:
    feature_space: Literal["demo", "inception", "dinov2"] = "demo"
    inception_weights: Optional[str] = None
    reference: Optional[str] = None  # ADM reference batch .npz (inception space; gear/metrics/reference.py)
    real_split: Literal["train", "val"] = "train"
    max_real: int = 4000
    pr_k: int = 3
    cknna_k: int = 10
    max_patches: int = 2048
    batch_size: int = 128


@dataclass
class Compute:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    compile: bool = False
    grad_checkpointing: bool = False
    fsdp: bool = False
    workers: int = 2
    seed: int = 0
    log_every: int = 25
    save_every: int = 100
    state_dir: str = ".gear_state"


@dataclass
class Study:
    """The seed dimension and how the report judges arm-vs-arm differences."""
    seeds: list[int] = field(default_factory=lambda: [0])  # each reruns tune .. evaluate (gear/paths.py)
    confidence: float = 0.95       # level of the paired t intervals
    collapse_fraction: float = 0.1  # effective size below this share of the codebook = collapse (C1, C3)
    recon_margin_db: float = 0.5   # C4 non-inferiority margin: PSNR may fall by at most this much


@dataclass
class Ablations:
    """The seed's ablation grid (gear/ablations.py): one axis varies at a time, every other knob at
    its default, which is the params' own value (the main DAG's GEAR arm is each table's default row,
    listed first when an axis does not name it)."""
    # Empty by default (each axis is then its default row alone): params.yaml and the presets list the grid.
    training: list[str] = field(default_factory=list)
    quantizer: list[str] = field(default_factory=list)
    tau: list[float] = field(default_factory=list)
    align_weight: list[float] = field(default_factory=list)
    align_layer: list[int] = field(default_factory=list)
    teacher: list[str] = field(default_factory=list)
    tune_ar_size: list[str] = field(default_factory=list)
    init: list[str] = field(default_factory=list)
    hub_teachers: bool = False  # teacher rows with a hub teacher run (their weights can load here); false: skipped
    eval_size: Optional[str] = None  # the fresh AR (one of ar.sizes) judging each row's gFID; null: ar.sizes[0]


@dataclass
class T2IData:
    source: Literal["embedded", "folder", "jsonl"] = "embedded"
    root: Optional[str] = None      # folder: images with a same-named .txt caption beside each (any depth)
    manifest: Optional[str] = None  # jsonl: one {"image": path, "caption": text} per line (paths relative to it)
    val_fraction: float = 0.1       # folder / jsonl: held-out share, by a fixed hash of the image path
    embedded_train: int = 3000
    embedded_val: int = 480
    samples_per_shard: int = 2000


@dataclass
class T2IText:
    encoder: str = "demo"           # registry name (TEXT_ENCODERS)
    weights: Optional[str] = None   # local folder / file, or another hub id of the family; null: the registry's
    max_len: int = 16               # text prefix positions (left-padded; longer captions are cut and counted)
    demo_dim: int = 64
    batch_size: int = 64


@dataclass
class T2IAR:
    size: str = "tiny"
    align_layer: int = 2
    align_weight: float = 0.5
    caption_dropout: float = 0.1
    token_dropout: float = 0.1
    resid_dropout: float = 0.0
    ffn_dropout: float = 0.0
    projector_hidden: int = 256
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    eval_steps: list[int] = field(default_factory=lambda: [200, 400, 600])  # EMA snapshots sampled and measured


@dataclass
class T2ISample:
    cfg_scale: float = 1.75
    prompts: int = 96               # the first n held-out prompts of the prompt file
    per_prompt: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 64


@dataclass
class T2IJudge:
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3


@dataclass
class T2I:
    """The text-to-image transfer (gear/t2i/): a fresh caption-conditioned AR per tokenizer arm."""
    data: T2IData = field(default_factory=T2IData)
    text: T2IText = field(default_factory=T2IText)
    ar: T2IAR = field(default_factory=T2IAR)
    sample: T2ISample = field(default_factory=T2ISample)
    judge: T2IJudge = field(default_factory=T2IJudge)
    feature_space: Literal["demo", "dinov2"] = "demo"  # FDD: Frechet distance in this space (dinov2 at full scale)


@dataclass
class Resources:
    train_gpus: int = 1
    train_nodes: int = 1
    train_cpus: int = 8
    train_mem_mb: int = 64000
    train_runtime: int = 240
    light_cpus: int = 2
    light_mem_mb: int = 8000
    light_runtime: int = 30


@dataclass
class Params:
    tau: float = 0.1
    align_weight: float = 0.5
    align_weight_ar: float = 0.5
    align_layer: int = 2
    teacher: str = "demo"
    quantizer: str = "vq"
    e2e_mode: str = "gear"
    data: Data = field(default_factory=Data)
    teachers: Teachers = field(default_factory=Teachers)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    ar: AR = field(default_factory=AR)
    tune: Tune = field(default_factory=Tune)
    sample: Sample = field(default_factory=Sample)
    metrics: Metrics = field(default_factory=Metrics)
    compute: Compute = field(default_factory=Compute)
    study: Study = field(default_factory=Study)
    ablations: Ablations = field(default_factory=Ablations)
    t2i: T2I = field(default_factory=T2I)
    resources: Resources = field(default_factory=Resources)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self, *sections: str) -> str:
        """Short sha256 of the named top-level keys/sections (all when none), for provenance."""
        d = self.to_dict()
        if sections:  # a dotted key names a subsection or leaf: "t2i.ar"
            d = {k: _dotted(d, k) for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _dotted(d: dict, key: str):
    for part in key.split("."):
        d = d[part]
    return d


# ----------------------------------------------------------------------------------------------
# loading and validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):  # YAML 1.1 reads on/off as bools
            value = "on" if value else "off"
        if value not in allowed:
            raise ParamsError(f"{key} = {value!r}: must be one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key} = {value!r}: must be a {_type_name(tp)}")
        (inner,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key} = {value!r}: must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key} = {value!r}: must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key} = {value!r}: must be a number")
        if not math.isfinite(value):  # .inf / .nan parse as floats; no knob means anything there
            raise ParamsError(f"{key} = {value!r}: must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key} = {value!r}: must be a string")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix or 'params'}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            full = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ParamsError(f"unknown key {full}{hint}; allowed here: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", raw[name], tp)
    return cls(**kwargs)


def _check(cond: bool, key: str, value: Any, rule: str) -> None:
    if not cond:
        raise ParamsError(f"{key} = {value!r}: {rule}")


# Lower bounds of the numeric keys that have no rule of their own in validate(); checked first, so
# a bad value is named before a cross-field rule trips over it.
LOWER_BOUNDS = {
    "data.min_size": 0,
    "teachers.demo_dim": 1, "teachers.demo_depth": 1, "teachers.demo_heads": 1, "teachers.demo_patch": 1,
    "teachers.demo_steps": 1, "teachers.demo_batch_size": 1,
    "tokenizer.ch": 1, "tokenizer.enc_res_blocks": 1, "tokenizer.dec_res_blocks": 1, "tokenizer.z_channels": 1,
    "tokenizer.norm_groups": 1, "tokenizer.code_dim": 1, "tokenizer.gan_start": 0, "tokenizer.disc_ch": 1,
    "tokenizer.disc_layers": 1, "tokenizer.grad_clip": 0,
    "ar.custom_layers": 1, "ar.custom_dim": 1, "ar.custom_heads": 1, "ar.projector_hidden": 1,
    "ar.warmup_steps": 0, "ar.weight_decay": 0, "ar.grad_clip": 0,
    "tune.batch_size": 1, "tune.weight_decay": 0, "tune.grad_clip": 0,
    "sample.batch_size": 1,
    "metrics.max_real": 1, "metrics.max_patches": 1, "metrics.batch_size": 1,
    "compute.workers": 0, "compute.seed": 0,
    "resources.train_gpus": 0, "resources.train_nodes": 1, "resources.train_cpus": 1, "resources.train_mem_mb": 1,
    "resources.train_runtime": 1, "resources.light_cpus": 1, "resources.light_mem_mb": 1,
    "resources.light_runtime": 1,
}


def _get(p: Params, key: str) -> Any:
    for part in key.split("."):
        p = getattr(p, part)
    return p


def validate(p: Params) -> Params:
    """Ranges and cross-field rules; raises ParamsError on the first problem. The ablation grid's
    rows are checked at the edges (gear.dag.load_params), which build them through this module."""
    from gear.models.registry import ar_depth  # local: keep config import light

    for key, lo in LOWER_BOUNDS.items():
        _check(_get(p, key) >= lo, key, _get(p, key), f"must be >= {lo}")
    _check(0 <= p.teachers.zscore_strength <= 1, "teachers.zscore_strength", p.teachers.zscore_strength,
           "must be in [0, 1]")
    _check(p.teachers.demo_lr > 0, "teachers.demo_lr", p.teachers.demo_lr, "must be > 0")
    _check(p.tokenizer.disc_lr > 0, "tokenizer.disc_lr", p.tokenizer.disc_lr, "must be > 0")
    for i, m in enumerate(p.tokenizer.ch_mult):
        _check(m >= 1, f"tokenizer.ch_mult[{i}]", m, "must be >= 1")
    _check((p.ar.custom_dim // p.ar.custom_heads) % 4 == 0, "ar.custom_heads", p.ar.custom_heads,
           f"ar.custom_dim {p.ar.custom_dim} / heads must give a head dim divisible by 4 (2D RoPE)")
    _check(p.tau > 0, "tau", p.tau, "must be > 0")
    _check(p.align_weight >= 0, "align_weight", p.align_weight, "must be >= 0")
    _check(p.align_weight_ar >= 0, "align_weight_ar", p.align_weight_ar, "must be >= 0")
    _check(p.teacher in TEACHERS, "teacher", p.teacher, f"must be one of {', '.join(TEACHERS)}")
    _check(p.quantizer in QUANTIZERS, "quantizer", p.quantizer, f"must be one of {', '.join(QUANTIZERS)}")
    _check(p.e2e_mode in E2E_MODES, "e2e_mode", p.e2e_mode, f"must be one of {', '.join(E2E_MODES)}")
    for i, s in enumerate(p.ar.sizes):
        _check(s in AR_SIZES, f"ar.sizes[{i}]", s, f"must be one of {', '.join(AR_SIZES)}")
    _check(len(p.ar.sizes) > 0, "ar.sizes", p.ar.sizes, "must list at least one size")
    _check(p.tune.ar_size in AR_SIZES, "tune.ar_size", p.tune.ar_size, f"must be one of {', '.join(AR_SIZES)}")
    for s in sorted((set() if p.ar.align_layers else set(p.ar.sizes)) | {p.tune.ar_size}):
        depth = ar_depth(s, p)
        _check(1 <= p.align_layer <= depth, "align_layer", p.align_layer,
               f"must be within 1..{depth} (depth of AR size {s})")
    if p.ar.align_layers:
        _check(len(p.ar.align_layers) == len(p.ar.sizes), "ar.align_layers", p.ar.align_layers,
               f"must have one entry per ar.sizes {p.ar.sizes} (or be [])")
        for i, (s, l) in enumerate(zip(p.ar.sizes, p.ar.align_layers)):
            depth = ar_depth(s, p)
            _check(1 <= l <= depth, f"ar.align_layers[{i}]", l, f"must be within 1..{depth} (depth of AR size {s})")
    for i, a in enumerate(p.tune.ablations):
        _check(a in ("ste",), f"tune.ablations[{i}]", a, "must be one of ste")

    d = p.data
    if d.source == "imagefolder":
        _check(bool(d.train_root), "data.train_root", d.train_root, "required when data.source = imagefolder")
    _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    _check(d.resolution >= 8, "data.resolution", d.resolution, "must be >= 8")
    _check(d.samples_per_shard > 0, "data.samples_per_shard", d.samples_per_shard, "must be > 0")
    _check(d.embedded_train_per_class > 0, "data.embedded_train_per_class", d.embedded_train_per_class, "must be > 0")
    _check(d.embedded_val_per_class > 0, "data.embedded_val_per_class", d.embedded_val_per_class, "must be > 0")

    t = p.tokenizer
    _check(d.resolution % t.downsample == 0, "tokenizer.ch_mult", t.ch_mult,
           f"downsampling {t.downsample} must divide data.resolution {d.resolution}")
    _check(t.codebook_size >= 2, "tokenizer.codebook_size", t.codebook_size, "must be >= 2")
    if p.quantizer == "lfq":
        _check(t.codebook_size & (t.codebook_size - 1) == 0, "tokenizer.codebook_size", t.codebook_size,
               "must be a power of two for quantizer lfq")
    _check(t.ch % t.norm_groups == 0, "tokenizer.norm_groups", t.norm_groups, f"must divide tokenizer.ch {t.ch}")
    for key in ("commit_weight", "codebook_weight", "entropy_weight", "recon_weight", "perceptual_weight", "gan_weight", "weight_decay"):
        _check(getattr(t, key) >= 0, f"tokenizer.{key}", getattr(t, key), "must be >= 0")
    _check(0 <= t.warmup_steps < max(t.steps, 1), "tokenizer.warmup_steps", t.warmup_steps,
           f"must be in [0, tokenizer.steps = {t.steps})")
    _check(t.entropy_temperature > 0, "tokenizer.entropy_temperature", t.entropy_temperature, "must be > 0")
    if t.init != "scratch":
        _check(Path(t.init).suffix in (".pt", ".pth", ".safetensors", ".bin"), "tokenizer.init", t.init,
               "must be 'scratch' or a checkpoint path (.pt/.pth/.safetensors)")
    _check(t.init_key is None or t.init != "scratch", "tokenizer.init_key", t.init_key,
           "needs tokenizer.init (a checkpoint file)")
    if p.ar.init is not None:
        _check(Path(p.ar.init).suffix in (".pt", ".pth", ".safetensors", ".bin"), "ar.init", p.ar.init,
               "must be null or a GPT checkpoint path (.pt/.pth/.safetensors/.bin)")
    _check(p.ar.init_key is None or p.ar.init is not None, "ar.init_key", p.ar.init_key, "needs ar.init")

    for sec_name in ("tokenizer", "ar"):
        sec = getattr(p, sec_name)
        _check(sec.batch_size > 0, f"{sec_name}.batch_size", sec.batch_size, "must be > 0")
        if sec.init in (None, "scratch"):
            _check(sec.steps > 0, f"{sec_name}.steps", sec.steps, f"must be > 0 (0 only with {sec_name}.init)")
        else:  # 0: write the init checkpoint unchanged (how a released checkpoint is evaluated)
            _check(sec.steps >= 0, f"{sec_name}.steps", sec.steps, "must be >= 0")
        _check(sec.lr > 0, f"{sec_name}.lr", sec.lr, "must be > 0")
        _check(0 <= sec.ema_decay < 1, f"{sec_name}.ema_decay", sec.ema_decay, "must be in [0, 1)")
        _check(len(sec.betas) == 2 and all(0 <= b < 1 for b in sec.betas), f"{sec_name}.betas", sec.betas,
               "must be two numbers in [0, 1)")
    _check(p.ar.grad_accum >= 1, "ar.grad_accum", p.ar.grad_accum, "must be >= 1")
    _check(0 <= p.ar.class_dropout < 1, "ar.class_dropout", p.ar.class_dropout, "must be in [0, 1)")
    _check(0 <= p.ar.token_dropout < 1, "ar.token_dropout", p.ar.token_dropout, "must be in [0, 1)")
    _check(0 <= p.ar.resid_dropout < 1, "ar.resid_dropout", p.ar.resid_dropout, "must be in [0, 1)")
    _check(0 <= p.ar.ffn_dropout < 1, "ar.ffn_dropout", p.ar.ffn_dropout, "must be in [0, 1)")
    _check(p.ar.custom_dim % p.ar.custom_heads == 0, "ar.custom_heads", p.ar.custom_heads,
           f"must divide ar.custom_dim {p.ar.custom_dim}")
    _check(p.tune.steps > 0, "tune.steps", p.tune.steps, "must be > 0")
    _check(p.tune.gan_start >= 0, "tune.gan_start", p.tune.gan_start, "must be >= 0")
    _check(0 <= p.tune.ema_decay < 1, "tune.ema_decay", p.tune.ema_decay, "must be in [0, 1)")
    _check(len(p.tune.betas) == 2 and all(0 <= b < 1 for b in p.tune.betas), "tune.betas", p.tune.betas,
           "must be two numbers in [0, 1)")
    for key in ("lr_tokenizer", "lr_ar", "lr_disc"):
        _check(getattr(p.tune, key) > 0, f"tune.{key}", getattr(p.tune, key), "must be > 0")

    s = p.sample
    _check(s.per_class > 0, "sample.per_class", s.per_class, "must be > 0")
    _check(s.cfg_scale >= 1.0, "sample.cfg_scale", s.cfg_scale, "must be >= 1 (1 = no guidance)")
    _check(len(s.cfg_interval) == 2 and 0 <= s.cfg_interval[0] <= s.cfg_interval[1] <= 1,
           "sample.cfg_interval", s.cfg_interval, "must be [start, end] with 0 <= start <= end <= 1")
    _check(s.temperature > 0, "sample.temperature", s.temperature, "must be > 0")
    _check(s.top_k >= 0, "sample.top_k", s.top_k, "must be >= 0 (0 = off)")
    _check(0 < s.top_p <= 1, "sample.top_p", s.top_p, "must be in (0, 1]")

    m = p.metrics
    _check(m.pr_k >= 1, "metrics.pr_k", m.pr_k, "must be >= 1")
    _check(m.cknna_k >= 1, "metrics.cknna_k", m.cknna_k, "must be >= 1")
    _check(p.compute.log_every > 0, "compute.log_every", p.compute.log_every, "must be > 0")
    _check(p.compute.save_every > 0, "compute.save_every", p.compute.save_every, "must be > 0")
    st = p.study
    _check(len(st.seeds) > 0, "study.seeds", st.seeds, "must list at least one seed")
    _check(len(set(st.seeds)) == len(st.seeds), "study.seeds", st.seeds, "must not repeat a seed")
    _check(all(x >= 0 for x in st.seeds), "study.seeds", st.seeds, "seeds must be >= 0")
    _check(0 < st.confidence < 1, "study.confidence", st.confidence, "must be in (0, 1)")
    _check(0 < st.collapse_fraction < 1, "study.collapse_fraction", st.collapse_fraction, "must be in (0, 1)")
    _check(st.recon_margin_db >= 0, "study.recon_margin_db", st.recon_margin_db, "must be >= 0")
    if p.teacher == "demo":
        _check(p.teachers.demo_patch == t.downsample, "teachers.demo_patch", p.teachers.demo_patch,
               f"must equal the tokenizer downsampling {t.downsample} so teacher patches match tokens")
    _validate_t2i(p)
    return p


def _validate_t2i(p: Params) -> None:
    from gear.models.registry import ar_depth

    t = p.t2i
    d = t.data
    if d.source == "folder":
        _check(bool(d.root), "t2i.data.root", d.root, "required when t2i.data.source = folder")
    if d.source == "jsonl":
        _check(bool(d.manifest), "t2i.data.manifest", d.manifest, "required when t2i.data.source = jsonl")
    _check(0 < d.val_fraction < 1, "t2i.data.val_fraction", d.val_fraction, "must be in (0, 1)")
    for key in ("embedded_train", "embedded_val", "samples_per_shard"):
        _check(getattr(d, key) > 0, f"t2i.data.{key}", getattr(d, key), "must be > 0")
    _check(t.text.encoder in TEXT_ENCODERS, "t2i.text.encoder", t.text.encoder, f"must be one of {', '.join(TEXT_ENCODERS)}")
    for key in ("max_len", "demo_dim", "batch_size"):
        _check(getattr(t.text, key) > 0, f"t2i.text.{key}", getattr(t.text, key), "must be > 0")
    a = t.ar
    _check(a.size in AR_SIZES, "t2i.ar.size", a.size, f"must be one of {', '.join(AR_SIZES)}")
    depth = ar_depth(a.size, p)
    _check(1 <= a.align_layer <= depth, "t2i.ar.align_layer", a.align_layer, f"must be within 1..{depth} (depth of AR size {a.size})")
    _check(a.align_weight >= 0, "t2i.ar.align_weight", a.align_weight, "must be >= 0")
    for key in ("caption_dropout", "token_dropout", "resid_dropout", "ffn_dropout"):
        _check(0 <= getattr(a, key) < 1, f"t2i.ar.{key}", getattr(a, key), "must be in [0, 1)")
    for key in ("projector_hidden", "steps", "batch_size"):
        _check(getattr(a, key) > 0, f"t2i.ar.{key}", getattr(a, key), "must be > 0")
    _check(a.lr > 0, "t2i.ar.lr", a.lr, "must be > 0")
    _check(0 <= a.warmup_steps < a.steps, "t2i.ar.warmup_steps", a.warmup_steps, f"must be in [0, t2i.ar.steps = {a.steps})")
    for key in ("weight_decay", "grad_clip"):
        _check(getattr(a, key) >= 0, f"t2i.ar.{key}", getattr(a, key), "must be >= 0")
    _check(len(a.betas) == 2 and all(0 <= b < 1 for b in a.betas), "t2i.ar.betas", a.betas, "must be two numbers in [0, 1)")
    _check(0 <= a.ema_decay < 1, "t2i.ar.ema_decay", a.ema_decay, "must be in [0, 1)")
    _check(len(a.eval_steps) > 0 and a.eval_steps == sorted(set(a.eval_steps)) and 1 <= a.eval_steps[0]
           and a.eval_steps[-1] == a.steps, "t2i.ar.eval_steps", a.eval_steps,
           f"must be increasing steps in [1, t2i.ar.steps], ending at t2i.ar.steps = {a.steps}")
    s = t.sample
    _check(s.cfg_scale >= 1, "t2i.sample.cfg_scale", s.cfg_scale, "must be >= 1 (1 = no guidance)")
    for key in ("prompts", "per_prompt", "batch_size"):
        _check(getattr(s, key) > 0, f"t2i.sample.{key}", getattr(s, key), "must be > 0")
    _check(s.temperature > 0, "t2i.sample.temperature", s.temperature, "must be > 0")
    _check(s.top_k >= 0, "t2i.sample.top_k", s.top_k, "must be >= 0 (0 = off)")
    _check(0 < s.top_p <= 1, "t2i.sample.top_p", s.top_p, "must be in (0, 1]")
    j = t.judge
    for key in ("steps", "batch_size"):
        _check(getattr(j, key) > 0, f"t2i.judge.{key}", getattr(j, key), "must be > 0")
    _check(j.lr > 0, "t2i.judge.lr", j.lr, "must be > 0")


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected key=value (e.g. tau=0.5 or ar.lr=3e-4)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = _parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return raw


def params_from_dict(raw: dict) -> Params:
    return validate(_build(Params, raw, ""))


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"params file {path} is not valid YAML{where}") from None
    return params_from_dict(apply_overrides(raw, overrides or []))
