"""GEAR's gradient routing, exactly: which losses reach which parameters (GEAR.md section 2)."""
import copy

import pytest
import torch

from gear.config import params_from_dict
from gear.runtime import Runtime
from gear.models.discriminator import PatchDiscriminator
from gear.train.ar_objective import ar_loss, build_ar
from gear.train.gear_step import (GearKnobs, GearModels, ar_step, frozen, soft_alignment_loss, ste_joint_step,
                                  tokenizer_step)
from gear.train.tokenizer_objective import TokenizerObjective, build_tokenizer

B, RES, DT, CLASSES = 4, 16, 24, 5


def make(quantizer="vq", mode="gear", gan_start=0):
    torch.manual_seed(0)
    p = params_from_dict({
        "quantizer": quantizer, "e2e_mode": mode, "align_layer": 2, "teacher": "demo",
        "data": {"resolution": RES},
        "teachers": {"demo_patch": 4},
        "tokenizer": {"ch": 8, "ch_mult": [1, 2, 2], "z_channels": 16, "norm_groups": 4, "codebook_size": 32,
                      "code_dim": 4, "perceptual": "none", "gan_start": gan_start, "disc_ch": 8, "disc_layers": 1},
        "ar": {"sizes": ["custom"], "custom_layers": 3, "custom_dim": 32, "custom_heads": 2, "projector_hidden": 16},
        "tune": {"ar_size": "custom"},
    })
    tok = build_tokenizer(p)
    ar, proj = build_ar(p, "custom", tok.codebook_size, RES // 4, CLASSES, DT)
    # the AR head is zero-initialised; give it weights so CE gradients are generic
    torch.nn.init.normal_(ar.head.weight, std=0.02)
    disc = PatchDiscriminator(ch=8, n_layers=1)
    models = GearModels(tok, ar, proj, TokenizerObjective(p, None, disc))
    knobs = GearKnobs(mode=mode, tau=0.1, align_weight=0.5, align_weight_ar=0.5, align_layer=2)
    x = torch.rand(B, 3, RES, RES) * 2 - 1
    labels = torch.randint(0, CLASSES, (B,))
    y = torch.randn(B, (RES // 4) ** 2, DT)
    return p, models, knobs, x, labels, y


def grads(module):
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}


def all_zero(g):
    return all(v is None or torch.count_nonzero(v) == 0 for v in g.values())


RT = Runtime(device=torch.device("cpu"), precision="fp32")


@pytest.mark.parametrize("quantizer", ["vq", "lfq", "ibq"])
def test_ntp_and_hard_alignment_never_reach_the_tokenizer(quantizer):
    p, m, k, x, labels, y = make(quantizer)
    out = m.tokenizer(x)
    m.tokenizer.zero_grad(set_to_none=True)
    idx = out.q.indices.detach().flatten(1)
    loss, _ = ar_loss(m.ar, m.projector, idx, idx, labels, y, k.align_layer, k.align_weight_ar)
    loss.backward()
    assert all_zero(grads(m.tokenizer))
    assert not all_zero(grads(m.ar)) and not all_zero(grads(m.projector))


@pytest.mark.parametrize("quantizer", ["vq", "lfq", "ibq"])
def test_soft_alignment_reaches_only_the_tokenizer(quantizer):
    p, m, k, x, labels, y = make(quantizer)
    out = m.tokenizer(x)
    with frozen(m.ar, m.projector):
        loss = soft_alignment_loss(m, k, out.q.dist, labels, y)
        loss.backward()
    assert all(p.grad is None for p in m.ar.parameters())          # incl. the token table E
    assert all(p.grad is None for p in m.projector.parameters())
    g = grads(m.tokenizer)
    enc = {n: v for n, v in g.items() if n.startswith(("encoder.", "quant_conv."))}
    assert enc and all(v is not None for v in enc.values()) and not all_zero(enc)
    if quantizer != "lfq":  # LFQ has no learned codebook
        cb = {n: v for n, v in g.items() if n.startswith("quantize.")}
        assert cb and not all_zero(cb)
    # the decoder cannot see the soft branch
    assert all_zero({n: v for n, v in g.items() if n.startswith(("decoder.", "post_quant_conv."))})
    # frozen() restored the AR's trainability
    assert all(p.requires_grad for p in m.ar.parameters()) and m.ar.training


def test_early_exit_gives_the_full_forward_tokenizer_gradient():
    p, m, k, x, labels, y = make("vq")
    out = m.tokenizer(x)
    with frozen(m.ar, m.projector):
        g_early = torch.autograd.grad(soft_alignment_loss(m, k, out.q.dist, labels, y, early_exit=True),
                                      list(m.tokenizer.encoder.parameters()), retain_graph=True)
        g_full = torch.autograd.grad(soft_alignment_loss(m, k, out.q.dist, labels, y, early_exit=False),
                                     list(m.tokenizer.encoder.parameters()))
    for a, b in zip(g_early, g_full):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_each_step_changes_exactly_its_own_parameters():
    p, m, k, x, labels, y = make("vq", gan_start=0)
    opt_tok = torch.optim.AdamW(m.tokenizer.parameters(), lr=1e-3)
    opt_ar = torch.optim.AdamW([*m.ar.parameters(), *m.projector.parameters()], lr=1e-3)
    ar0, proj0 = (copy.deepcopy(mod.state_dict()) for mod in (m.ar, m.projector))
    # discriminator: its weights (its BatchNorm statistics legitimately see the fake batch)
    disc0 = {n: p.detach().clone() for n, p in m.objective.disc.named_parameters()}
    tok0 = copy.deepcopy(m.tokenizer.state_dict())
    out, logs = tokenizer_step(m, k, opt_tok, x, labels, y, step=0, rt=RT)
    assert "align_soft" in logs
    for before, mod in ((ar0, m.ar), (proj0, m.projector)):
        for n, v in mod.state_dict().items():
            assert torch.equal(v, before[n]), n  # bit-identical after the tokenizer step
    for n, v in m.objective.disc.named_parameters():
        assert torch.equal(v, disc0[n]), n
    assert any(not torch.equal(v, tok0[n]) for n, v in m.tokenizer.state_dict().items() if n.startswith("encoder."))
    tok1 = copy.deepcopy(m.tokenizer.state_dict())
    ar_step(m, k, opt_ar, out.q.indices, labels, y, rt=RT)
    for n, v in m.tokenizer.state_dict().items():
        assert torch.equal(v, tok1[n]), n  # bit-identical after the AR step
    assert any(not torch.equal(v, ar0[n]) for n, v in m.ar.state_dict().items())


def test_ste_mode_sends_the_ntp_loss_into_the_encoder():
    p, m, k, x, labels, y = make("vq", mode="ste")
    out = m.tokenizer(x)
    from gear.models.ar import ntp_loss
    from gear.train.gear_step import soft_assignment

    p_st = soft_assignment(out.q.dist, k.tau, "onehot_st")
    idx = out.q.indices.detach().flatten(1)
    enc = list(m.tokenizer.encoder.parameters())
    m.ar.eval()  # no class / token dropout: the forwards below must be comparable
    # forward: the straight-through one-hot is the index input and the index CE
    logits = m.ar(p_st, labels).logits
    assert torch.equal(logits, m.ar(idx, labels).logits)
    torch.testing.assert_close(ntp_loss(logits, p_st), ntp_loss(logits, idx), rtol=1e-6, atol=0)  # mean order only
    # backward: both paths reach the encoder, through the AR's input and through the CE target
    for name, loss in (("input", ntp_loss(m.ar(p_st, labels).logits, idx)),
                       ("target", ntp_loss(m.ar(idx, labels).logits.detach(), p_st))):
        g = torch.autograd.grad(loss, enc, allow_unused=True, retain_graph=True)
        assert any(v is not None and torch.count_nonzero(v) > 0 for v in g), name
    m.ar.train()
    # and the joint step runs and moves both models
    opt_tok = torch.optim.AdamW(m.tokenizer.parameters(), lr=1e-3)
    opt_ar = torch.optim.AdamW([*m.ar.parameters(), *m.projector.parameters()], lr=1e-3)
    enc0 = copy.deepcopy(m.tokenizer.encoder.state_dict())
    _, logs = ste_joint_step(m, k, opt_tok, opt_ar, x, labels, y, 0, RT)
    assert "ntp" in logs and any(not torch.equal(v, enc0[n]) for n, v in m.tokenizer.encoder.state_dict().items())


def test_onehot_st_variant_is_one_hot_forward_soft_backward():
    from gear.train.gear_step import soft_assignment

    d = torch.randn(2, 3, 3, 7, requires_grad=True)
    p = soft_assignment(d, 0.5, "onehot_st")
    assert torch.equal(p.detach(), torch.nn.functional.one_hot(d.flatten(1, 2).argmin(-1), 7).float())
    w = torch.randn(7)
    (p * w).sum().backward()
    g_st = d.grad.clone(); d.grad = None
    (soft_assignment(d, 0.5, "soft") * w).sum().backward()
    torch.testing.assert_close(g_st, d.grad)
