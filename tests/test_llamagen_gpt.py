"""Released LlamaGen / GEAR-release c2i GPT checkpoints load into our GPT with identical logits.

The reference below is a small re-implementation of LlamaGen's published c2i Transformer
(autoregressive/models/gpt.py): its parameter names and shapes, RMSNorm computed in float32,
2D RoPE on interleaved pairs with a zero row at the class position, SwiGLU, a class-token
prefix. Dropouts are left out: the comparison runs in eval mode, where they are identities.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from gear import cli
from gear.io import ArtifactError, load_tensors
from gear.models.ar import GPT, GPTConfig
from gear.models.llamagen_gpt import from_llamagen, load_gpt, to_llamagen
from gear.models.sampling import generate
from tiny import ar_world, build_ar_world

VOCAB, GRID, LAYERS, DIM, HEADS, CLASSES = 32, 4, 2, 64, 4, 5


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
    def __init__(self, vocab=VOCAB, grid=GRID, layers=LAYERS, dim=DIM, heads=HEADS, classes=CLASSES):
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


# ---- tests ---------------------------------------------------------------------------------

def reference(seed=0) -> RefTransformer:
    torch.manual_seed(seed)
    ref = RefTransformer().eval()
    with torch.no_grad():  # nothing zero-initialised: every tensor must reach the logits
        for p in ref.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)  # norm gains: not all ones
    return ref


def ours_cfg(**kw) -> GPTConfig:
    return GPTConfig(vocab_size=VOCAB, grid=GRID, n_layer=LAYERS, dim=DIM, n_head=HEADS, num_classes=CLASSES,
                     class_dropout=0.0, token_dropout=0.0, class_qk="zero", **kw)


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, GRID * GRID), generator=g)
    labels = torch.randint(0, CLASSES + 1, (n,), generator=g)  # includes the null class
    return tokens, labels


def test_published_layout_gives_identical_logits_and_round_trips():
    ref = reference()
    sd = ref.state_dict()
    assert "layers.1.attention.wqkv.weight" in sd and "cls_embedding.embedding_table.weight" in sd
    assert "layers.0.feed_forward.w3.weight" in sd and "output.weight" in sd
    cfg = ours_cfg()
    model = GPT(cfg).eval()
    model.load_state_dict(from_llamagen(sd, cfg), strict=True)
    tokens, labels = batch()
    with torch.no_grad():
        want = ref(tokens[:, :-1], labels)
        got = model(tokens, labels).logits
    diff = (want - got).abs().max().item()
    print(f"max |logits diff| = {diff:.3g} (logits scale {want.abs().max().item():.3g})")
    assert want.abs().max() > 1 and diff < 1e-4

    back = to_llamagen(model.state_dict(), cfg)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)

    # The KV-cache sampler uses the same tables: cached and uncached decoding agree.
    g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
    y = torch.arange(CLASSES)
    a = generate(model, y, cfg_scale=1.5, generator=g1, use_cache=True)
    b = generate(model, y, cfg_scale=1.5, generator=g2, use_cache=False)
    assert torch.equal(a, b)


def test_class_position_rule_is_why_class_qk_exists():
    """LlamaGen zeroes the class token's q and k; our default keeps them. Measured, and refused."""
    ref = reference()
    cfg = ours_cfg()
    converted = from_llamagen(ref.state_dict(), cfg)
    keep = GPT(ours_cfg().__class__(**{**cfg.to_dict(), "class_qk": "keep"})).eval()
    keep.load_state_dict(converted)
    tokens, labels = batch()
    with torch.no_grad():
        diff = (ref(tokens[:, :-1], labels) - keep(tokens, labels).logits).abs().max().item()
    assert diff > 1e-2  # the same weights under the other class rule give other logits
    with pytest.raises(ArtifactError, match="class_qk='zero'"):
        from_llamagen(ref.state_dict(), keep.cfg)
    with pytest.raises(ArtifactError, match="class_qk='zero'"):
        to_llamagen(keep.state_dict(), keep.cfg)


def test_load_gpt_unwraps_release_files_and_names_mismatches(tmp_path):
    ref, raw = reference(0), reference(1)
    extra = {"projector.net.0.weight": torch.zeros(4, DIM)}  # a REPA projector saved beside the GPT
    path = tmp_path / "gear_stage1.pt"
    torch.save({"model": {**raw.state_dict(), **extra}, "ema": {"module." + k: v for k, v in ref.state_dict().items()},
                "vq": {"encoder.conv_in.weight": torch.zeros(1)}, "steps": 10}, path)
    model = GPT(ours_cfg()).eval()
    info = load_gpt(model, path)
    assert "[ema]" in info and "LlamaGen layout" in info
    tokens, labels = batch()
    with torch.no_grad():
        assert (model(tokens, labels).logits - ref(tokens[:, :-1], labels)).abs().max() < 1e-4
    assert "1 tensors outside the GPT" in load_gpt(model, path, key="model")

    with pytest.raises(ArtifactError, match=r"ar.init_key = 'vq_ema'.*top-level keys: ema, model, steps, vq"):
        load_gpt(model, path, key="vq_ema")
    with pytest.raises(ArtifactError, match="holds no GPT"):
        load_gpt(model, path, key="vq")
    wide = GPT(GPTConfig(**{**ours_cfg().to_dict(), "dim": 128})).eval()
    with pytest.raises(ArtifactError, match=r"embedding_table.weight is \(6, 64\).*needs cls_emb.weight \(6, 128\)"
                                            r".*\(2 layers, dim 64\), vocab 32, 5 classes"):
        load_gpt(wide, path)
    deep = GPT(GPTConfig(**{**ours_cfg().to_dict(), "n_layer": 3})).eval()
    with pytest.raises(ArtifactError, match="no layers.2.attention_norm.weight"):
        load_gpt(deep, path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_gpt(model, tmp_path / "absent.pt")


def test_train_ar_imports_a_released_checkpoint_unchanged(tmp_path, monkeypatch):
    """`ar.init` + `ar.steps: 0`: train-ar writes the released weights as they are, for sample /
    evaluate; a size that does not fit is one line, exit 2, nothing written."""
    raw = ar_world("data.embedded_train_per_class=4", "data.embedded_val_per_class=2",
                   f"tokenizer.codebook_size={VOCAB}", f"ar.custom_layers={LAYERS}", f"ar.custom_dim={DIM}",
                   f"ar.custom_heads={HEADS}", "ar.projector_hidden=16", "ar.steps=4", "ar.batch_size=8",
                   "ar.warmup_steps=1", "sample.per_class=1", "sample.batch_size=16")
    build_ar_world(tmp_path, raw, "baseline")
    monkeypatch.chdir(tmp_path)
    classes = 16  # the embedded set
    torch.manual_seed(0)
    ref = RefTransformer(classes=classes).eval()
    torch.save({"model": ref.state_dict()}, tmp_path / "c2i_custom.pt")
    base = ["--params", "params.yaml", "--set", "ar.init=c2i_custom.pt", "--set", "ar.steps=0"]

    assert cli.main(["train-ar", "--arm", "baseline", "--size", "custom", *base]) == 0
    (folder,) = glob.glob("models/ar/**/ar.safetensors", recursive=True)
    cfg = yaml.safe_load(open(Path(folder).parent / "config.json"))
    assert cfg["gpt"]["class_qk"] == "zero" and cfg["init"] == "c2i_custom.pt"
    saved = load_tensors(folder)
    want = from_llamagen(ref.state_dict(), GPTConfig.from_dict(cfg["gpt"]))
    assert all(torch.equal(saved[k], want[k]) for k in want)
    assert cli.main(["sample", "--arm", "baseline", "--size", "custom", *base]) == 0

    before = {p: os.path.getmtime(p) for p in glob.glob("models/**", recursive=True)}
    assert cli.main(["train-ar", "--arm", "baseline", "--size", "custom", *base, "--set", "ar.custom_dim=128",
                     "--set", "ar.custom_heads=4"]) == 2
    assert before == {p: os.path.getmtime(p) for p in glob.glob("models/**", recursive=True)}
