"""Checkpoints written in each public layout, from the public code, independently of our modules:
what the loader tests (test_tokenizer*.py, test_llamagen_gpt.py) and the `released` target's tests
(test_released.py) load. Shapes only where a layout is named; random tensors by seed.

  llamagen_layout   LlamaGen's VQModel (tokenizer/tokenizer_image/vq_model.py)
  magvit2_layout    Open-MAGVIT2's encoder / decoder with LFQ (improved_model.py)
  vqgan_layout      taming's VQGAN stack + IBQ codebook, as the IBQ release builds it
  lightning_file    an Open-MAGVIT2 / IBQ Lightning original (live weights + LitEma shadows)
  release_file      the GEAR release's warm-up / GEAR file (vq, vq_ema, discriminator, the AR's ema)
  RefTransformer    LlamaGen's c2i GPT (autoregressive/models/gpt.py), names, shapes and forward
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def llamagen_layout(ch, ch_mult, num_res_blocks, z_channels, embed_dim, codebook_size, in_ch=3):
    """name -> shape of LlamaGen's VQModel as published (tokenizer/tokenizer_image/vq_model.py):
    encoder levels with num_res_blocks ResnetBlocks, decoder levels with num_res_blocks + 1 and in
    reversed order, AttnBlocks after each block of the lowest level, mid = [res, attn, res], a 1x1
    nin_shortcut when channels change, and the quantizer's codebook_used buffer (65536)."""
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def res(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{proj}", c, c, 1)

    def mid(prefix, c):
        res(f"{prefix}.mid.0", c, c), attn(f"{prefix}.mid.1", c), res(f"{prefix}.mid.2", c, c)

    n = len(ch_mult)
    conv("encoder.conv_in", in_ch, ch, 3)
    in_mult = (1, *ch_mult)
    for i in range(n):
        cin, cout = ch * in_mult[i], ch * ch_mult[i]
        for j in range(num_res_blocks):
            res(f"encoder.conv_blocks.{i}.res.{j}", cin, cout)
            cin = cout
            if i == n - 1:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", cout)
        if i != n - 1:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", cout, cout, 3)
    top = ch * ch_mult[-1]
    mid("encoder", top)
    norm("encoder.norm_out", top), conv("encoder.conv_out", top, z_channels, 3)

    conv("decoder.conv_in", z_channels, top, 3)
    mid("decoder", top)
    cin = top
    for k, i in enumerate(reversed(range(n))):
        cout = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            res(f"decoder.conv_blocks.{k}.res.{j}", cin, cout)
            cin = cout
            if i == n - 1:
                attn(f"decoder.conv_blocks.{k}.attn.{j}", cout)
        if i != 0:
            conv(f"decoder.conv_blocks.{k}.upsample.conv", cout, cout, 3)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", cin, in_ch, 3)

    shapes["quantize.embedding.weight"] = (codebook_size, embed_dim)
    shapes["quantize.codebook_used"] = (65536,)
    conv("quant_conv", z_channels, embed_dim, 1)
    conv("post_quant_conv", embed_dim, z_channels, 1)
    return shapes


class Layout(dict):
    """name -> shape, filled in the order the public modules register their tensors."""

    def conv(self, name, cin, cout, k, bias=True):
        self[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            self[f"{name}.bias"] = (cout,)

    def norm(self, name, c):
        self[f"{name}.weight"], self[f"{name}.bias"] = (c,), (c,)

    def linear(self, name, cin, cout):
        self[f"{name}.weight"], self[f"{name}.bias"] = (cout, cin), (cout,)


def magvit2_layout(ch, mult, nb, z) -> Layout:
    """Open-MAGVIT2 Encoder / Decoder (improved_model.py) with LFQ: no quantizer tensors persist."""
    s = Layout()

    def resblock(name, cin, cout):  # convs without bias; 1x1 shortcut without bias when widths differ
        s.norm(f"{name}.norm1", cin), s.norm(f"{name}.norm2", cout)
        s.conv(f"{name}.conv1", cin, cout, 3, bias=False), s.conv(f"{name}.conv2", cout, cout, 3, bias=False)
        if cin != cout:
            s.conv(f"{name}.nin_shortcut", cin, cout, 1, bias=False)

    n, in_mult = len(mult), (1, *mult)
    s.conv("encoder.conv_in", 3, ch, 3, bias=False)
    for i in range(n):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(nb):
            resblock(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i < n - 1:
            s.conv(f"encoder.down.{i}.downsample", block_out, block_out, 3)
    for j in range(nb):
        resblock(f"encoder.mid_block.{j}", block_in, block_in)
    s.norm("encoder.norm_out", block_out), s.conv("encoder.conv_out", block_out, z, 1)

    block_in = ch * mult[-1]
    s.conv("decoder.conv_in", z, block_in, 3)
    for j in range(nb):
        resblock(f"decoder.mid_block.{j}", block_in, block_in)
    for i in reversed(range(n)):  # up / adaptive are inserted at 0: index i is level i
        block_out = ch * mult[i]
        s.linear(f"decoder.adaptive.{i}.gamma", z, block_in), s.linear(f"decoder.adaptive.{i}.beta", z, block_in)
        for j in range(nb):
            resblock(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i > 0:
            s.conv(f"decoder.up.{i}.upsample.conv1", block_in, 4 * block_in, 3)
    s.norm("decoder.norm_out", block_in), s.conv("decoder.conv_out", block_in, 3, 3)
    return s


def vqgan_layout(ch, mult, nb, z, embed, k, resolution, attn_resolutions) -> Layout:
    """taming Encoder / Decoder (temb_channels 0, double_z False) + quant convs + IBQ codebook."""
    s = Layout()

    def resblock(name, cin, cout):
        s.norm(f"{name}.norm1", cin), s.conv(f"{name}.conv1", cin, cout, 3)
        s.norm(f"{name}.norm2", cout), s.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            s.conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        s.norm(f"{name}.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            s.conv(f"{name}.{proj}", c, c, 1)

    def mid(part, c):
        resblock(f"{part}.mid.block_1", c, c), attn(f"{part}.mid.attn_1", c), resblock(f"{part}.mid.block_2", c, c)

    n, in_mult, res = len(mult), (1, *mult), resolution
    s.conv("encoder.conv_in", 3, ch, 3)
    for i in range(n):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(nb):
            resblock(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != n - 1:
            s.conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    mid("encoder", block_in)
    s.norm("encoder.norm_out", block_in), s.conv("encoder.conv_out", block_in, z, 3)

    block_in = ch * mult[-1]
    s.conv("decoder.conv_in", z, block_in, 3)
    mid("decoder", block_in)
    for i in reversed(range(n)):
        block_out = ch * mult[i]
        for j in range(nb + 1):
            resblock(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            s.conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    s.norm("decoder.norm_out", block_in), s.conv("decoder.conv_out", block_in, 3, 3)
    s["quantize.embedding.weight"] = (k, embed)
    s.conv("quant_conv", z, embed, 1), s.conv("post_quant_conv", embed, z, 1)
    return s


def random_state(layout: Layout, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in layout.items()}


def lightning_file(live: dict, ema: dict) -> dict:
    """A Lightning checkpoint as the Open-MAGVIT2 / IBQ originals are: live weights, LitEma shadows
    (names without dots) of every parameter, the discriminator (with its shadows), EMA counters."""
    disc = {"loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4)}
    sd = {**live, **disc, "model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(7)}
    for name, v in {**ema, "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4)}.items():
        sd["model_ema." + name.replace(".", "")] = v
    return {"state_dict": sd, "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.1.0"}


def release_file(live: dict, ema: dict, ar_vocab: int = 64) -> dict:
    """The release's warm-up (`*-with-gan.pt`) / GEAR (`gear-*.pt`) file: tokenizer raw + EMA, the
    discriminator, and for GEAR the AR's EMA under "ema" (not a tokenizer)."""
    return {"vq": live, "vq_ema": ema, "discriminator": {"main.0.weight": torch.randn(8, 3, 4, 4)},
            "ema": {"tok_embeddings.weight": torch.randn(ar_vocab, 4)}, "args": {"vq_model": "X-16"}, "steps": 10}


# ---- the reference: LlamaGen's layout and forward ------------------------------------------

class RefRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def ref_freqs_cis_2d(grid, head_dim, base=10000.0, cls_tokens=1):
    """(cls_tokens + grid^2, head_dim / 2, 2) cos/sin; rows of the condition are zeros."""
    half = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, half, 2)[: half // 2].float() / half)
    freqs = torch.outer(torch.arange(grid).float(), freqs)                     # (grid, hd/4)
    angles = torch.cat([freqs[:, None, :].expand(-1, grid, -1), freqs[None, :, :].expand(grid, -1, -1)], -1)
    cache = torch.stack([angles.cos(), angles.sin()], -1).flatten(0, 1)      # (grid^2, hd/2, 2)
    return torch.cat([torch.zeros(cls_tokens, half, 2), cache])


def ref_rotary(x, freqs):
    """x (B, n, H, hd): rotate interleaved pairs (2i, 2i+1) by freqs (n, hd/2, 2)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], -1)
    return out.flatten(3).type_as(x)


class RefAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.dim, self.heads, self.hd = dim, heads, dim // heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, freqs):
        B, n, _ = x.shape
        q, k, v = self.wqkv(x).split([self.dim, self.dim, self.dim], dim=-1)
        q, k, v = (t.view(B, n, self.heads, self.hd) for t in (q, k, v))
        q, k = ref_rotary(q, freqs), ref_rotary(k, freqs)
        y = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, n, self.dim))


class RefFeedForward(nn.Module):
    def __init__(self, dim, multiple_of=256):
        super().__init__()
        hidden = int(2 * 4 * dim / 3)
        hidden = hidden if hidden % multiple_of == 0 else hidden + multiple_of - hidden % multiple_of
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RefBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attention, self.feed_forward = RefAttention(dim, heads), RefFeedForward(dim)
        self.attention_norm, self.ffn_norm = RefRMSNorm(dim), RefRMSNorm(dim)

    def forward(self, x, freqs):
        h = x + self.attention(self.attention_norm(x), freqs)
        return h + self.feed_forward(self.ffn_norm(h))


class RefLabelEmbedder(nn.Module):
    def __init__(self, classes, dim):
        super().__init__()
        self.embedding_table = nn.Embedding(classes + 1, dim)  # + the CFG null class


class RefTransformer(nn.Module):
    def __init__(self, vocab, grid, layers, dim, heads, classes):
        super().__init__()
        self.cls_embedding = RefLabelEmbedder(classes, dim)
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(RefBlock(dim, heads) for _ in range(layers))
        self.norm = RefRMSNorm(dim)
        self.output = nn.Linear(dim, vocab, bias=False)
        self.freqs_cis = ref_freqs_cis_2d(grid, dim // heads)  # an attribute, not in the state dict

    def forward(self, idx, cond):
        """Teacher forcing as LlamaGen trains: idx = tokens[:, :-1], logits (B, L, K)."""
        h = torch.cat([self.cls_embedding.embedding_table(cond)[:, None], self.tok_embeddings(idx)], dim=1)
        freqs = self.freqs_cis[: h.shape[1]]
        for layer in self.layers:
            h = layer(h, freqs)
        return self.output(self.norm(h)).float()
