"""Public checkpoint layouts written out from the public code, independently of gear/models/: a
state dict of exactly these names and shapes must load strictly into our model of that layout
(tests/test_tokenizer.py, tests/test_tokenizer_arch.py)."""
from __future__ import annotations


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
