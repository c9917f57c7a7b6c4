"""The AR's objective, shared by `tune` (AR step) and `train-ar`: the LlamaGen-REPA recipe.

L_AR = CE(next token) + align_weight_ar * (-cos(P(h_l), y)), where h_l is the hidden state after
block l (1-indexed) at the position that predicts token k, and y is teacher patch k.
"""
from __future__ import annotations

from torch import Tensor, nn

from gear.models.ar import GPT, GPTConfig, Projector, ntp_loss, repa_loss


def build_ar(params, size: str, vocab_size: int, grid: int, num_classes: int, teacher_dim: int,
             init: str | None = None, init_key: str | None = None) -> tuple[GPT, Projector]:
    """AR + projector of `size` (the tuning guide and train-ar's AR alike), with ar.*'s dropouts.
    init: a released GPT checkpoint (LlamaGen / GEAR-release layout, or ours) loaded into the AR.
    Every AR zeroes the class position's q/k as LlamaGen does (GPTConfig.class_qk), fresh or
    loaded. The projector always starts fresh."""
    a = params.ar
    cfg = GPTConfig.from_size(size, vocab_size=vocab_size, grid=grid, num_classes=num_classes, params=params,
                              class_dropout=a.class_dropout, token_dropout=a.token_dropout,
                              resid_dropout=a.resid_dropout, ffn_dropout=a.ffn_dropout, class_qk="zero")
    ar = GPT(cfg)
    if init:
        from gear.models.llamagen_gpt import load_gpt

        print(f"ar.init: {load_gpt(ar, init, init_key)}")
    return ar, Projector(cfg.dim, teacher_dim, hidden=a.projector_hidden)


def ar_loss(ar: nn.Module, proj: nn.Module, inputs: Tensor, targets: Tensor, labels: Tensor, y: Tensor | None,
            align_layer: int, align_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """inputs: indices (B, L) or a distribution (B, L, K); targets: indices (B, L) or a
    distribution (B, L, K) (the `ste` mode's straight-through one-hot); y: (B, L, Dt)."""
    use_align = y is not None and align_weight > 0
    out = ar(inputs, labels, return_layers=(align_layer,) if use_align else ())
    ntp = ntp_loss(out.logits, targets)
    logs = {"ntp": ntp.detach()}
    loss = ntp
    if use_align:
        align = repa_loss(proj(out.hidden[align_layer]), y)
        loss = loss + align_weight * align
        logs["align_hard"] = align.detach()
    return loss, logs
