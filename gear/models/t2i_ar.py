"""Caption-conditioned AR over a grid of discrete image tokens (the seed's text-to-image GPT).

One stream with a prepended text prefix, as in LlamaGen's T2I, rather than the GEAR release's
dual-stream first blocks: it is the same blocks, RoPE and head as the class-conditional GPT
(gear/models/ar.py), so the only difference between the two rooms is the condition, and a
caption-conditioned model at the embedded scale has no capacity to spare for a second stream.

Sequence layout (P = text_len caption positions, L = grid * grid tokens, raster order):
    positions 0..P-1        the caption: text-encoder features projected to the model width by
                            a two-layer MLP (LlamaGen's CaptionEmbedder), LEFT-padded: the valid
                            positions are the last ones, so the caption always ends at P-1
    positions P..P+L-2      embeddings of tokens 0..L-2 (teacher forcing)
The output at position P-1+k predicts token k, so logits are (B, L, K) over the image positions
only, and the hidden state there (after block l) is aligned to teacher patch k (REPA).

Attention is causal; padded caption positions are masked as keys for every query, and a padded
query attends to itself only (a row with no key would be NaN). Their embeddings are zeroed, so
pads change nothing. Caption positions are not rotated by RoPE (cos 1, sin 0); image positions
rotate by their token's (row, col) exactly as in the class-conditional GPT, so outputs do not
depend on how much padding precedes the caption.

Caption dropout (CFG): a dropped caption becomes a learned null caption of P positions (in the
text encoder's space, projected like a caption), all of them valid.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gear.models.ar import ARout, Block, rope_tables
from gear.models.registry import ar_shape


@dataclass
class T2IConfig:
    vocab_size: int
    grid: int              # token grid side; L = grid * grid
    n_layer: int
    dim: int
    n_head: int
    text_dim: int          # width of the text encoder's features
    text_len: int          # caption prefix positions P
    caption_dropout: float = 0.1
    token_dropout: float = 0.1
    resid_dropout: float = 0.0     # as the class-conditional GPT (Block reads them): LlamaGen's places
    ffn_dropout: float = 0.0
    ffn_multiple: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "grid", "n_layer", "dim", "n_head", "text_dim", "text_len", "ffn_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"T2IConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.n_head or (self.dim // self.n_head) % 4:
            raise ValueError(f"T2IConfig: dim {self.dim} / n_head {self.n_head} must give a head dim divisible by 4")
        for name in ("caption_dropout", "token_dropout", "resid_dropout", "ffn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"T2IConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def seq_len(self) -> int:          # image tokens
        return self.grid * self.grid

    @property
    def total_len(self) -> int:        # positions of a full sequence (the last token is only a target)
        return self.text_len + self.seq_len - 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:       # as the class-conditional GPT (Block reads it)
        h = int(2 * 4 * self.dim / 3)
        return -(-h // self.ffn_multiple) * self.ffn_multiple

    @classmethod
    def from_size(cls, size: str, params=None, **kw) -> "T2IConfig":
        n_layer, dim, n_head = ar_shape(size, params)
        return cls(n_layer=n_layer, dim=dim, n_head=n_head, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "T2IConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"T2IConfig.from_dict: unknown keys {sorted(unknown)}")
        return cls(**d)


class CaptionEmbedder(nn.Module):
    """Text features (B, P, text_dim) -> model width, with the learned null caption for CFG."""

    def __init__(self, cfg: T2IConfig):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.dim, cfg.dim))
        self.null = nn.Parameter(torch.randn(cfg.text_len, cfg.text_dim) / cfg.text_dim ** 0.5)

    def forward(self, text: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None):
        """drop (B,) bool: those captions become the null caption (all positions valid)."""
        if drop is not None:
            text = torch.where(drop[:, None, None], self.null.to(text.dtype).expand_as(text), text)
            mask = mask | drop[:, None]
        h = self.mlp(text.to(self.null.dtype)) * mask[..., None].to(self.null.dtype)  # pads carry nothing
        return h, mask


class T2IGPT(nn.Module):
    def __init__(self, cfg: T2IConfig):
        super().__init__()
        self.cfg = cfg
        self.text_emb = CaptionEmbedder(cfg)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_drop = nn.Dropout(cfg.token_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.grid, cfg.head_dim, cfg.rope_base, "keep")   # row 0: unrotated (the class slot)
        pad = cfg.text_len - 1                                            # the other caption rows: unrotated too
        self.register_buffer("rope_cos", torch.cat([cos[:1].expand(pad, -1), cos]), persistent=False)
        self.register_buffer("rope_sin", torch.cat([sin[:1].expand(pad, -1), sin]), persistent=False)
        self.apply(self._init)
        nn.init.zeros_(self.head.weight)    # uniform logits at init

    @staticmethod
    def _init(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def check_text(self, text: torch.Tensor, mask: torch.Tensor) -> None:
        cfg = self.cfg
        if text.dim() != 3 or text.shape[1:] != (cfg.text_len, cfg.text_dim):
            raise ValueError(f"text must be (B, {cfg.text_len}, {cfg.text_dim}), got {tuple(text.shape)}")
        if mask.shape != text.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"text mask must be bool {tuple(text.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")

    def attn_mask(self, key_valid: torch.Tensor, n_query: int, pos: int = 0) -> torch.Tensor:
        """(B, 1, n_query, keys) may-attend mask for queries at pos..pos+n_query-1 over keys
        0..pos+n_query-1: causal, padded keys hidden, every query sees itself."""
        keys = pos + n_query
        q = torch.arange(pos, keys, device=key_valid.device)[:, None]
        k = torch.arange(keys, device=key_valid.device)[None, :]
        return ((k <= q) & key_valid[:, None, None, :keys]) | (k == q)

    def prefix(self, text: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None):
        """(caption embeddings (B, P, D), key validity (B, P)) after dropout to the null caption."""
        self.check_text(text, mask)
        return self.text_emb(text, mask, drop)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, *,
                return_layers: tuple[int, ...] = ()) -> ARout:
        """tokens (B, n) indices, 1 <= n <= L (the last one is only a target); text (B, P, Dt)
        float, mask (B, P) bool. Returns logits (B, n, K) and block outputs (B, n, D) at the n
        image positions."""
        cfg = self.cfg
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"tokens must be (B, n) integers, got {tuple(tokens.shape)} {tokens.dtype}")
        B, n = tokens.shape
        if not 1 <= n <= cfg.seq_len or text.shape[0] != B:
            raise ValueError(f"tokens (B={B}, n={n}) need 1 <= n <= {cfg.seq_len} and a caption per row")
        drop = None
        if self.training and cfg.caption_dropout > 0:
            drop = torch.rand(B, device=tokens.device) < cfg.caption_dropout
        t, valid = self.prefix(text, mask, drop)
        h = torch.cat([t, self.tok_drop(self.tok_emb(tokens[:, :-1]))], dim=1)
        key_valid = torch.cat([valid, valid.new_ones(B, n - 1)], dim=1)
        out = self.trunk(h, key_valid, return_layers=return_layers)
        P = cfg.text_len
        return ARout(out.logits[:, P - 1:], {l: v[:, P - 1:] for l, v in out.hidden.items()})

    def trunk(self, h: torch.Tensor, key_valid: torch.Tensor, *, pos: int = 0, cache: list | None = None,
              return_layers: tuple[int, ...] = ()) -> ARout:
        """Blocks over embeddings h (B, n, D) at positions pos..pos+n-1; key_valid (B, >= pos+n)
        says which positions may be attended; cache: per-layer (k, v) buffers (B, H, T, hd)."""
        if any(not 1 <= l <= self.cfg.n_layer for l in return_layers):
            raise ValueError(f"return_layers {return_layers} outside [1, {self.cfg.n_layer}]")
        n = h.shape[1]
        cos, sin = self.rope_cos[pos:pos + n], self.rope_sin[pos:pos + n]
        mask = self.attn_mask(key_valid, n, pos)
        hidden = {}
        for i, block in enumerate(self.blocks, start=1):
            h = block(h, cos, sin, None if cache is None else cache[i - 1], pos, mask)
            if i in return_layers:
                hidden[i] = h
        return ARout(self.head(self.norm(h)), hidden)


def t2i_loss(model: nn.Module, proj: nn.Module, tokens: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
             y: torch.Tensor | None, align_layer: int, align_weight: float):
    """NTP + align_weight * REPA (-cos of projected block-l states to teacher patches y (B, L, Dt))."""
    from gear.models.ar import ntp_loss, repa_loss

    use_align = y is not None and align_weight > 0
    out = model(tokens, text, mask, return_layers=(align_layer,) if use_align else ())
    ntp = ntp_loss(out.logits, tokens)
    logs = {"ntp": ntp.detach()}
    loss = ntp
    if use_align:
        align = repa_loss(proj(out.hidden[align_layer]), y)
        loss = loss + align_weight * align
        logs["align"] = align.detach()
    return loss, logs


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed next-token CE of a batch (for val NTP over many batches)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="sum")
