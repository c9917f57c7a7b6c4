"""LlamaGen-style conv image tokenizer: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

Images are float in [-1, 1]. Module and parameter names follow LlamaGen's VQ model
(encoder.conv_blocks.N.res.M..., encoder.mid.0/1/2, quantize.embedding, quant_conv, ...), so a
`vq_ds16_c2i.pt` state dict loads without renaming (see gear/models/llamagen.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

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
    attn_lowest: bool = True       # self-attention at the lowest resolution (levels and mid block)
    norm_groups: int = 8
    codebook_size: int = 512
    code_dim: int = 8
    l2_norm: bool = True
    commit_weight: float = 0.25
    codebook_weight: float = 1.0
    entropy_weight: float = 0.05
    entropy_temperature: float = 0.01
    in_channels: int = 3

    def __post_init__(self):
        def bad(key: str, rule: str):
            raise ValueError(f"TokenizerConfig.{key} = {getattr(self, key)!r}: {rule}")
        if self.quantizer not in QUANTIZERS:
            bad("quantizer", f"must be one of {', '.join(QUANTIZERS)}")
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

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_params(cls, p) -> "TokenizerConfig":
        """From gear.config.Params: quantizer from p.quantizer, the rest from p.tokenizer.
        tokenizer.code_dim is VQ's; LFQ's is log2(codebook_size) and IBQ's is z_channels (the IBQ
        release quantizes z itself, 256-d: with a low code dim an inner-product argmax lets a
        few large-norm codes win every patch; 8-d collapsed to 39% usage on the embedded set)."""
        t = p.tokenizer
        code_dim = {"lfq": int(round(math.log2(t.codebook_size))), "ibq": t.z_channels}.get(p.quantizer, t.code_dim)
        return cls(quantizer=p.quantizer, ch=t.ch, ch_mult=list(t.ch_mult), enc_res_blocks=t.enc_res_blocks,
                   dec_res_blocks=t.dec_res_blocks, z_channels=t.z_channels, attn_lowest=t.attn_lowest,
                   norm_groups=t.norm_groups, codebook_size=t.codebook_size, code_dim=code_dim,
                   l2_norm=t.l2_norm, commit_weight=t.commit_weight, codebook_weight=t.codebook_weight,
                   entropy_weight=t.entropy_weight, entropy_temperature=t.entropy_temperature)

    @classmethod
    def llamagen_vq16(cls, **overrides) -> "TokenizerConfig":
        """LlamaGen VQ-16 (~72M params): 256 px -> 16 x 16 tokens, codebook 16384 x 8."""
        d = dict(quantizer="vq", ch=128, ch_mult=[1, 1, 2, 2, 4], enc_res_blocks=2, dec_res_blocks=3,
                 z_channels=256, attn_lowest=True, norm_groups=32, codebook_size=16384, code_dim=8,
                 l2_norm=True, commit_weight=0.25, codebook_weight=1.0, entropy_weight=0.05,
                 entropy_temperature=0.01)
        return cls(**{**d, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TokenizerConfig: unknown keys {unknown}; allowed: {', '.join(sorted(names))}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# building blocks


def Normalize(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


def pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution as one GEMM over the pixels (same weights, same math): at the embedded
    widths oneDNN ran 1x1 convolutions at ~10% of its 3x3 rate (fwd + bwd ~0.3 ms each, 20 per
    step). On a channels_last input both permutes are views; the output stays channels_last."""
    return F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = Normalize(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = Normalize(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if isinstance(self.nin_shortcut, nn.Identity) else pointwise(self.nin_shortcut, x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1 conv projections."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = Normalize(ch, groups)
        self.q, self.k, self.v = (nn.Conv2d(ch, ch, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C): a view in channels_last
        q, k, v = (F.linear(h, m.weight.flatten(1), m.bias) for m in (self.q, self.k, self.v))  # 1x1 convs
        h = F.scaled_dot_product_attention(q, k, v)
        h = F.linear(h, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + h.view(B, H, W, C).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: exact halving, LlamaGen layout


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: res blocks (each followed by attention if `attn`), then an optional
    down- or upsampling by 2."""

    def __init__(self, cin: int, cout: int, n_blocks: int, attn: bool, groups: int,
                 down: bool = False, up: bool = False):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(cout, groups) for _ in range(n_blocks)) if attn else nn.ModuleList()
        self.down, self.up = down, up
        if down:
            self.downsample = Downsample(cout)
        if up:
            self.upsample = Upsample(cout)

    def forward(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if self.down:
            h = self.downsample(h)
        if self.up:
            h = self.upsample(h)
        return h


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
# the tokenizer


@dataclass
class TokenizerOut:
    recon: Tensor   # (B, 3, H, W) in about [-1, 1]
    z_pre: Tensor   # (B, code_dim, h, w) after quant_conv, before quantization
    q: QuantOut


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = make_quantizer(cfg.quantizer, cfg.codebook_size, cfg.code_dim, cfg.l2_norm,
                                       cfg.commit_weight, cfg.codebook_weight, cfg.entropy_weight,
                                       cfg.entropy_temperature)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)

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
        z_pre = pointwise(self.quant_conv, self.encoder(x))
        return z_pre, self.quantize(z_pre)

    def decode(self, z_q: Tensor) -> Tensor:
        return self.decoder(pointwise(self.post_quant_conv, z_q))

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
