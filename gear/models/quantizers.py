"""Discrete bottlenecks of the tokenizer: VQ (LlamaGen), LFQ (MAGVIT-v2) and IBQ.

Every quantizer maps a latent z (B, C, h, w) to a `QuantOut`. The contract GEAR relies on:
- `dist` (B, h, w, K) float32 is the per-patch distance to every code, differentiable w.r.t. z and
  (VQ, IBQ) the codebook; `indices == dist.argmin(-1)` holds exactly because the indices are
  computed from this very tensor. GEAR's soft branch is softmax(-dist / tau).
- `z_q` carries the code values forward exactly (`embed(indices)` gives the same numbers) and the
  quantizer's own straight-through gradient backward, for the decoder path.
- `losses` are scalars ALREADY WEIGHTED by the quantizer's weights; the tokenizer objective adds
  their sum. Keys are always 'codebook', 'commit', 'entropy' (zero where a term does not apply).
The quantizers run in float32 with autocast off: argmin and softmax over K codes are precision
sensitive, and fp32 keeps `z_q` identical to `embed(indices)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as distributed  # not `dist`: the quantizers' distance tensors are named so
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass
class QuantOut:
    z_q: Tensor              # (B, C, h, w) code values, straight-through gradient to z
    indices: Tensor          # (B, h, w) long
    losses: dict[str, Tensor]  # weighted scalars: codebook, commit, entropy
    dist: Tensor             # (B, h, w, K) float32, differentiable


# log epsilon on the mean assignment: the release's (and MAGVIT-v2's) value, not 1e-8
ENTROPY_EPS = 1e-5


def _mean_over_ranks(avg: Tensor) -> Tensor:
    """The code distribution averaged over all processes (itself when not distributed). Forward:
    the global mean. Backward: the straight-through local path, as the release does: each rank's
    gradient is then world x the global term's gradient through its own tokens, and DDP's mean
    over ranks gives exactly the full-batch gradient (tests/test_fidelity.py). The collective runs
    outside autograd, so the graph holds no distributed op."""
    if not (distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1):
        return avg
    with torch.no_grad():
        total = avg.detach().clone()
        distributed.all_reduce(total)
        total /= distributed.get_world_size()
    return avg + (total - avg).detach()


def entropy_penalty(logits: Tensor, over_ranks: bool = True) -> Tensor:
    """MAGVIT-v2 entropy term: mean per-token entropy minus entropy of the mean assignment.

    Low per-token entropy makes assignments confident; high codebook entropy spreads them over the
    codebook. `logits` is (..., K); the caller applies the temperature. The mean assignment is
    taken over every process's tokens when `over_ranks` (the release: the term then does not
    depend on the GPU count); every process must then call this together, so callers pass
    over_ranks=self.training (evaluation may run on one rank). (softmax and log_softmax both, not
    exp(log_softmax): at temperature 0.01 most exponents underflow to denormals, and a plain exp
    over them measured ~6x slower than the two fused kernels together.)"""
    logits = logits.reshape(-1, logits.shape[-1])
    probs = logits.softmax(-1)
    sample_entropy = -(probs * logits.log_softmax(-1)).sum(-1).mean()
    avg = probs.mean(0)
    if over_ranks:
        avg = _mean_over_ranks(avg)
    codebook_entropy = -(avg * torch.log(avg + ENTROPY_EPS)).sum()
    return sample_entropy - codebook_entropy


def _tokens(z: Tensor, code_dim: int, name: str) -> Tensor:
    """(B, C, h, w) -> float32 (B, h, w, C), checking the channel count."""
    if z.dim() != 4 or z.shape[1] != code_dim:
        raise ValueError(f"{name} quantizer expects a latent (B, {code_dim}, h, w), got {tuple(z.shape)}")
    return z.float().permute(0, 2, 3, 1)


def _channels_first(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


class VectorQuantizer(nn.Module):
    """LlamaGen VQ: learned K x d codebook; with l2_norm, codes and latents lie on the unit sphere
    and dist = |z - e|^2 = 2 - 2 cos. Decoder path: standard straight-through to z."""

    def __init__(self, codebook_size: int, code_dim: int, l2_norm: bool = True, commit_weight: float = 0.25,
                 codebook_weight: float = 1.0, entropy_weight: float = 0.0, entropy_temperature: float = 0.01):
        super().__init__()
        self.codebook_size, self.code_dim, self.l2_norm = codebook_size, code_dim, l2_norm
        self.commit_weight, self.codebook_weight = commit_weight, codebook_weight
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.embedding = nn.Embedding(codebook_size, code_dim)  # name matches LlamaGen checkpoints
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def codebook(self) -> Tensor:
        e = self.embedding.weight.float()
        return F.normalize(e, dim=-1) if self.l2_norm else e

    def forward(self, z: Tensor) -> QuantOut:
        with torch.autocast(z.device.type, enabled=False):
            z = _tokens(z, self.code_dim, "vq")
            e = self.codebook()
            if self.l2_norm:
                z = F.normalize(z, dim=-1)
                dist = 2 - 2 * z @ e.t()
            else:
                dist = z.pow(2).sum(-1, keepdim=True) + e.pow(2).sum(-1) - 2 * z @ e.t()
            indices = dist.argmin(-1)
            e_sel = F.embedding(indices, e)
            losses = {
                "codebook": self.codebook_weight * F.mse_loss(e_sel, z.detach()),
                "commit": self.commit_weight * F.mse_loss(z, e_sel.detach()),
                "entropy": (self.entropy_weight * entropy_penalty(-dist / self.entropy_temperature, self.training)
                            if self.entropy_weight > 0 else dist.new_zeros(())),
            }
            # value = e_sel exactly (z - z.detach() is exactly 0), gradient = identity to z
            z_q = e_sel.detach() + (z - z.detach())
        return QuantOut(_channels_first(z_q), indices, losses, dist)

    def embed(self, indices: Tensor) -> Tensor:
        return _channels_first(F.embedding(indices, self.codebook()))


# LFQ index <-> bits. Bit order "msb": latent channel 0 is the most significant bit (ours on the
# vq16 stack); "lsb": channel i is bit i, i.e. 2^i (Open-MAGVIT2 and the release's LFQ-16).
BIT_ORDERS = ("msb", "lsb")


def _bit_shifts(bits: int, order: str, device) -> Tensor:
    if order not in BIT_ORDERS:
        raise ValueError(f"bit order {order!r}: must be one of {', '.join(BIT_ORDERS)}")
    shifts = torch.arange(bits, device=device)
    return shifts.flip(0) if order == "msb" else shifts


def index_to_bits(indices: Tensor, bits: int, order: str = "msb") -> Tensor:
    """(...) long -> (..., bits) long in {0, 1}; entry c is latent channel c's bit."""
    return (indices.unsqueeze(-1) >> _bit_shifts(bits, order, indices.device)) & 1


class LookupFreeQuantizer(nn.Module):
    """MAGVIT-v2 LFQ: each of d = log2(K) latent channels is quantized to its sign (+1 / -1); the
    K codes are the corners of {-1, +1}^d. dist = |z - corner|^2, whose argmin is the sign code
    (a channel exactly 0 ties; argmin then takes the lower index, i.e. bit 0 = -1). No learned
    codebook: GEAR's soft-branch gradient reaches the encoder only. `bit_order` labels the
    corners (see index_to_bits). Open-MAGVIT2 and the release write their distance as
    -2 <z, corner>; ours differs from it by |z|^2 + d per token, so the argmin, softmax(-dist / tau)
    and the entropy term are the same."""

    def __init__(self, codebook_size: int, commit_weight: float = 0.25, entropy_weight: float = 0.1,
                 entropy_temperature: float = 0.01, bit_order: str = "msb"):
        super().__init__()
        bits = int(round(math.log2(codebook_size)))
        if codebook_size < 2 or 2 ** bits != codebook_size:
            raise ValueError(f"lfq codebook_size = {codebook_size}: must be a power of two >= 2")
        self.codebook_size, self.code_dim = codebook_size, bits
        self.commit_weight, self.entropy_weight, self.entropy_temperature = commit_weight, entropy_weight, entropy_temperature
        self.bit_order = bit_order
        corners = 2.0 * index_to_bits(torch.arange(codebook_size), bits, bit_order).float() - 1.0
        self.register_buffer("corners", corners, persistent=False)  # derived, not a weight

    def forward(self, z: Tensor) -> QuantOut:
        with torch.autocast(z.device.type, enabled=False):
            z = _tokens(z, self.code_dim, "lfq")
            c = self.corners
            dist = z.pow(2).sum(-1, keepdim=True) + self.code_dim - 2 * z @ c.t()
            indices = dist.argmin(-1)
            code = F.embedding(indices, c)
            losses = {
                "codebook": dist.new_zeros(()),
                "commit": self.commit_weight * F.mse_loss(z, code),
                "entropy": (self.entropy_weight * entropy_penalty(-dist / self.entropy_temperature, self.training)
                            if self.entropy_weight > 0 else dist.new_zeros(())),
            }
            z_q = code + (z - z.detach())
        return QuantOut(_channels_first(z_q), indices, losses, dist)

    def embed(self, indices: Tensor) -> Tensor:
        return _channels_first(F.embedding(indices, self.corners))


class IndexBackpropQuantizer(nn.Module):
    """IBQ: index = argmax <z, e_k> (dist = -<z, e_k>). Decoder path: one-hot forward, softmax
    backward over the WHOLE codebook, z_q = (onehot - p).detach() + p) @ E with p = softmax(<z, E>),
    written as E[i] + (p - p.detach()) @ E so the forward value is exactly E[i].
    Losses: codebook |E[i] - sg z|^2 plus IBQ's "double quantization" term |z_q - z|^2 (through
    the soft backward it pulls the whole softmax, and so every code, toward z: this is what keeps
    all codes in use), commitment |z - sg E[i]|^2, entropy penalty on softmax(<z, E> / T).
    The double term has weight 1, as in IBQ (its beta weighs the codebook term and the commitment
    has weight 1: the release's values are codebook_weight 0.25, commit_weight 1.0).
    Codes start N(0, 1) as in the IBQ release: with a tiny uniform init the softmax is flat, the
    encoder gets no decoder gradient and a few large-norm codes win every argmax (collapse)."""

    def __init__(self, codebook_size: int, code_dim: int, commit_weight: float = 0.25, codebook_weight: float = 1.0,
                 entropy_weight: float = 0.0, entropy_temperature: float = 0.01):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.commit_weight, self.codebook_weight = commit_weight, codebook_weight
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.embedding = nn.Embedding(codebook_size, code_dim)  # N(0, 1) init (nn.Embedding's default)

    def forward(self, z: Tensor) -> QuantOut:
        with torch.autocast(z.device.type, enabled=False):
            z = _tokens(z, self.code_dim, "ibq")
            e = self.embedding.weight.float()
            logits = z @ e.t()
            dist = -logits
            indices = dist.argmin(-1)
            e_sel = F.embedding(indices, e)
            p = logits.softmax(-1)
            z_q = e_sel + (p - p.detach()) @ e
            losses = {
                "codebook": self.codebook_weight * F.mse_loss(e_sel, z.detach()) + F.mse_loss(z_q, z),
                "commit": self.commit_weight * F.mse_loss(z, e_sel.detach()),
                "entropy": (self.entropy_weight * entropy_penalty(logits / self.entropy_temperature, self.training)
                            if self.entropy_weight > 0 else dist.new_zeros(())),
            }
        return QuantOut(_channels_first(z_q), indices, losses, dist)

    def embed(self, indices: Tensor) -> Tensor:
        return _channels_first(F.embedding(indices, self.embedding.weight.float()))


def make_quantizer(name: str, codebook_size: int, code_dim: int, l2_norm: bool = True, commit_weight: float = 0.25,
                   codebook_weight: float = 1.0, entropy_weight: float = 0.0,
                   entropy_temperature: float = 0.01, lfq_bit_order: str = "msb") -> nn.Module:
    """Build 'vq' | 'lfq' | 'ibq'. l2_norm applies to vq only; lfq needs code_dim == log2(K)."""
    if codebook_size < 2:
        raise ValueError(f"codebook_size = {codebook_size}: must be >= 2")
    if name == "vq":
        return VectorQuantizer(codebook_size, code_dim, l2_norm, commit_weight, codebook_weight,
                               entropy_weight, entropy_temperature)
    if name == "lfq":
        q = LookupFreeQuantizer(codebook_size, commit_weight, entropy_weight, entropy_temperature, lfq_bit_order)
        if code_dim != q.code_dim:
            raise ValueError(f"lfq code_dim = {code_dim}: must equal log2(codebook_size) = {q.code_dim}")
        return q
    if name == "ibq":
        return IndexBackpropQuantizer(codebook_size, code_dim, commit_weight, codebook_weight,
                                      entropy_weight, entropy_temperature)
    raise ValueError(f"unknown quantizer {name!r}; known: vq, lfq, ibq")
