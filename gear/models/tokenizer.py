"""Conv image tokenizer: encoder -> [quant_conv] -> quantizer -> [post_quant_conv] -> decoder.

Images are float in [-1, 1]. The encoder/decoder stack is one of a registry of architectures
(ARCHS, chosen by `tokenizer.arch`), each with the module names of its public checkpoints so they
load strictly without renaming (gear/models/llamagen.py reads the files):
  vq16   LlamaGen's VQ-16 stack (this module: encoder.conv_blocks.N.res.M..., encoder.mid.0/1/2,
         quant_conv, quantize.embedding, ...; `vq_ds16_c2i.pt`). Carries any of vq / lfq / ibq.
  lfq16  Open-MAGVIT2's stack with the LFQ quantizer in its bit order (gear/models/magvit2.py;
         `pretrain256_16384.ckpt`, the release's `lfq-with-gan.pt` / `gear-lfq.pt`).
  ibq16  the VQGAN-style stack of the IBQ release (gear/models/vqgan.py; `IBQ_pretrain_16384.ckpt`,
         `ibq-with-gan.pt` / `gear-ibq.pt`).
Whatever the stack, the tokenizer exposes one interface: encode -> (z_pre, QuantOut with dist /
indices / z_q / losses), decode, decode_indices, grid_size, forward -> TokenizerOut.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from gear.models import magvit2, vqgan
from gear.models.blocks import AttnBlock, Level, Normalize, ResnetBlock, pointwise
from gear.models.quantizers import QuantOut, make_quantizer

QUANTIZERS = ("vq", "lfq", "ibq")


@dataclass
class TokenizerConfig:
    quantizer: str = "vq"
    ch: int = 32
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    enc_res_blocks: int = 1
    dec_res_blocks: int = 1        # res blocks per decoder level (LlamaGen VQ-16: 3)
    z_channels: int = 64
    attn_lowest: bool = True       # self-attention at the lowest resolution (vq16: levels and mid block)
    norm_groups: int = 8
    codebook_size: int = 512
    code_dim: int = 8
    l2_norm: bool = True
    commit_weight: float = 0.25
    codebook_weight: float = 1.0
    entropy_weight: float = 0.05
    entropy_temperature: float = 0.01
    in_channels: int = 3
    arch: str = "vq16"             # encoder/decoder stack: a key of ARCHS

    def __post_init__(self):
        def bad(key: str, rule: str):
            raise ValueError(f"TokenizerConfig.{key} = {getattr(self, key)!r}: {rule}")
        if self.arch not in ARCHS:
            bad("arch", f"must be one of {', '.join(ARCHS)}")
        if self.quantizer not in QUANTIZERS:
            bad("quantizer", f"must be one of {', '.join(QUANTIZERS)}")
        if self.quantizer not in ARCHS[self.arch].quantizers:
            bad("quantizer", f"arch {self.arch} carries only {', '.join(ARCHS[self.arch].quantizers)}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            bad("ch_mult", "must be a non-empty list of positive integers")
        for key in ("ch", "enc_res_blocks", "dec_res_blocks", "z_channels", "norm_groups", "code_dim", "in_channels"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        if self.ch % self.norm_groups:
            bad("norm_groups", f"must divide ch = {self.ch}")
        if self.codebook_size < 2:
            bad("codebook_size", "must be >= 2")
        if self.quantizer == "lfq" and 2 ** self.code_dim != self.codebook_size:
            bad("code_dim", f"must equal log2(codebook_size = {self.codebook_size}) for lfq")
        if self.arch == "lfq16":
            if self.z_channels != self.code_dim:
                bad("z_channels", f"must equal code_dim = {self.code_dim} for lfq16 (no quant_conv)")
            if self.attn_lowest:
                bad("attn_lowest", "must be False for lfq16 (Open-MAGVIT2 has no attention)")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_params(cls, p) -> "TokenizerConfig":
        """From gear.config.Params: quantizer from p.quantizer, the rest from p.tokenizer.
        tokenizer.code_dim is VQ's; LFQ's is log2(codebook_size) and IBQ's is z_channels (the IBQ
        release quantizes z itself, 256-d: with a low code dim an inner-product argmax lets a
        few large-norm codes win every patch; 8-d collapsed to 39% usage on the embedded set).
        lfq16 has no quant_conv and no attention: its z_channels is the code dim and attn_lowest
        is off whatever tokenizer.z_channels / attn_lowest say."""
        t = p.tokenizer
        code_dim = {"lfq": int(round(math.log2(t.codebook_size))), "ibq": t.z_channels}.get(p.quantizer, t.code_dim)
        z_channels, attn = (code_dim, False) if t.arch == "lfq16" else (t.z_channels, t.attn_lowest)
        return cls(quantizer=p.quantizer, ch=t.ch, ch_mult=list(t.ch_mult), enc_res_blocks=t.enc_res_blocks,
                   dec_res_blocks=t.dec_res_blocks, z_channels=z_channels, attn_lowest=attn,
                   norm_groups=t.norm_groups, codebook_size=t.codebook_size, code_dim=code_dim,
                   l2_norm=t.l2_norm, commit_weight=t.commit_weight, codebook_weight=t.codebook_weight,
                   entropy_weight=t.entropy_weight, entropy_temperature=t.entropy_temperature, arch=t.arch)

    @classmethod
    def llamagen_vq16(cls, **overrides) -> "TokenizerConfig":
        """LlamaGen VQ-16 (~72M params): 256 px -> 16 x 16 tokens, codebook 16384 x 8."""
        d = dict(quantizer="vq", ch=128, ch_mult=[1, 1, 2, 2, 4], enc_res_blocks=2, dec_res_blocks=3,
                 z_channels=256, attn_lowest=True, norm_groups=32, codebook_size=16384, code_dim=8,
                 l2_norm=True, commit_weight=0.25, codebook_weight=1.0, entropy_weight=0.05,
                 entropy_temperature=0.01)
        return cls(**{**d, **overrides})

    @classmethod
    def release_lfq16(cls, **overrides) -> "TokenizerConfig":
        """The release's LFQ-16 = Open-MAGVIT2 `pretrain256_16384`: 4 res blocks per level, codes 14-d."""
        d = dict(arch="lfq16", quantizer="lfq", ch=128, ch_mult=[1, 1, 2, 2, 4], enc_res_blocks=4,
                 dec_res_blocks=4, z_channels=14, attn_lowest=False, norm_groups=32, codebook_size=16384,
                 code_dim=14, commit_weight=0.25, entropy_weight=0.05, entropy_temperature=0.01)
        return cls(**{**d, **overrides})

    @classmethod
    def release_ibq16(cls, **overrides) -> "TokenizerConfig":
        """The release's IBQ-16 = TencentARC `IBQ_pretrain_16384`: VQGAN stack (4 / 5 res blocks),
        codebook 16384 x 256. Its beta (0.25) weighs the codebook term, 1.0 the commitment."""
        d = dict(arch="ibq16", quantizer="ibq", ch=128, ch_mult=[1, 1, 2, 2, 4], enc_res_blocks=4,
                 dec_res_blocks=5, z_channels=256, attn_lowest=True, norm_groups=32, codebook_size=16384,
                 code_dim=256, commit_weight=1.0, codebook_weight=0.25, entropy_weight=0.05,
                 entropy_temperature=0.01)
        return cls(**{**d, **overrides})

    def to_dict(self) -> dict:
        """Every field, except `arch` when it is vq16: the folders written before the registry
        (no arch) and the default's config.json stay as they were, and read back as vq16."""
        d = dataclasses.asdict(self)
        if d["arch"] == "vq16":
            del d["arch"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TokenizerConfig: unknown keys {unknown}; allowed: {', '.join(sorted(names))}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# the vq16 (LlamaGen) stack


def mid_block(ch: int, attn: bool, groups: int) -> nn.ModuleList:
    # Identity keeps the index layout mid.0 / mid.2 when attention is off
    return nn.ModuleList([ResnetBlock(ch, ch, groups), AttnBlock(ch, groups) if attn else nn.Identity(),
                          ResnetBlock(ch, ch, groups)])


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch, g, n = cfg.ch, cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        cin = ch
        for i, mult in enumerate(cfg.ch_mult):
            self.conv_blocks.append(Level(cin, ch * mult, cfg.enc_res_blocks, cfg.attn_lowest and i == n - 1, g,
                                          down=i != n - 1))
            cin = ch * mult
        self.mid = mid_block(cin, cfg.attn_lowest, g)
        self.norm_out = Normalize(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Mirrors the encoder; conv_blocks[0] is the LOWEST resolution (LlamaGen order)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch, g, n = cfg.ch, cfg.norm_groups, len(cfg.ch_mult)
        cin = ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = mid_block(cin, cfg.attn_lowest, g)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(n)):
            self.conv_blocks.append(Level(cin, ch * cfg.ch_mult[i], cfg.dec_res_blocks,
                                          cfg.attn_lowest and i == n - 1, g, up=i != 0))
            cin = ch * cfg.ch_mult[i]
        self.norm_out = Normalize(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------
# the registry of architectures


class Arch(NamedTuple):
    title: str                   # whose module layout (and so whose checkpoints) it follows
    encoder: Callable[[TokenizerConfig], nn.Module]
    decoder: Callable[[TokenizerConfig], nn.Module]
    quant_conv: bool             # 1x1 convs between z_channels and the code dim
    quantizers: tuple[str, ...]  # the bottlenecks it carries
    lfq_bit_order: str           # LFQ index bits: "msb" = latent channel 0 is the top bit
    marker: str                  # a tensor name that only this layout's state dicts hold


ARCHS = {
    "vq16": Arch("LlamaGen VQ", Encoder, Decoder, True, QUANTIZERS, "msb",
                 "encoder.conv_blocks.0.res.0.conv1.weight"),
    # Open-MAGVIT2 packs channel i into bit i (index = sum 2^i [z_i > 0]): the release's tokens
    "lfq16": Arch("Open-MAGVIT2", magvit2.Encoder, magvit2.Decoder, False, ("lfq",), "lsb",
                  "encoder.mid_block.0.conv1.weight"),
    "ibq16": Arch("VQGAN / IBQ", vqgan.Encoder, vqgan.Decoder, True, ("ibq",), "msb",
                  "encoder.mid.block_1.conv1.weight"),
}  # gear/schema.py TOKENIZER_ARCHS lists these names for params


def arch_of_state_dict(names) -> str | None:
    """The architecture whose layout a state dict's tensor names follow (None: none of them)."""
    names = set(names)
    return next((a for a, spec in ARCHS.items() if spec.marker in names), None)


# ----------------------------------------------------------------------------------------------
# the tokenizer


@dataclass
class TokenizerOut:
    recon: Tensor   # (B, 3, H, W) in about [-1, 1]
    z_pre: Tensor   # (B, code_dim, h, w) after quant_conv (if any), before quantization
    q: QuantOut


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.config = cfg
        arch = ARCHS[cfg.arch]
        self.encoder = arch.encoder(cfg)
        self.decoder = arch.decoder(cfg)
        self.quantize = make_quantizer(cfg.quantizer, cfg.codebook_size, cfg.code_dim, cfg.l2_norm,
                                       cfg.commit_weight, cfg.codebook_weight, cfg.entropy_weight,
                                       cfg.entropy_temperature, lfq_bit_order=arch.lfq_bit_order)
        if arch.quant_conv:  # lfq16's encoder emits the code channels itself
            self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)
            self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)
        else:
            self.quant_conv = self.post_quant_conv = None

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def grid_size(self, resolution: int) -> int:
        """Tokens per side for a square image of `resolution` pixels."""
        ds = self.config.downsample
        if resolution % ds:
            raise ValueError(f"resolution {resolution} is not divisible by the tokenizer downsampling {ds}")
        return resolution // ds

    def encode(self, x: Tensor) -> tuple[Tensor, QuantOut]:
        c, ds = self.config.in_channels, self.config.downsample
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] % ds or x.shape[3] % ds:
            raise ValueError(f"tokenizer expects images (B, {c}, H, W) with H, W divisible by {ds}, "
                             f"got {tuple(x.shape)}")
        z_pre = self.encoder(x)
        if self.quant_conv is not None:
            z_pre = pointwise(self.quant_conv, z_pre)
        return z_pre, self.quantize(z_pre)

    def decode(self, z_q: Tensor) -> Tensor:
        return self.decoder(z_q if self.post_quant_conv is None else pointwise(self.post_quant_conv, z_q))

    def decode_indices(self, indices: Tensor, grid: int | None = None) -> Tensor:
        """indices (B, h, w), or (B, L) with a square grid (side `grid`, default sqrt(L))."""
        if indices.dim() == 2:
            L = indices.shape[1]
            side = grid if grid is not None else math.isqrt(L)
            if side * side != L:
                raise ValueError(f"cannot lay {L} tokens on a square grid (side {side}); pass grid=")
            indices = indices.reshape(indices.shape[0], side, side)
        if indices.dim() != 3:
            raise ValueError(f"indices must be (B, h, w) or (B, L), got {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"token indices outside [0, {self.codebook_size})")
        return self.decode(self.quantize.embed(indices.long()))

    def forward(self, x: Tensor) -> TokenizerOut:
        z_pre, q = self.encode(x)
        return TokenizerOut(self.decode(q.z_q), z_pre, q)
