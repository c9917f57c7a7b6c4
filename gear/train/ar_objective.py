"""The AR's objective and its training step, shared by `tune` (AR step), `train-ar` and
`t2i-train`: the LlamaGen-REPA recipe, for either condition (class or caption).

L_AR = CE(next token) + align_weight * (-cos(P(h_l), y)), where h_l is the hidden state after
block l (1-indexed) at the position that predicts token k, and y is teacher patch k.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
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


def ar_loss(ar: nn.Module, proj: nn.Module, inputs: Tensor, targets: Tensor, cond: Tensor | tuple[Tensor, ...],
            y: Tensor | None, align_layer: int, align_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """inputs: indices (B, L) or a distribution (B, L, K); targets: indices (B, L) or a
    distribution (B, L, K) (the `ste` mode's straight-through one-hot); cond: class labels (B,),
    or (text, mask) of captions; y: (B, L, Dt)."""
    use_align = y is not None and align_weight > 0
    cond = cond if isinstance(cond, tuple) else (cond,)
    out = ar(inputs, *cond, return_layers=(align_layer,) if use_align else ())
    ntp = ntp_loss(out.logits, targets)
    logs = {"ntp": ntp.detach()}
    loss = ntp
    if use_align:
        align = repa_loss(proj(out.hidden[align_layer]), y)
        loss = loss + align_weight * align
        logs["align_hard"] = align.detach()
    return loss, logs


def train_micro_step(fwd: nn.Module, proj: nn.Module, batch, teacher, grid: int, align_layer: int,
                     align_weight: float, rt) -> tuple[Tensor, dict[str, Tensor]]:
    """(loss, logs named as the training metrics) of one micro-batch (image, tokens, *condition)
    of train-ar / t2i-train: teacher targets of the image computed online, ar_loss under autocast."""
    x, tokens, *cond = (v.to(rt.device, non_blocking=True) for v in batch)
    y = None
    if align_weight > 0:
        with torch.no_grad():
            y = teacher.features(x, grid)
    with rt.autocast():
        loss, logs = ar_loss(fwd, proj, tokens, tokens, tuple(cond), y, align_layer, align_weight)
    return loss, {("align" if k == "align_hard" else k): v for k, v in logs.items()}


def accumulate_grads(k: int, dp, wrapped: tuple[nn.Module, ...],
                     micro_step: Callable[[], tuple[Tensor, dict[str, Tensor]]]) -> dict[str, Tensor]:
    """Gradients of one optimizer step from k micro-steps: backward of loss / k each, gradients
    synchronised across processes on the last one only (no_sync before). Returns the mean logs."""
    sums: dict[str, Tensor] = {}
    for i in range(k):
        with dp.no_sync(*wrapped) if i < k - 1 else contextlib.nullcontext():
            loss, logs = micro_step()
            (loss / k).backward()
        for name, v in logs.items():
            sums[name] = sums.get(name, 0.0) + v.float() / k
    return sums


def first_rows(batches: Iterator[tuple[Tensor, ...]], limit: int) -> list[Tensor]:
    """The first `limit` rows of each field of a stream of batches (the val set of val_ntp): the
    stream is read no further than they need."""
    parts, n = [], 0
    for batch in batches:
        parts.append(batch)
        n += len(batch[0])
        if n >= limit:
            break
    return [torch.cat(p)[:limit] for p in zip(*parts)]


@torch.no_grad()
def val_ntp(model: nn.Module, tokens: Tensor, cond: tuple[Tensor, ...], rt, batch: int = 128) -> float:
    """Mean next-token CE over all val tokens (B, L) under their condition (eval mode); each
    process takes every world-th batch. Every process runs the same number of forwards (FSDP
    gathers parameters in each): one without a batch left repeats the first and drops the result."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=rt.device)
    batches = -(-len(tokens) // batch)
    for i in range(rt.rank, -(-batches // rt.world) * rt.world, rt.world):
        s = i * batch if i < batches else 0
        t = tokens[s:s + batch]
        with rt.autocast():
            logits = model(t, *(c[s:s + batch] for c in cond)).logits
        if i < batches:
            ce = F.cross_entropy(logits.flatten(0, 1).float(), t.flatten(), reduction="sum")
            total += torch.stack([ce.double(), torch.tensor(float(t.numel()), dtype=torch.float64, device=rt.device)])
    if rt.distributed:
        torch.distributed.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()
