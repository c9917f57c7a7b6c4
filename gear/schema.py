"""The params schema: every key of params.yaml with its type and allowed range, no values.

params.yaml is the one source of defaults; a field here says what a key may hold: its type (a
Literal lists the allowed names) and, for a number, `within("[lo, hi]")`, checked on every entry
of a list too. gear/config.py reads the files and checks them against this.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Optional

QUANTIZERS = ("vq", "lfq", "ibq")
TOKENIZER_ARCHS = ("vq16", "lfq16", "ibq16")  # gear/models/tokenizer.py ARCHS
TEACHERS = ("demo", "dinov2_vitb14", "dinov2_vitl14", "dinov3_vitb16", "siglip2_vitb16", "clip_vitb16",
            "vjepa2_vitl16")
E2E_MODES = ("gear", "ste", "none", "continue")
STAGE2_MODES = ("fresh", "ar-init")  # how the GEAR arm's stage-2 AR starts (params.yaml `stage2`)
AR_SIZES = ("nano", "micro", "tiny", "mini", "small", "B", "L", "XL", "1B", "custom")
TEXT_ENCODERS = ("demo", "qwen3_1.7b", "flan_t5_xl", "clip_vitb16")  # gear/t2i/text_encoders.py

INT_MAX = 2**31 - 1  # an int range open above ends here: counts index tensors in C ints
SEED_MAX = 2**32 - 1  # np.random.seed's range (seed_everything reduces mod 2**32 beyond it)


class Range(NamedTuple):
    lo: float
    hi: float
    lo_open: bool
    hi_open: bool
    note: str

    def problem(self, value: float, is_int: bool) -> str | None:
        """None if `value` lies in the range, else what it must be."""
        capped = is_int and self.hi == math.inf
        hi, hi_open = (INT_MAX, False) if capped else (self.hi, self.hi_open)
        if value < self.lo or (self.lo_open and value == self.lo):
            rule = f"must be {'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif value > hi or (hi_open and value == hi):
            rule = f"must be {'<' if hi_open else '<='} {_num(hi)}"
        else:
            return None
        if not capped and hi != math.inf:
            rule += f" (range {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(hi)}{')' if hi_open else ']'})"
        return rule + (f"; {self.note}" if self.note else "")


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def within(interval: str, note: str = "") -> Any:
    """A required field (params.yaml holds its value) whose number, or each number of its list,
    lies in `interval`, written as in maths: "[0, 1)", "(0, inf)", "[8, 4096]". `note` explains a
    special value in the error ("0 = off")."""
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    return field(metadata={"range": Range(lo, hi, interval[0] == "(", interval[-1] == ")", note)})


POSITIVE = "[1, inf)"  # counts, sizes and steps


@dataclass
class Data:
    source: Literal["embedded", "imagefolder"]
    train_root: Optional[str]
    val_root: Optional[str]
    val_fraction: float = within("(0, 1)")
    resolution: int = within("[8, 4096]")  # a 4096^2 image is 50 MB of uint8; larger is a typo
    shard_dir: str
    samples_per_shard: int = within(POSITIVE)
    image_format: Literal["png", "jpg"]
    embedded_train_per_class: int = within(POSITIVE)
    embedded_val_per_class: int = within(POSITIVE)
    min_size: int = within("[0, inf)", "0 = keep all")
    random_crop: bool
    hflip: bool


@dataclass
class Teachers:
    weights: Optional[str]
    zscore: Literal["auto", "on", "off"]
    zscore_strength: float = within("[0, 1]")
    demo_dim: int = within(POSITIVE)
    demo_depth: int = within(POSITIVE)
    demo_heads: int = within(POSITIVE)
    demo_patch: int = within(POSITIVE)
    demo_steps: int = within(POSITIVE)
    demo_batch_size: int = within(POSITIVE)
    demo_lr: float = within("(0, inf)")


@dataclass
class Tokenizer:
    arch: Literal[TOKENIZER_ARCHS]
    ch: int = within(POSITIVE)
    ch_mult: list[int] = within(POSITIVE)
    enc_res_blocks: int = within(POSITIVE)
    dec_res_blocks: int = within(POSITIVE)
    z_channels: int = within(POSITIVE)
    attn_lowest: bool
    norm_groups: int = within(POSITIVE)
    codebook_size: int = within("[2, inf)")
    code_dim: int = within(POSITIVE)
    l2_norm: bool
    commit_weight: float = within("[0, inf)")
    codebook_weight: float = within("[0, inf)")
    entropy_weight: float = within("[0, inf)")
    entropy_temperature: float = within("(0, inf)")
    recon_loss: Literal["l1", "l2"]
    recon_weight: float = within("[0, inf)")
    perceptual: Literal["lpips", "teacher", "none"]
    perceptual_weight: float = within("[0, inf)")
    lpips_weights: Optional[str]
    gan_weight: float = within("[0, inf)")
    gan_start: int = within("[0, inf)")
    disc_ch: int = within(POSITIVE)
    disc_layers: int = within(POSITIVE)
    init: str
    init_key: Optional[str]  # entry of the init checkpoint dict holding the tokenizer (null: auto)
    steps: int = within("[0, inf)")  # 0 only with init (validate)
    batch_size: int = within(POSITIVE)
    lr: float = within("(0, inf)")
    warmup_steps: int = within("[0, inf)")
    lr_decay: Literal["constant", "cosine"]
    disc_lr: float = within("(0, inf)")
    betas: list[float] = within("[0, 1)")
    weight_decay: float = within("[0, inf)")
    grad_clip: float = within("[0, inf)")
    ema_decay: float = within("[0, 1)")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass
class Recipe:
    """The training recipe both fresh ARs share: the class-conditional `ar` and the caption-
    conditioned `t2i.ar`, each adding its sizes and condition (a redeclared field keeps its place)."""
    token_dropout: float = within("[0, 1)")
    resid_dropout: float = within("[0, 1)")  # after attention's output projection (LlamaGen / the release: 0.1)
    ffn_dropout: float = within("[0, 1)")    # after the SwiGLU (LlamaGen / the release: 0.1)
    projector_hidden: int = within(POSITIVE)
    steps: int = within(POSITIVE)
    batch_size: int = within(POSITIVE)
    grad_accum: int = within(POSITIVE)
    lr: float = within("(0, inf)")
    betas: list[float] = within("[0, 1)")
    weight_decay: float = within("[0, inf)")
    grad_clip: float = within("[0, inf)")
    ema_decay: float = within("[0, 1)")
    warmup_steps: int = within("[0, inf)")


@dataclass
class AR(Recipe):
    sizes: list[Literal[AR_SIZES]]
    align_layers: list[int] = within(POSITIVE)  # depth of each size: validate
    custom_layers: int = within(POSITIVE)
    custom_dim: int = within(POSITIVE)
    custom_heads: int = within(POSITIVE)
    class_dropout: float = within("[0, 1)")
    steps: int = within("[0, inf)")  # 0 only with init (validate)
    init: Optional[str]      # a LlamaGen / GEAR-release GPT checkpoint train-ar starts from
    init_key: Optional[str]  # entry of that checkpoint dict holding the GPT (null: ema, then model)

    def align_layer_for(self, size: str, default: int) -> int:
        """Tap layer of the final AR of `size` (ar.align_layers, else the top-level align_layer)."""
        return self.align_layers[self.sizes.index(size)] if self.align_layers else default


@dataclass
class Tune:
    ar_size: Literal[AR_SIZES]
    init: Literal["warmup", "scratch"]
    gan: bool
    gan_start: int = within("[0, inf)", "0: the warm-up trained the discriminator")
    soft_forward: Literal["soft", "onehot_st"]
    ablations: list[Literal["ste", "continue"]]
    steps: int = within(POSITIVE)
    batch_size: int = within(POSITIVE)
    lr_tokenizer: float = within("(0, inf)")
    lr_ar: float = within("(0, inf)")
    lr_disc: float = within("(0, inf)")
    betas: list[float] = within("[0, 1)")
    weight_decay: float = within("[0, inf)")
    grad_clip: float = within("[0, inf)")
    ema_decay: float = within("[0, 1)")


@dataclass
class Sample:
    per_class: int = within(POSITIVE)
    batch_size: int = within(POSITIVE)
    cfg_scale: float = within("[1, inf)", "1 = no guidance")
    cfg_interval: list[float] = within("[0, 1]")
    temperature: float = within("(0, inf)")
    top_k: int = within("[0, inf)", "0 = off")
    top_p: float = within("(0, 1]")
    use_ema: bool
    compile: bool


@dataclass
class Metrics:
    feature_space: Literal["demo", "inception", "dinov2"]
    inception_weights: Optional[str]
    reference: Optional[str]  # ADM reference batch .npz (inception space; gear/metrics/reference.py)
    real_split: Literal["train", "val"]
    max_real: int = within(POSITIVE)
    pr_k: int = within(POSITIVE)
    cknna_k: int = within(POSITIVE)
    max_patches: int = within(POSITIVE)
    batch_size: int = within(POSITIVE)


@dataclass
class Compute:
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["bf16", "fp32"]
    compile: bool
    grad_checkpointing: bool
    # FSDP2 under torchrun: shards the ARs (train-ar, t2i-train, tune's guide AR and projector);
    # teacher and tokenizer-init train replicated (DDP) and say so; 1 process: no-op
    fsdp: bool
    # A fixed bound, not os.cpu_count(): a file must validate alike on the login node and on the
    # node it runs on. 256 loader processes per rank is past any node's cores (presets ask 8-64).
    workers: int = within("[0, 256]", "0 = decode in the training process")
    seed: int = within(f"[0, {SEED_MAX}]")
    log_every: int = within(POSITIVE)
    val_every: int = within("[0, inf)", "0 = every log row")  # an AR's validation: on rows at its multiples
    save_every: int = within(POSITIVE)
    state_dir: str


@dataclass
class Study:
    """The seed dimension and how the report judges arm-vs-arm differences."""
    seeds: list[int] = within(f"[0, {SEED_MAX}]")  # each replaces compute.seed (gear/study.py)
    confidence: float = within("(0, 1)")         # level of the paired t intervals
    collapse_fraction: float = within("(0, 1)")  # effective size below this share of the codebook = collapse
    recon_margin_db: float = within("[0, inf)")  # C4 non-inferiority margin: PSNR may fall by this much
    reseed_upstream: bool  # the scaling room also reseeds the teacher and the warm-up per ladder seed (gear/scaling.py)


@dataclass
class Ablations:
    """The seed's ablation grid (gear/ablations.py): one axis varies at a time, every other knob at
    its default, which is the params' own value (the main DAG's GEAR arm is each table's default row,
    listed first when an axis does not name it). An axis's values get the range of the key they set
    when check_grid builds each row's params."""
    training: list[str]
    quantizer: list[str]
    tau: list[float]
    align_weight: list[float]
    align_layer: list[int]
    teacher: list[str]
    tune_ar_size: list[str]
    init: list[str]
    hub_teachers: bool  # teacher rows with a hub teacher run (their weights load here); false: skipped, said why
    eval_size: Optional[str]  # the fresh AR (one of ar.sizes) judging each row's gFID; null: ar.sizes[0]


@dataclass
class Scaling:
    """Issue 31's study (gear/scaling.py): the guide-capacity ladder and lambda at its top rung; the
    equal-compute control is the tune variant `continue` (tune.ablations)."""
    guides: list[Literal[AR_SIZES]]  # tune.ar_size per rung, each tapped at its middle block
    lambdas: list[float] = within("[0, inf)")  # align_weight at the largest guide (beside the params' own)
    ladder_seeds: list[int] = within("[0, inf)")  # the study seeds the ladder and lambda rows run ([]: all)


@dataclass
class T2IData:
    source: Literal["embedded", "folder", "jsonl"]
    root: Optional[str]      # folder: images with a same-named .txt caption beside each (any depth)
    manifest: Optional[str]  # jsonl: one {"image": path, "caption": text} per line (paths relative to it)
    val_fraction: float = within("(0, 1)")
    embedded_train: int = within(POSITIVE)
    embedded_val: int = within(POSITIVE)
    samples_per_shard: int = within(POSITIVE)


@dataclass
class T2IText:
    encoder: Literal[TEXT_ENCODERS]
    weights: Optional[str]  # local folder / file, or another hub id of the family; null: the registry's
    max_len: int = within(POSITIVE)
    demo_dim: int = within(POSITIVE)
    batch_size: int = within(POSITIVE)


@dataclass
class T2IAR(Recipe):
    size: Literal[AR_SIZES]
    align_layer: int = within(POSITIVE)  # depth of the size: validate
    align_weight: float = within("[0, inf)")
    caption_dropout: float = within("[0, 1)")
    eval_steps: list[int] = within(POSITIVE)  # EMA snapshots sampled and measured


@dataclass
class T2ISample:
    cfg_scale: float = within("[1, inf)", "1 = no guidance")
    cfg_interval: list[float] = within("[0, 1]")
    prompts: int = within(POSITIVE)  # the first n held-out prompts of the prompt file
    per_prompt: int = within(POSITIVE)
    temperature: float = within("(0, inf)")
    top_k: int = within("[0, inf)", "0 = off")
    top_p: float = within("(0, 1]")
    batch_size: int = within(POSITIVE)
    compile: bool


@dataclass
class T2IJudge:
    steps: int = within(POSITIVE)
    batch_size: int = within(POSITIVE)
    lr: float = within("(0, inf)")


@dataclass
class T2I:
    """The text-to-image transfer (gear/t2i/): a fresh caption-conditioned AR per tokenizer arm."""
    data: T2IData
    text: T2IText
    ar: T2IAR
    sample: T2ISample
    judge: T2IJudge
    feature_space: Literal["demo", "dinov2"]  # FDD: Frechet distance in this space (dinov2 at full scale)


@dataclass
class Resources:
    train_gpus: int = within("[0, inf)")
    train_nodes: int = within(POSITIVE)
    train_cpus: int = within(POSITIVE)
    train_mem_mb: int = within(POSITIVE)
    train_runtime: int = within(POSITIVE)  # minutes
    light_cpus: int = within(POSITIVE)
    light_mem_mb: int = within(POSITIVE)
    light_runtime: int = within(POSITIVE)


# ---- the released checkpoints (gear/released.py): each a local path, null = not downloaded -----


@dataclass
class ReleasedArch:
    """The shape of one tokenizer family as its public files have it (all three files of a family:
    original, the release's warm-up and GEAR); the quantizer is the family's (vq16: vq)."""
    resolution: int = within("[8, 4096]")  # px the release measures at (val images resized bicubic)
    ch: int = within(POSITIVE)
    ch_mult: list[int] = within(POSITIVE)
    enc_res_blocks: int = within(POSITIVE)
    dec_res_blocks: int = within(POSITIVE)
    z_channels: int = within(POSITIVE)
    norm_groups: int = within(POSITIVE)
    codebook_size: int = within("[2, inf)")
    code_dim: int = within(POSITIVE)


@dataclass
class ReleasedArchs:
    vq16: ReleasedArch
    lfq16: ReleasedArch
    ibq16: ReleasedArch


@dataclass
class ReleasedTokenizers:
    vq_original: Optional[str]
    vq_warmup: Optional[str]
    vq_gear: Optional[str]
    lfq_original: Optional[str]
    lfq_warmup: Optional[str]
    lfq_gear: Optional[str]
    ibq_original: Optional[str]
    ibq_warmup: Optional[str]
    ibq_gear: Optional[str]


@dataclass
class ReleasedGPT:
    """A LlamaGen c2i GPT (decoded by released.tokenizers.vq_original) and its published sampling."""
    path: Optional[str]
    layers: int = within(POSITIVE)
    dim: int = within(POSITIVE)
    heads: int = within(POSITIVE)
    image_size: int = within("[8, 4096]")  # px it generates (tokens: image_size / 16 per side)
    cfg_scale: float = within("[1, inf)", "1 = no guidance")
    temperature: float = within("(0, inf)")
    top_k: int = within("[0, inf)", "0 = off")
    top_p: float = within("(0, 1]")


@dataclass
class ReleasedGPTs:
    B: ReleasedGPT
    L: ReleasedGPT
    XL: ReleasedGPT


@dataclass
class Released:
    archs: ReleasedArchs
    tokenizers: ReleasedTokenizers
    gpts: ReleasedGPTs
    num_classes: int = within(POSITIVE)
    per_class: int = within(POSITIVE)       # samples per class (50 x 1000 = the published 50k)
    eval_size: int = within("[8, 4096]")    # px samples are scored at (resized bicubic, as LlamaGen)
    batch_size: int = within(POSITIVE)


@dataclass
class Params:
    tau: float = within("(0, inf)")
    align_weight: float = within("[0, inf)")
    align_weight_ar: float = within("[0, inf)")
    align_layer: int = within(POSITIVE)  # depth of every AR size: validate
    teacher: Literal[TEACHERS]
    quantizer: Literal[QUANTIZERS]
    e2e_mode: Literal[E2E_MODES]
    stage2: Literal[STAGE2_MODES]
    data: Data
    teachers: Teachers
    tokenizer: Tokenizer
    ar: AR
    tune: Tune
    sample: Sample
    metrics: Metrics
    compute: Compute
    study: Study
    ablations: Ablations
    scaling: Scaling
    t2i: T2I
    resources: Resources
    released: Released

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
