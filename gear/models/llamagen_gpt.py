"""LlamaGen / GEAR-release class-conditional GPT checkpoints <-> our GPT (gear/models/ar.py).

LlamaGen's `autoregressive/models/gpt.py` (c2i GPT-B/L/XL, also what the GEAR release trains)
is the same network as ours under other names and one other layout:

    LlamaGen                                         ours
    tok_embeddings.weight                (K, D)      tok_emb.weight
    cls_embedding.embedding_table.weight (C+1, D)    cls_emb.weight      (row C: null class in both)
    layers.N.attention_norm.weight       (D,)        blocks.N.attn_norm.weight
    layers.N.attention.wqkv.weight       (3D, D)     blocks.N.attn.qkv.weight   (q, k rows permuted)
    layers.N.attention.wo.weight         (D, D)      blocks.N.attn.proj.weight
    layers.N.ffn_norm.weight             (D,)        blocks.N.ffn_norm.weight
    layers.N.feed_forward.w1.weight      (H, D)  \\
    layers.N.feed_forward.w3.weight      (H, D)  /   blocks.N.ffn.gate_up.weight = cat(w1, w3)
    layers.N.feed_forward.w2.weight      (D, H)      blocks.N.ffn.down.weight
    norm.weight                          (D,)        norm.weight
    output.weight                        (K, D)      head.weight

Two differences are not names:
  - RoPE pairs. LlamaGen rotates interleaved pairs (dims 2i, 2i+1 of a head), we rotate halves
    (dims i, i + hd/2); pair i has the same frequency and the same row/column axis in both. So
    the q and k rows of wqkv are permuted inside each head: our dim i <- its dim 2i and our dim
    i + hd/2 <- its dim 2i+1. The same permutation of q and k leaves q.k, hence attention, exact.
  - The class position. LlamaGen's RoPE table is zero there, which zeroes the class token's q
    and k; every GPT we build does the same (GPTConfig.class_qk = "zero", the default). A config
    written before that rule says "keep" (the class position unrotated): every query would score
    the class key and the logits would differ, so both directions refuse such a config instead
    of converting silently.
Not weights, dropped: KV-cache buffers (present if a model was saved after setup_caches).
Tensors outside the GPT (e.g. a REPA projector saved beside it) are dropped and counted.
Grouped-query attention (n_kv_head < n_head, unused by the c2i models) is refused.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from gear.io import ArtifactError
from gear.models.ar import GPT, GPTConfig
from gear.models.llamagen import load_checkpoint, strip_prefixes, unwrap
from gear.models.registry import AR_SIZES

GPT_WRAPPER_KEYS = ("ema", "model", "state_dict", "module")  # LlamaGen / GEAR: the AR's EMA first
GPT_NAMES = ("tok_embeddings.", "cls_embedding.", "layers.", "norm.", "output.")
CACHE = re.compile(r"layers\.\d+\.attention\.kv_cache\.[kv]_cache$")

# per-layer renames (ours <- LlamaGen); qkv and gate_up are handled apart
LAYER_RENAMES = {"attn_norm.weight": "attention_norm.weight", "attn.proj.weight": "attention.wo.weight",
                 "ffn_norm.weight": "ffn_norm.weight", "ffn.down.weight": "feed_forward.w2.weight"}
TOP_RENAMES = {"tok_emb.weight": "tok_embeddings.weight", "cls_emb.weight": "cls_embedding.embedding_table.weight",
               "norm.weight": "norm.weight", "head.weight": "output.weight"}


def _pair_perm(head_dim: int) -> Tensor:
    """ours[j] = llamagen[perm[j]] inside one head: halves <- interleaved pairs."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _permute_qk(wqkv: Tensor, cfg: GPTConfig, inverse: bool = False) -> Tensor:
    perm = _pair_perm(cfg.head_dim)
    if inverse:
        perm = torch.argsort(perm)
    D, H, hd = cfg.dim, cfg.n_head, cfg.head_dim
    q, k, v = wqkv.split(D, dim=0)
    q, k = (w.reshape(H, hd, D)[:, perm].reshape(D, D) for w in (q, k))
    return torch.cat([q, k, v])


def _require_zero_class_qk(cfg: GPTConfig) -> None:
    if cfg.class_qk != "zero":
        raise ArtifactError("LlamaGen GPT weights need GPTConfig(class_qk='zero') (its RoPE zeroes the class "
                            "token's q and k); with class_qk='keep' the logits would differ")


def is_llamagen(sd: Mapping[str, Tensor]) -> bool:
    return "tok_embeddings.weight" in sd or any(k.startswith("layers.") for k in sd)


def describe(sd: Mapping[str, Tensor]) -> str:
    """What a LlamaGen-layout state dict is, from its shapes: layers, width, vocab, classes, size name."""
    try:
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
        vocab, dim = sd["tok_embeddings.weight"].shape
        classes = sd["cls_embedding.embedding_table.weight"].shape[0] - 1
    except (KeyError, ValueError, IndexError):
        return "not a LlamaGen c2i GPT"
    names = [n for n, (layers, d, _) in AR_SIZES.items() if (layers, d) == (n_layer, dim)]
    size = f"size {names[0]} " if names else ""
    return f"{size}({n_layer} layers, dim {dim}), vocab {vocab}, {classes} classes + null"


def from_llamagen(sd: Mapping[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """A LlamaGen-layout c2i GPT state dict as our GPT's state dict (strict: every tensor of a GPT
    built from `cfg`, shape-checked; one-line ArtifactError naming the first mismatch)."""
    _require_zero_class_qk(cfg)
    src = {strip_prefixes(k): v for k, v in sd.items()}
    src = {k: v for k, v in src.items() if not CACHE.search(k)}
    names = {**TOP_RENAMES}
    for n in range(cfg.n_layer):
        names.update({f"blocks.{n}.{ours}": f"layers.{n}.{theirs}" for ours, theirs in LAYER_RENAMES.items()})
        names[f"blocks.{n}.attn.qkv.weight"] = f"layers.{n}.attention.wqkv.weight"
    gates = {f"blocks.{n}.ffn.gate_up.weight": (f"layers.{n}.feed_forward.w1.weight", f"layers.{n}.feed_forward.w3.weight")
             for n in range(cfg.n_layer)}
    with torch.device("meta"):  # shapes only: no memory, no init time even for XL
        expected = {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}
    used = set(names.values()) | {w for pair in gates.values() for w in pair}
    out = {}
    for ours, shape in expected.items():  # model order: the first problem is the first tensor
        theirs = gates.get(ours, (names.get(ours),))
        absent = [t for t in theirs if t not in src]
        if absent:
            raise ArtifactError(f"GPT checkpoint has no {absent[0]} (for {ours}); it is {describe(src)}")
        value = torch.cat([src[t] for t in theirs]) if ours in gates else src[theirs[0]]
        if tuple(value.shape) != shape:
            raise ArtifactError(f"GPT checkpoint tensor {' + '.join(theirs)} is {tuple(value.shape)}, the GPT of "
                                f"these params needs {ours} {shape}; the checkpoint is {describe(src)}")
        out[ours] = _permute_qk(value, cfg) if ours.endswith("attn.qkv.weight") else value
    extra = [k for k in src if k not in used and k.startswith(GPT_NAMES)]
    if extra:  # inside the GPT's namespace but not ours: another architecture (deeper, GQA, biases)
        raise ArtifactError(f"GPT checkpoint has {len(extra)} tensors the GPT of these params lacks, first "
                            f"{extra[0]}; it is {describe(src)}")
    return out


def to_llamagen(sd: Mapping[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """Our GPT state dict in LlamaGen's layout (what its sample_c2i.py loads)."""
    _require_zero_class_qk(cfg)
    out = {}
    for ours, value in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", ours)
        if m is None:
            out[TOP_RENAMES[ours]] = value
            continue
        n, rest = m.groups()
        if rest == "attn.qkv.weight":
            out[f"layers.{n}.attention.wqkv.weight"] = _permute_qk(value, cfg, inverse=True)
        elif rest == "ffn.gate_up.weight":
            w1, w3 = value.chunk(2, dim=0)
            out[f"layers.{n}.feed_forward.w1.weight"], out[f"layers.{n}.feed_forward.w3.weight"] = w1, w3
        else:
            out[f"layers.{n}.{LAYER_RENAMES[rest]}"] = value
    return out


def load_gpt(model: GPT, path: str | Path, key: str | None = None) -> str:
    """Load a GPT checkpoint file (LlamaGen / GEAR-release layout, or ours) into `model` strictly;
    returns a one-line description of what was loaded. Every problem is a one-line ArtifactError."""
    raw = load_checkpoint(path, "GPT checkpoint (ar.init)")
    sd, entry = unwrap(raw, key, GPT_WRAPPER_KEYS, "GPT checkpoint", "ar.init_key")
    sd = {strip_prefixes(k): v for k, v in sd.items()}
    if is_llamagen(sd):
        converted = from_llamagen(sd, model.cfg)
        dropped = [k for k in sd if not k.startswith(GPT_NAMES)]
        layout = "LlamaGen layout"
    elif any(k.startswith("blocks.") for k in sd):
        expected = model.state_dict()
        converted = {k: v for k, v in sd.items() if k in expected}
        dropped = [k for k in sd if k not in expected]
        wrong = [k for k, v in expected.items() if k not in converted or converted[k].shape != v.shape]
        if wrong:
            have = tuple(converted[wrong[0]].shape) if wrong[0] in converted else "missing"
            raise ArtifactError(f"GPT checkpoint {path}: {wrong[0]} is {have}, the GPT of these params needs "
                                f"{tuple(expected[wrong[0]].shape)}")
        layout = "gear layout"
    else:
        where = f"entry {entry!r} of {path}" if entry else str(path)
        raise ArtifactError(f"{where} holds no GPT (first keys: {', '.join(list(sd)[:3])}); name the entry "
                            f"with ar.init_key (top-level keys: {', '.join(map(str, sorted(raw)[:8]))})")
    model.load_state_dict(converted, strict=True)
    note = f", {len(dropped)} tensors outside the GPT ignored (e.g. {dropped[0]})" if dropped else ""
    return f"{path}{f' [{entry}]' if entry else ''}: {layout}{note}"
