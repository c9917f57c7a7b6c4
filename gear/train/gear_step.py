"""One GEAR iteration (GEAR.md section 2): the dual hard/soft read-out and its gradient routing.

    tokenizer step : soft p = softmax(-d / tau) -> p @ E -> AR blocks 1..l (early exit, AR frozen,
                     eval mode) -> projector (frozen) -> L_align^s;  loss = L_VQ + lambda L_align^s
    disc step      : hinge loss on the detached reconstruction
    AR step        : hard indices (detached) -> AR (train mode) -> CE + lambda_ar L_align^h

The next-token loss never reaches the tokenizer and the soft alignment never reaches the AR, its
token table E or the projector: the AR parameters are frozen (requires_grad False) while the
tokenizer loss is built, and the AR step consumes detached integer indices.

Modes: `gear` (above), `ste` (the collapsing baseline: no soft step; one joint step on
L_VQ + CE + lambda_ar L_align^h for BOTH the AR and the tokenizer. The tokens are the one-hot of
the hard index with the straight-through gradient of softmax(-d / tau), used twice: as the AR's
input (p @ E) and as the CE target. The target path is the one that lets the tokenizer make its
own tokens predictable by moving them toward what the AR already predicts: the collapse), `none`
(tokenizer frozen; only the AR step: the baseline arm's recipe).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gear.models.ar import repa_loss
from gear.train.ar_objective import ar_loss
from gear.train.parallel import clip_grad_norm
from gear.train.tokenizer_objective import TokenizerObjective, clip_and_step


@dataclass
class GearModels:
    tokenizer: nn.Module   # possibly DDP-wrapped (the tokenizer step's forward)
    ar: nn.Module          # possibly DDP-wrapped or FSDP-sharded (the AR step's forward)
    projector: nn.Module   # likewise
    objective: TokenizerObjective

    @staticmethod
    def core(module: nn.Module) -> nn.Module:
        return getattr(module, "module", module)


@dataclass
class GearKnobs:
    mode: str            # gear | ste | none | continue (tokenizer_step alone: no alignment term)
    tau: float
    align_weight: float  # lambda (tokenizer side)
    align_weight_ar: float
    align_layer: int
    soft_forward: str = "soft"  # soft | onehot_st
    grad_clip: float = 1.0


def soft_assignment(dist: Tensor, tau: float, soft_forward: str = "soft") -> Tensor:
    """(B, h, w, K) distances -> (B, L, K) assignment fed to the AR as p @ E.
    `onehot_st`: one-hot of argmin in the forward pass, gradient of softmax(-d / tau) backward."""
    p = torch.softmax(-dist.flatten(1, 2).float() / tau, dim=-1)
    if soft_forward == "onehot_st":
        hard = F.one_hot(p.argmax(-1), p.shape[-1]).to(p)
        p = hard + (p - p.detach())
    return p


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Eval mode and requires_grad False for the duration; restores both afterwards, on the
    parameters it froze: after a forward, an FSDP module holds other (gathered) parameters, which
    take their flag from these at the next gather."""
    saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in modules]
    for m in modules:
        m.eval().requires_grad_(False)
    try:
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, f in flags:
                p.requires_grad_(f)


def soft_alignment_loss(m: GearModels, k: GearKnobs, dist: Tensor, labels: Tensor, y: Tensor,
                        early_exit: bool = True) -> Tensor:
    """L_align^s through the frozen AR, up to the tap layer only (or the full forward, for tests)."""
    # frozen: no DDP reduction involved (sharded: the forward still gathers the parameters)
    ar, proj = m.core(m.ar), m.core(m.projector)
    p = soft_assignment(dist, k.tau, k.soft_forward)
    if early_exit:
        h = ar(p, labels, stop_at_layer=k.align_layer).hidden[k.align_layer]
    else:
        h = ar(p, labels, return_layers=(k.align_layer,)).hidden[k.align_layer]
    return repa_loss(proj(h), y)


def tokenizer_step(m: GearModels, k: GearKnobs, opt: torch.optim.Optimizer, x: Tensor, labels: Tensor,
                   y: Tensor, step: int, rt) -> tuple[object, dict[str, Tensor]]:
    """Steps 2-3: tokenizer forward (train mode) and its update on L_VQ + lambda L_align^s.
    `rt` supplies the precision contexts (gear.runtime.Runtime)."""
    m.tokenizer.train()
    with rt.conv_autocast():
        out = m.tokenizer(x)
        loss, logs = m.objective.generator_loss(x, out, step)
    if k.mode == "gear" and k.align_weight > 0:
        with frozen(m.core(m.ar), m.core(m.projector)), rt.autocast():
            align = soft_alignment_loss(m, k, out.q.dist, labels, y)
        loss = loss + k.align_weight * align
        logs["align_soft"] = align.detach()
    logs["loss_tokenizer"] = loss.detach()
    logs["grad_norm_tokenizer"] = clip_and_step(loss, opt, k.grad_clip)
    return out, logs


def ar_step(m: GearModels, k: GearKnobs, opt: torch.optim.Optimizer, indices: Tensor, labels: Tensor, y: Tensor,
            rt) -> dict[str, Tensor]:
    """Step 5: AR (train mode) on the detached hard indices: CE + lambda_ar L_align^h."""
    m.ar.train(); m.projector.train()
    idx = indices.detach().flatten(1)
    with rt.autocast():
        loss, logs = ar_loss(m.ar, m.projector, idx, idx, labels, y, k.align_layer, k.align_weight_ar)
    logs["grad_norm_ar"] = clip_and_step(loss, opt, k.grad_clip)
    return logs


def ste_joint_step(m: GearModels, k: GearKnobs, opt_tok: torch.optim.Optimizer, opt_ar: torch.optim.Optimizer,
                   x: Tensor, labels: Tensor, y: Tensor, step: int, rt) -> tuple[object, dict[str, Tensor]]:
    """`ste` mode: the AR reads one-hot(i) with a straight-through gradient to softmax(-d / tau)
    and is scored against that same straight-through one-hot (forward values: exactly the index
    input and the index CE); CE + lambda_ar L_align^h + L_VQ are minimised jointly by the
    tokenizer and the AR."""
    m.tokenizer.train(); m.ar.train(); m.projector.train()
    with rt.conv_autocast():
        out = m.tokenizer(x)
        loss_vq, logs = m.objective.generator_loss(x, out, step)
    with rt.autocast():
        p_st = soft_assignment(out.q.dist, k.tau, "onehot_st")
        loss_ar, logs_ar = ar_loss(m.ar, m.projector, p_st, p_st, labels, y, k.align_layer, k.align_weight_ar)
    loss = loss_vq + loss_ar
    opt_tok.zero_grad(set_to_none=True); opt_ar.zero_grad(set_to_none=True)
    loss.backward()
    for opt, name in ((opt_tok, "tokenizer"), (opt_ar, "ar")):
        params = [p for g in opt.param_groups for p in g["params"]]
        logs[f"grad_norm_{name}"] = clip_grad_norm(params, k.grad_clip).detach()
        opt.step()
    logs.update(logs_ar)
    logs["loss_tokenizer"] = loss.detach()
    return out, logs
