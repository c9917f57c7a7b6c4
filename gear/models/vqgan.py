"""The VQGAN-style (taming) encoder/decoder of the IBQ tokenizer: the GEAR release's IBQ-16.

The computation is the one of LlamaGen's VQ stack (both descend from taming's autoencoder: res
blocks, attention at the lowest resolution, asymmetric-pad stride-2 downsampling, nearest x2 +
conv upsampling); what differs is the module tree, and with it every key of the public checkpoints
(TencentARC `IBQ_pretrain_16384.ckpt`, the release's `ibq-with-gan.pt` / `gear-ibq.pt`):
    encoder.conv_in, encoder.down.N.block.M, encoder.down.N.attn.M, encoder.down.N.downsample.conv,
    encoder.mid.{block_1, attn_1, block_2}, encoder.norm_out, encoder.conv_out,
    decoder.conv_in, decoder.mid.*, decoder.up.N.block.M, decoder.up.N.attn.M,
    decoder.up.N.upsample.conv, decoder.norm_out, decoder.conv_out.
decoder.up[0] is the HIGHEST resolution (taming order; LlamaGen's decoder.conv_blocks[0] is the
lowest). The mid block always attends (taming builds attn_1 unconditionally); `attn_lowest` adds
attention after every res block of the lowest level (the release: attn_resolutions [16] at 256 px).
Config: TokenizerConfig (ch, ch_mult, enc_res_blocks, dec_res_blocks: the release's 4 and 5, i.e.
taming's num_res_blocks and num_res_blocks + 1, z_channels, norm_groups).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from gear.models.blocks import AttnBlock, Level, Normalize, ResnetBlock


class Mid(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, groups)
        self.attn_1 = AttnBlock(ch, groups)
        self.block_2 = ResnetBlock(ch, ch, groups)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g, n = cfg.ch, cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, mult in enumerate(cfg.ch_mult):
            self.down.append(Level(cin, ch * mult, cfg.enc_res_blocks, cfg.attn_lowest and i == n - 1, g,
                                   down=i != n - 1, res="block"))
            cin = ch * mult
        self.mid = Mid(cin, g)
        self.norm_out = Normalize(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g, mult = cfg.ch, cfg.norm_groups, cfg.ch_mult
        n = len(mult)
        self.conv_in = nn.Conv2d(cfg.z_channels, ch * mult[-1], 3, padding=1)
        self.mid = Mid(ch * mult[-1], g)
        # level i reads what level i + 1 (one resolution lower) wrote; the lowest reads the mid block
        self.up = nn.ModuleList(Level(ch * mult[min(i + 1, n - 1)], ch * mult[i], cfg.dec_res_blocks,
                                      cfg.attn_lowest and i == n - 1, g, up=i != 0, res="block") for i in range(n))
        self.norm_out = Normalize(ch * mult[0], g)
        self.conv_out = nn.Conv2d(ch * mult[0], cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
