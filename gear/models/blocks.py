"""Convolutional building blocks shared by the tokenizer architectures (gear/models/tokenizer.py).

Parameter names are the ones LlamaGen's VQ model and the taming / VQGAN autoencoder share
(norm1, conv1, norm2, conv2, nin_shortcut; norm, q, k, v, proj_out; conv), so the vq16 (LlamaGen)
and ibq16 (VQGAN-style) stacks both build on them and load their public checkpoints unrenamed.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


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
    """One resolution: res blocks (each followed by attention if `attn`), then an optional down-
    or upsampling by 2. `res` names the list of res blocks, and with it their checkpoint keys:
    LlamaGen's `res` (encoder.conv_blocks.N.res.M), taming's `block` (encoder.down.N.block.M)."""

    def __init__(self, cin: int, cout: int, n_blocks: int, attn: bool, groups: int,
                 down: bool = False, up: bool = False, res: str = "res"):
        super().__init__()
        self.res_name = res
        setattr(self, res, nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n_blocks)))
        self.attn = nn.ModuleList(AttnBlock(cout, groups) for _ in range(n_blocks)) if attn else nn.ModuleList()
        self.down, self.up = down, up
        if down:
            self.downsample = Downsample(cout)
        if up:
            self.upsample = Upsample(cout)

    def forward(self, h: Tensor) -> Tensor:
        for i, block in enumerate(getattr(self, self.res_name)):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if self.down:
            h = self.downsample(h)
        if self.up:
            h = self.upsample(h)
        return h
