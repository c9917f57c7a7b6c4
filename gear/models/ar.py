"""LlamaGen-style AR generator over a grid of discrete image tokens, conditioned on a class or a
caption (one GPT, two condition modules, as LlamaGen's one Transformer for c2i and t2i), with the
REPA projector and losses that GEAR trains it with.

Sequence layout (P prefix positions, L = grid * grid tokens, raster order):
    positions 0..P-1        the condition: the class embedding (P = 1; index num_classes = null
                            class, used for CFG), or the caption (P = text_len): text-encoder
                            features projected to the model width by a two-layer MLP (LlamaGen's
                            CaptionEmbedder), LEFT-padded so the caption always ends at P-1
    positions P..P+L-2      embeddings of tokens 0..L-2 (teacher forcing)
The output at position P-1+k predicts token k, so logits are (B, L, K) over those positions and
the targets are the input tokens themselves. The hidden state there (after block l) is aligned
to teacher patch k.

2D RoPE: each head's dims form head_dim/2 rotation pairs; the first half of the pairs rotate by
the row of the token held at that position, the second half by its column. Position P-1+k (k >= 1)
holds token k-1, so it rotates by token k-1's (row, col): keys carry where each token lies on the
grid. The class position's table is all zeros, as in LlamaGen (its precompute_freqs_cis_2d pads
the condition rows with zeros): the class token's query and key are zero vectors, so every
position scores 0 against it (its value still reaches every position). GPTConfig.class_qk =
"zero" is that rule and the default; "keep" (the class position unrotated, cos 1, sin 0) is read
only from configs written before the rule was made unconditional, so their weights give the
logits they were trained with. Caption positions are unrotated (cos 1, sin 0), so outputs do not
depend on how much padding precedes a caption.

Caption attention is causal with padded caption positions masked as keys for every query; a
padded query attends to itself only (a row with no key would be NaN). Pads are embedded as zeros,
so they change nothing. The class condition attends causally with no mask.

Dropout as LlamaGen: token dropout on the input embeddings (the class position included, as in
LlamaGen; the caption prefix not, as the seed's text-to-image GPT), residual dropout on the
attention output projection, FFN dropout on the SwiGLU output (GPTConfig.resid_dropout /
ffn_dropout; the release trains with 0.1 each), condition dropout for CFG (a dropped class is the
null class; a dropped caption the learned null caption of P positions, all valid). All are off
in eval mode.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.utils.checkpoint
import torch.nn as nn
import torch.nn.functional as F

from gear.models.registry import ar_shape


CLASS_KEYS = ("num_classes", "class_dropout", "class_qk")
CAPTION_KEYS = ("text_dim", "text_len", "caption_dropout")


@dataclass
class GPTConfig:
    vocab_size: int
    grid: int            # token grid side; L = grid * grid
    n_layer: int
    dim: int
    n_head: int
    num_classes: int = 0     # > 0: the class condition (CLASS_KEYS)
    class_dropout: float = 0.1
    token_dropout: float = 0.1
    ffn_multiple: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    class_qk: str = "zero"   # LlamaGen's zero RoPE row at the class position; "keep": old configs (module doc)
    resid_dropout: float = 0.0   # after the attention output projection (LlamaGen resid_dropout_p)
    ffn_dropout: float = 0.0     # after the SwiGLU down projection (LlamaGen ffn_dropout_p)
    text_dim: int = 0        # > 0: the caption condition (CAPTION_KEYS): the text encoder's width
    text_len: int = 0        # caption prefix positions P
    caption_dropout: float = 0.1

    def __post_init__(self):
        for name in ("vocab_size", "grid", "n_layer", "dim", "n_head", "ffn_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if (self.num_classes > 0) == (self.text_dim > 0 or self.text_len > 0) or min(self.text_dim, self.text_len) < 0:
            raise ValueError(f"GPTConfig: set num_classes (class condition) or text_dim and text_len (caption), "
                             f"not both; got {self.num_classes}, {self.text_dim}, {self.text_len}")
        if self.condition == "caption" and min(self.text_dim, self.text_len) < 1:
            raise ValueError(f"GPTConfig: a caption condition needs text_dim and text_len >= 1, "
                             f"got {self.text_dim}, {self.text_len}")
        if self.dim % self.n_head or (self.dim // self.n_head) % 4:
            raise ValueError(f"GPTConfig: dim {self.dim} / n_head {self.n_head} must give a head dim "
                             "divisible by 4 (2D RoPE rotates pairs along two axes)")
        for name in ("class_dropout", "caption_dropout", "token_dropout", "resid_dropout", "ffn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.class_qk not in ("keep", "zero"):
            raise ValueError(f"GPTConfig.class_qk must be keep or zero, got {self.class_qk!r}")

    @property
    def condition(self) -> str:
        return "class" if self.num_classes > 0 else "caption"

    @property
    def prefix_len(self) -> int:       # condition positions P
        return 1 if self.condition == "class" else self.text_len

    @property
    def seq_len(self) -> int:          # image tokens
        return self.grid * self.grid

    @property
    def total_len(self) -> int:        # positions of a full sequence (the last token is only a target)
        return self.prefix_len + self.seq_len - 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        h = int(2 * 4 * self.dim / 3)
        return -(-h // self.ffn_multiple) * self.ffn_multiple

    @classmethod
    def from_size(cls, size: str, vocab_size: int, grid: int, num_classes: int = 0, params=None,
                  **kw) -> "GPTConfig":
        n_layer, dim, n_head = ar_shape(size, params)
        return cls(vocab_size=vocab_size, grid=grid, n_layer=n_layer, dim=dim, n_head=n_head,
                   num_classes=num_classes, **kw)

    def to_dict(self) -> dict:
        """The fields of this config's condition only: a class config is the dict saved ARs hold
        under "gpt", a caption config the one under "t2i_gpt" (the seed's T2IConfig)."""
        other = CAPTION_KEYS if self.condition == "class" else CLASS_KEYS
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in other}

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown keys {sorted(unknown)}")
        if d.get("text_dim"):
            return cls(**d)
        # a class config without class_qk predates the field: its model kept the class position's q/k
        return cls(**{"class_qk": "keep", **d})


class ARout(NamedTuple):
    logits: torch.Tensor | None          # (B, n, K); None on early exit
    hidden: dict[int, torch.Tensor]      # 1-indexed block -> (B, n, D) block output


def rope_tables(grid: int, head_dim: int, base: float, class_qk: str = "zero",
                prefix_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (prefix_len + L - 1, head_dim) for the rotate-half convention (pair i =
    dims i, i + hd/2). The prefix rows are unrotated (cos 1, sin 0); class_qk "zero" (a class
    prefix, LlamaGen): cos = sin = 0 there instead, which zeroes its q and k."""
    quarter = head_dim // 4
    freqs = 1.0 / base ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    tok = torch.arange(grid * grid - 1)               # tokens 0..L-2 follow the prefix
    row, col = (tok // grid).double(), (tok % grid).double()
    ang = torch.cat([row[:, None] * freqs, col[:, None] * freqs], dim=1)              # (L-1, hd/2)
    ang = torch.cat([torch.zeros(prefix_len, 2 * quarter, dtype=ang.dtype), ang])    # prefix: no rotation
    ang = torch.cat([ang, ang], dim=1)                                                # (P+L-1, hd)
    cos, sin = ang.cos().float(), ang.sin().float()
    if class_qk == "zero":
        cos[:prefix_len] = 0.0
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.resid_drop = nn.Dropout(cfg.resid_dropout)

    def forward(self, x, cos, sin, cache=None, pos: int = 0, mask=None):
        """mask: None (causal) or a boolean (B, 1, n, keys) "may attend" mask that already holds
        the causal rule (the caption condition masks its padding with it)."""
        B, n, D = x.shape
        qkv = self.qkv(x).view(B, n, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        qk = apply_rope(qkv[:2], cos.to(qkv.dtype), sin.to(qkv.dtype))   # q and k in one pass
        q, k, v = qk[0], qk[1], qkv[2]
        if mask is not None:
            k_all, v_all = k, v
            if cache is not None and isinstance(pos, torch.Tensor):
                # one token at a tensor position, the whole cache attended under the mask: the same
                # shapes at every step, so a compiled decoding step is traced once (sampling.py)
                if n != 1:
                    raise ValueError(f"a tensor position takes one token, got {n}")
                cache[0].index_copy_(2, pos.view(1), k)
                cache[1].index_copy_(2, pos.view(1), v)
                k_all, v_all = cache
            elif cache is not None:
                if n > 1 and pos:
                    raise ValueError(f"cached attention takes one token, or a prefill at position 0 (got {n} at {pos})")
                cache[0][:, :, pos:pos + n], cache[1][:, :, pos:pos + n] = k, v
                k_all, v_all = cache[0][:, :, :pos + n], cache[1][:, :, :pos + n]
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # static cache (B, H, L, hd): write this step's keys/values, attend to the prefix.
            # A single query needs no mask; a multi-token prefill must start at position 0.
            if n > 1 and pos:
                raise ValueError(f"cached attention takes one token, or a prefill at position 0 (got {n} at {pos})")
            k_cache, v_cache = cache
            k_cache[:, :, pos:pos + n] = k
            v_cache[:, :, pos:pos + n] = v
            y = F.scaled_dot_product_attention(q, k_cache[:, :, :pos + n], v_cache[:, :, :pos + n],
                                               is_causal=n > 1)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, n, D)))


class SwiGLU(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.dim, 2 * cfg.ffn_hidden, bias=False)   # w1 and w3 in one GEMM
        self.down = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.drop = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.drop(self.down(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, cos, sin, cache=None, pos: int = 0, mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, pos, mask)
        return x + self.ffn(self.ffn_norm(x))


class ClassCondition(nn.Embedding):
    """Class labels (B,) -> one prefix position each; row num_classes is the null class (CFG). The
    embedding table itself, so the GPT's state-dict key stays `cls_emb.weight` (released checkpoints)."""

    attr = "cls_emb"          # the GPT's attribute: its state-dict prefix
    drops_with_tokens = True  # token dropout covers the class position too (LlamaGen)

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg.num_classes + 1, cfg.dim)
        self.null_class, self.dropout, self.qk = cfg.num_classes, cfg.class_dropout, cfg.class_qk

    def check(self, batch: int | None, labels: torch.Tensor, values: bool = False) -> int:
        """The batch size of valid labels; values: also their range (one host sync)."""
        if labels.dim() != 1 or labels.is_floating_point() or (batch is not None and len(labels) != batch):
            raise ValueError(f"labels must be integer (B,) = ({batch},), got {tuple(labels.shape)} {labels.dtype}")
        if values and len(labels) and (labels.min() < 0 or labels.max() > self.null_class):
            raise ValueError(f"labels must be in [0, {self.null_class}] ({self.null_class} = null class)")
        return len(labels)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None):
        """(prefix (B, 1, D), None: every key valid); drop (B,) bool: those rows the null class."""
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return super().forward(labels)[:, None], None


class CaptionCondition(nn.Module):
    """Captions: text features (B, P, text_dim) and their left-padded validity mask (B, P) -> the
    prefix at model width, with the learned null caption for CFG (LlamaGen's CaptionEmbedder)."""

    attr = "text_emb"
    drops_with_tokens = False  # token dropout leaves the caption prefix alone (the seed's T2I)

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.dim, cfg.dim))
        self.null = nn.Parameter(torch.randn(cfg.text_len, cfg.text_dim) / cfg.text_dim ** 0.5)
        self.dropout, self.qk = cfg.caption_dropout, "keep"

    def check(self, batch: int | None, text: torch.Tensor, mask: torch.Tensor, values: bool = False) -> int:
        P, Dt = self.null.shape
        if text.dim() != 3 or text.shape[1:] != (P, Dt) or (batch is not None and len(text) != batch):
            raise ValueError(f"text must be (B, {P}, {Dt}) with B = {batch}, got {tuple(text.shape)}")
        if mask.shape != text.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"text mask must be bool {tuple(text.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
        return len(text)

    def forward(self, text: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None):
        """(prefix (B, P, D), key validity (B, P)); drop (B,) bool: those captions become the null
        caption (all positions valid)."""
        if drop is not None:
            text = torch.where(drop[:, None, None], self.null.to(text.dtype).expand_as(text), text)
            mask = mask | drop[:, None]
        h = self.mlp(text.to(self.null.dtype)) * mask[..., None].to(self.null.dtype)  # pads carry nothing
        return h, mask


def attn_mask(key_valid: torch.Tensor, n_query: int, pos: int = 0) -> torch.Tensor:
    """(B, 1, n_query, keys) may-attend mask for queries at pos..pos+n_query-1 over keys
    0..pos+n_query-1: causal, invalid keys hidden, every query sees itself."""
    keys = pos + n_query
    q = torch.arange(pos, keys, device=key_valid.device)[:, None]
    k = torch.arange(keys, device=key_valid.device)[None, :]
    return ((k <= q) & key_valid[:, None, None, :keys]) | (k == q)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        cond = (ClassCondition if cfg.condition == "class" else CaptionCondition)(cfg)
        self.add_module(cond.attr, cond)    # first: the init order (and so the weights) of a seed
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_drop = nn.Dropout(cfg.token_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.grid, cfg.head_dim, cfg.rope_base, cond.qk, cfg.prefix_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        nn.init.zeros_(self.head.weight)    # uniform logits at init
        self.grad_checkpointing = False     # recompute block activations in backward (memory for compute)

    @property
    def cond(self) -> ClassCondition | CaptionCondition:
        return getattr(self, ClassCondition.attr if self.cfg.condition == "class" else CaptionCondition.attr)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    @staticmethod
    def _init(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n) indices -> E[x]; (B, n, K) distributions -> x @ E (gradient reaches x)."""
        if x.is_floating_point():
            return x.to(self.tok_emb.weight.dtype) @ self.tok_emb.weight
        return self.tok_emb(x)

    def forward(self, x: torch.Tensor, *cond: torch.Tensor, stop_at_layer: int | None = None,
                return_layers: tuple[int, ...] = ()) -> ARout:
        """x: tokens (B, n) or code distributions (B, n, K), 1 <= n <= L (the last one is only a
        target); cond: labels (B,), or text (B, P, Dt) float and its mask (B, P) bool. Returns
        logits (B, n, K) and the requested block outputs (B, n, D)."""
        cfg = self.cfg
        if x.is_floating_point():
            if x.dim() != 3 or x.shape[-1] != cfg.vocab_size:
                raise ValueError(f"distribution input must be (B, n, {cfg.vocab_size}), got {tuple(x.shape)}")
        elif x.dim() != 2:
            raise ValueError(f"index input must be (B, n) integers, got {tuple(x.shape)} {x.dtype}")
        B, n = x.shape[:2]
        if not 1 <= n <= cfg.seq_len:
            raise ValueError(f"sequence length {n} outside [1, {cfg.seq_len}]")
        self.cond.check(B, *cond)
        drop = None
        if self.training and self.cond.dropout > 0:
            drop = torch.rand(B, device=x.device) < self.cond.dropout
        prefix, valid = self.cond(*cond, drop=drop)
        tokens = self.embed_tokens(x[:, :-1])
        if self.cond.drops_with_tokens:
            h = self.tok_drop(torch.cat([prefix, tokens], dim=1))
        else:
            h = torch.cat([prefix, self.tok_drop(tokens)], dim=1)
        key_valid = None if valid is None else torch.cat([valid, valid.new_ones(B, n - 1)], dim=1)
        out = self.trunk(h, key_valid, stop_at_layer=stop_at_layer, return_layers=return_layers)
        P = cfg.prefix_len
        if P == 1:
            return out
        return ARout(None if out.logits is None else out.logits[:, P - 1:],
                     {l: v[:, P - 1:] for l, v in out.hidden.items()})

    def trunk(self, h: torch.Tensor, key_valid: torch.Tensor | None = None, *, pos: int | torch.Tensor = 0,
              cache: list | None = None, mask: torch.Tensor | None = None, stop_at_layer: int | None = None,
              return_layers: tuple[int, ...] = ()) -> ARout:
        """Run the blocks on input embeddings h (B, n, D) that sit at positions pos..pos+n-1.
        key_valid (B, >= pos+n): which positions may be attended (None: all, causal attention).
        cache: per-layer (k, v) static buffers (B, H, total_len, hd) for incremental decoding.
        mask: a boolean may-attend mask over the keys, given with a 0-d tensor `pos` (one token)
        to cover the whole cache (sampling.decode_step)."""
        last = self.cfg.n_layer if stop_at_layer is None else stop_at_layer
        if not 1 <= last <= self.cfg.n_layer or any(not 1 <= l <= last for l in return_layers):
            raise ValueError(f"layers must lie in [1, {last}] (n_layer {self.cfg.n_layer}); got "
                             f"stop_at_layer={stop_at_layer}, return_layers={return_layers}")
        n = h.shape[1]
        if isinstance(pos, torch.Tensor):
            cos, sin = self.rope_cos.index_select(0, pos.view(1)), self.rope_sin.index_select(0, pos.view(1))
        else:
            cos, sin = self.rope_cos[pos:pos + n], self.rope_sin[pos:pos + n]
            if key_valid is not None and mask is None:
                mask = attn_mask(key_valid, n, pos)
        hidden = {}
        recompute = self.grad_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks[:last], start=1):
            if recompute:
                h = torch.utils.checkpoint.checkpoint(block, h, cos, sin, None, pos, mask, use_reentrant=False)
            else:
                h = block(h, cos, sin, None if cache is None else cache[i - 1], pos, mask)
            if i in return_layers or i == stop_at_layer:
                hidden[i] = h
        if stop_at_layer is not None:
            return ARout(None, hidden)
        return ARout(self.head(self.norm(h)), hidden)


class Projector(nn.Module):
    """REPA MLP from AR hidden states to teacher features (with biases, as in REPA)."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 2048):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def repa_loss(proj: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over patches of -cos(proj, target); both (B, L, Dt)."""
    if proj.shape != target.shape:
        raise ValueError(f"repa_loss: projection {tuple(proj.shape)} != target {tuple(target.shape)}")
    return -F.cosine_similarity(proj.float(), target.float(), dim=-1).mean()


def ntp_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy; logits (B, L, K), targets indices (B, L) or a distribution
    (B, L, K) (a one-hot target gives exactly the index CE; its gradient reaches the target)."""
    if targets.dim() == 3:
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1).float())
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def configure_optimizer(model: nn.Module, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, nanoGPT grouping: every >= 2D tensor (linear weights and embedding tables) decays;
    1D tensors (norm gains, projector biases) do not. Pass an nn.ModuleList to cover several
    modules (e.g. AR + projector)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # the fused kernel is one pass over all tensors (CPU and CUDA); same update rule
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
