"""Open-MAGVIT2's encoder/decoder: the GEAR release's LFQ-16 (`pretrain256_16384.ckpt`,
`lfq-with-gan.pt`, `gear-lfq.pt`), module names as in those files.

What sets it apart from the VQ stacks: res blocks whose convolutions have no bias, no attention
anywhere, a symmetric stride-2 conv to downsample, no quant_conv (the encoder's 1x1 conv_out emits
the code channels, log2 K of them, directly), and a decoder whose every level starts with an
adaptive GroupNorm (`adaptive.N`) conditioned on the per-channel mean and std of the decoder's
input (the quantized code) and upsamples by a conv to 4x channels then depth-to-space.
Keys: encoder.conv_in, encoder.down.N.block.M.{norm1,conv1,norm2,conv2,nin_shortcut},
encoder.down.N.downsample, encoder.mid_block.M, encoder.norm_out, encoder.conv_out;
decoder.conv_in, decoder.mid_block.M, decoder.adaptive.N.{gamma,beta}, decoder.up.N.block.M,
decoder.up.N.upsample.conv1, decoder.norm_out, decoder.conv_out. Index N = 0 is the HIGHEST
resolution on both sides. enc_res_blocks / dec_res_blocks count the res blocks of each level and of
that side's mid block (the release: 4 and 4). The public code fixes 32 norm groups; norm_groups
lets the small configs run at widths below 32.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from gear.models.blocks import Normalize


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = Normalize(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = Normalize(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x)


def res_blocks(cin: int, cout: int, n: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(cin if i == 0 else cout, cout, groups) for i in range(n))


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, then scale = gamma(std of `style`), shift = beta(mean of `style`),
    the statistics per channel over the positions. std uses torch's default (unbiased) variance,
    as the public code does."""

    def __init__(self, z_channels: int, channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.gn = nn.GroupNorm(groups, channels, eps=eps, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)
        self.eps = eps

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        s = style.flatten(2)
        scale = self.gamma((s.var(-1) + self.eps).sqrt())
        shift = self.beta(s.mean(-1))
        return self.gn(x) * scale[..., None, None] + shift[..., None, None]


def depth_to_space(x: Tensor) -> Tensor:
    """(B, 4C, H, W) -> (B, C, 2H, 2W), DCR order: the channel index splits as (row, column, c)."""
    B, C4, H, W = x.shape
    x = x.view(B, 2, 2, C4 // 4, H, W).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(B, C4 // 4, 2 * H, 2 * W)


class Upsampler(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, 4 * ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return depth_to_space(self.conv1(x))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g, n, nb = cfg.ch, cfg.norm_groups, len(cfg.ch_mult), cfg.enc_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        cin = ch
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.block = res_blocks(cin, ch * mult, nb, g)
            cin = ch * mult
            if i != n - 1:
                level.downsample = nn.Conv2d(cin, cin, 3, stride=2, padding=1)
            self.down.append(level)
        self.mid_block = res_blocks(cin, cin, nb, g)
        self.norm_out = Normalize(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid_block:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g, mult, nb = cfg.ch, cfg.norm_groups, cfg.ch_mult, cfg.dec_res_blocks
        n = len(mult)
        self.conv_in = nn.Conv2d(cfg.z_channels, ch * mult[-1], 3, padding=1)
        self.mid_block = res_blocks(ch * mult[-1], ch * mult[-1], nb, g)
        self.up, self.adaptive = nn.ModuleList(), nn.ModuleList()
        for i in range(n):  # level i reads what level i + 1 wrote; the lowest reads the mid block
            cin = ch * mult[min(i + 1, n - 1)]
            self.adaptive.append(AdaptiveGroupNorm(cfg.z_channels, cin, g))
            level = nn.Module()
            level.block = res_blocks(cin, ch * mult[i], nb, g)
            if i != 0:
                level.upsample = Upsampler(ch * mult[i])
            self.up.append(level)
        self.norm_out = Normalize(ch * mult[0], g)
        self.conv_out = nn.Conv2d(ch * mult[0], cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid_block:
            h = block(h)
        for i in reversed(range(len(self.up))):
            h = self.adaptive[i](h, z)
            for block in self.up[i].block:
                h = block(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
