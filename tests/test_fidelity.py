"""The seven places where our GEAR step was made to match the public release (issue 29 part 1),
each against the formula it must equal (README "Fidelity")."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gear.config import ParamsError, load_params, params_from_dict
from gear.models.ar import GPT, GPTConfig, apply_rope
from gear.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from gear.models.quantizers import ENTROPY_EPS, entropy_penalty, make_quantizer
from gear.teachers import Teacher
from gear.train.ar_objective import build_ar
from gear.train.tokenizer_objective import TokenizerObjective
from tiny import env

ROOT = Path(__file__).resolve().parents[1]


def entropy_formula(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """MAGVIT-v2 / the release: mean per-token entropy - entropy of the mean assignment (log eps)."""
    p = logits.softmax(-1)
    sample = -(p * logits.log_softmax(-1)).sum(-1).mean()
    avg = p.mean(0)
    return sample + (avg * torch.log(avg + eps)).sum()


# ---- 1. the codebook entropy over ranks ----------------------------------------------------------

# Each rank holds half the tokens; logits = x @ W with W shared (a stand-in for the encoder). After
# a backward, W's gradient is averaged over ranks as DDP does. Rank 0 writes value and gradient.
# The same launch runs one discriminator step under DDP with the two forwards (fix 2).
DRIVER = """
import json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from gear.models.discriminator import PatchDiscriminator, hinge_d_loss
from gear.models.quantizers import entropy_penalty
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
x, W = torch.randn(2 * 24, 6), torch.randn(6, 32)
mine = x.chunk(world)[rank]
W.requires_grad_(True)
term = entropy_penalty(mine @ W / 0.3)
term.backward()
grad = W.grad.clone()
dist.all_reduce(grad)
value = term.detach().clone()
dist.all_reduce(value)
local = entropy_penalty(mine @ W.detach() / 0.3, over_ranks=False)  # the per-rank term we had
torch.manual_seed(1)
d = PatchDiscriminator(ch=8, n_layers=2)
real, fake = torch.randn(4, 3, 16, 16).chunk(world)[rank], torch.randn(4, 3, 16, 16).chunk(world)[rank]
ddp = DDP(d)
loss = hinge_d_loss(ddp(real), ddp(fake))
loss.backward()
g = torch.cat([p.grad.flatten() for p in d.parameters()])
gathered = [torch.zeros_like(g) for _ in range(world)]
dist.all_gather(gathered, g)
if rank == 0:
    json.dump({"value": value.item() / world, "grad": (grad / world).tolist(), "local": local.item(),
               "disc_synced": bool(torch.equal(gathered[0], gathered[1])), "disc_finite": bool(g.isfinite().all())},
              open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def test_entropy_term_over_two_ranks_equals_the_full_batch(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "out.json"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run([*torchrun, str(tmp_path / "driver.py"), str(out)], env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())

    torch.manual_seed(0)
    x, W = torch.randn(2 * 24, 6), torch.randn(6, 32)
    W.requires_grad_(True)
    full = entropy_formula(x @ W / 0.3, ENTROPY_EPS)   # one process, the whole batch
    full.backward()
    assert got["value"] == pytest.approx(full.item(), abs=1e-5)
    torch.testing.assert_close(torch.tensor(got["grad"]), W.grad, atol=1e-5, rtol=1e-4)
    # the per-rank term this replaces is a different number: the test can tell them apart
    assert abs(got["local"] - full.item()) > 1e-2
    # the discriminator's two forwards under DDP: one backward, gradients synced over ranks
    assert got["disc_synced"] and got["disc_finite"]


def test_one_process_entropy_term_is_the_formula():
    logits = torch.randn(40, 16, requires_grad=True)
    ours = entropy_penalty(logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = entropy_formula(ref_logits, ENTROPY_EPS)
    torch.testing.assert_close(ours, ref)
    ours.backward(); ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


# ---- 5. the log epsilon --------------------------------------------------------------------------

def test_entropy_log_epsilon_is_the_releases():
    assert ENTROPY_EPS == 1e-5
    # 28 of 32 codes rarely chosen: their mean probability (~1e-6) lies between the two epsilons,
    # where the constant decides the term's value and its gradient (float64: no rounding in the way)
    torch.manual_seed(0)
    logits = torch.full((64, 32), -14.0, dtype=torch.float64)
    logits[:, :4] = torch.randn(64, 4, dtype=torch.float64)
    logits.requires_grad_(True)
    ours = entropy_penalty(logits)
    (g_ours,) = torch.autograd.grad(ours, logits)
    for eps, same in ((1e-5, True), (1e-8, False)):
        ref_logits = logits.detach().clone().requires_grad_(True)
        ref = entropy_formula(ref_logits, eps)
        (g_ref,) = torch.autograd.grad(ref, ref_logits)
        assert torch.allclose(ours, ref, rtol=1e-12, atol=0) is same
        assert torch.allclose(g_ours, g_ref, rtol=1e-9, atol=0) is same


def test_quantizer_entropy_uses_the_term():
    q = make_quantizer("vq", 32, 4, entropy_weight=0.5, entropy_temperature=0.1).train()
    z = torch.randn(2, 4, 3, 3)
    out = q(z)
    torch.testing.assert_close(out.losses["entropy"], 0.5 * entropy_formula(-out.dist.reshape(-1, 32) / 0.1,
                                                                               ENTROPY_EPS))


# ---- 2. the discriminator step: real and fake in two forwards -------------------------------------

def _objective(disc: nn.Module) -> TokenizerObjective:
    p = params_from_dict({"tokenizer": {"perceptual": "none", "gan_weight": 0.1, "gan_start": 0}})
    return TokenizerObjective(p, None, disc, gan_start=0)


def test_discriminator_step_is_two_separate_forwards():
    torch.manual_seed(0)
    disc = PatchDiscriminator(ch=8, n_layers=2)
    ref = copy.deepcopy(disc)
    x, recon = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 1.6 - 0.9
    loss, logs = _objective(disc).discriminator_loss(x, recon)
    loss.backward()

    want = hinge_d_loss(ref(x), ref(recon))   # the release: D(real), then D(fake), each its own batch norm
    want.backward()
    assert loss.item() == pytest.approx(want.item(), abs=1e-7)
    for (name, a), b in zip(disc.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for (name, a), b in zip(disc.named_buffers(), ref.buffers()):   # running stats updated twice, as there
        torch.testing.assert_close(a, b, msg=name)

    mixed = copy.deepcopy(ref)  # what we had: one forward over [real; fake]
    real, fake = mixed(torch.cat([x, recon])).chunk(2)
    assert abs(hinge_d_loss(real, fake).item() - want.item()) > 1e-4


def test_generator_gan_term_is_a_forward_of_the_fakes_alone():
    torch.manual_seed(0)
    disc = PatchDiscriminator(ch=8, n_layers=2)
    ref = copy.deepcopy(disc)
    x, recon = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1

    class Out:  # the tokenizer output fields generator_loss reads
        pass
    out = Out()
    out.recon, out.q = recon, type("Q", (), {"losses": {}})()
    _, logs = _objective(disc).generator_loss(x, out, step=0)
    assert logs["gan_g"].item() == pytest.approx(hinge_g_loss(ref(recon)).item(), abs=1e-7)


# ---- 3. residual and FFN dropout (LlamaGen's places) ---------------------------------------------

def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=16, grid=3, n_layer=2, dim=32, n_head=2, num_classes=4, class_dropout=0.0,
                         token_dropout=0.0, **kw))


def _t2i(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=16, grid=3, n_layer=2, dim=32, n_head=2, text_dim=8, text_len=3,
                         caption_dropout=0.0, token_dropout=0.0, **kw))


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_dropout_sits_where_llamagen_has_it(kind):
    make = _gpt if kind == "c2i" else _t2i
    model = make(resid_dropout=0.3, ffn_dropout=0.2)
    for block in model.blocks:
        assert isinstance(block.attn.resid_drop, nn.Dropout) and block.attn.resid_drop.p == 0.3
        assert isinstance(block.ffn.drop, nn.Dropout) and block.ffn.drop.p == 0.2
    # LlamaGen: resid_dropout(wo(attention)) and ffn_dropout(w2(silu(w1 x) * w3 x)): the dropout
    # modules take exactly the output projections' outputs, and their outputs are the sublayers'
    seen = {}
    block = model.blocks[0]
    for name, mod in (("proj", block.attn.proj), ("down", block.ffn.down), ("attn", block.attn), ("ffn", block.ffn),
                      ("resid_drop", block.attn.resid_drop), ("drop", block.ffn.drop)):
        mod.register_forward_hook(lambda m, i, o, name=name: seen.update({name: (i[0], o)}))
    tokens = torch.randint(0, 16, (2, 9))
    args = (torch.randint(0, 4, (2,)),) if kind == "c2i" else (torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    model.train()
    model(tokens, *args)
    assert seen["resid_drop"][0] is seen["proj"][1] and seen["attn"][1] is seen["resid_drop"][1]
    assert seen["drop"][0] is seen["down"][1] and seen["ffn"][1] is seen["drop"][1]


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_dropout_is_off_in_eval_and_on_in_train(kind):
    make = _gpt if kind == "c2i" else _t2i
    plain, dropped = make(), make(resid_dropout=0.1, ffn_dropout=0.1)
    dropped.load_state_dict(plain.state_dict())   # the dropouts add no weights
    torch.nn.init.normal_(plain.head.weight, std=0.02); dropped.head.weight.data.copy_(plain.head.weight)
    tokens = torch.randint(0, 16, (2, 9))
    args = (torch.randint(0, 4, (2,)),) if kind == "c2i" else (torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    with torch.no_grad():
        assert torch.equal(plain.eval()(tokens, *args).logits, dropped.eval()(tokens, *args).logits)
        torch.manual_seed(1)
        a = plain.train()(tokens, *args).logits
        torch.manual_seed(1)
        b = dropped.train()(tokens, *args).logits
    assert torch.equal(a, plain.eval()(tokens, *args).logits)   # p = 0 in train mode: nothing dropped
    assert not torch.allclose(a, b)


def test_dropout_knobs_reach_every_ar_we_build():
    p = params_from_dict({"ar": {"resid_dropout": 0.1, "ffn_dropout": 0.2}})
    ar, _ = build_ar(p, "tiny", vocab_size=16, grid=3, num_classes=4, teacher_dim=8)   # tune's guide and train-ar
    assert (ar.cfg.resid_dropout, ar.cfg.ffn_dropout) == (0.1, 0.2)
    assert ar.blocks[0].attn.resid_drop.p == 0.1 and ar.blocks[-1].ffn.drop.p == 0.2
    with pytest.raises(ParamsError, match="ar.resid_dropout"):
        params_from_dict({"ar": {"resid_dropout": 1.0}})
    with pytest.raises(ParamsError, match="t2i.ar.ffn_dropout"):
        params_from_dict({"t2i": {"ar": {"ffn_dropout": -0.1}}})
    embedded = load_params(ROOT / "params.yaml")
    assert (embedded.ar.resid_dropout, embedded.ar.ffn_dropout) == (0.0, 0.0)   # the embedded outputs stay


# ---- 4. the class position's query and key are zero, always -------------------------------------

def test_every_class_conditional_gpt_zeroes_the_class_qk():
    p = params_from_dict({})
    ar, _ = build_ar(p, "tiny", vocab_size=16, grid=3, num_classes=4, teacher_dim=8)   # fresh, no checkpoint
    assert ar.cfg.class_qk == "zero" and GPTConfig(8, 2, 1, 16, 1, 2).class_qk == "zero"
    # LlamaGen's RoPE table is zero at the class position: q and k there are zero vectors
    q = torch.randn(5, ar.cfg.head_dim)
    assert not apply_rope(q, ar.rope_cos[0], ar.rope_sin[0]).any()
    assert apply_rope(q, ar.rope_cos[1], ar.rope_sin[1]).abs().sum() > 0
    # so a query's score against the class key is 0: the class value gets weight exp(0) / Z
    # whatever the query; a config written before the rule still reads as it was trained
    old = {k: v for k, v in ar.cfg.to_dict().items() if k != "class_qk"}
    assert GPTConfig.from_dict(old).class_qk == "keep"
    assert GPTConfig.from_dict(ar.cfg.to_dict()).class_qk == "zero"


def test_zero_class_qk_matches_the_attention_formula():
    model = _gpt().eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    labels, tokens = torch.randint(0, 4, (2,)), torch.randint(0, 16, (2, 9))
    seen = {}
    model.blocks[0].attn.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        model(tokens, labels)
        a, x = model.blocks[0].attn, seen["x"]
        B, n, D = x.shape
        q, k, v = a.qkv(x).view(B, n, 3, a.n_head, a.head_dim).permute(2, 0, 3, 1, 4)
        q = apply_rope(q, model.rope_cos, model.rope_sin)
        k = apply_rope(k, model.rope_cos, model.rope_sin)
        q[:, :, 0], k[:, :, 0] = 0, 0     # LlamaGen's zero table at the class position
        w = (q @ k.transpose(-1, -2) / a.head_dim ** 0.5).masked_fill(~torch.ones(n, n).tril().bool(), float("-inf"))
        y = (w.softmax(-1) @ v).transpose(1, 2).reshape(B, n, D)
    torch.testing.assert_close(seen["y"], a.proj(y))


# ---- 6. the teacher's input: normalise, then plain bicubic ---------------------------------------

class _Probe(Teacher):
    def __init__(self):
        super().__init__("probe", dim=3, patch=2, pool_size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize("side", [6, 14])   # shrink and enlarge
def test_teacher_input_is_normalise_then_plain_bicubic(side):
    t = _Probe()
    torch.manual_seed(0)
    images = torch.rand(2, 3, 10, 10) * 2 - 1
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = F.interpolate(((images + 1) / 2 - mean) / std, size=(side, side), mode="bicubic", align_corners=False)
    got = t._prepare(images, side)
    torch.testing.assert_close(got, want)
    # what we had (antialiased when shrinking, clamped to [0, 1], then normalised) differs
    old = F.interpolate((images + 1) / 2, size=(side, side), mode="bicubic", antialias=side < 10).clamp(0, 1)
    assert (got - (old - mean) / std).abs().max() > 1e-3


# ---- 7. the ImageNet preset carries the release's values ---------------------------------------

def test_imagenet_preset_has_the_releases_values():
    p = load_params(ROOT / "presets" / "imagenet256.yaml")
    assert (list(p.ar.betas), p.ar.weight_decay) == ([0.9, 0.999], 0.0)   # the release's stage 2
    assert (p.ar.resid_dropout, p.ar.ffn_dropout, p.ar.token_dropout) == (0.1, 0.1, 0.1)
    assert (p.t2i.ar.resid_dropout, p.t2i.ar.ffn_dropout) == (0.1, 0.1)
    assert (list(p.t2i.ar.betas), p.t2i.ar.weight_decay) == ([0.9, 0.999], 0.0)


# ---- the conformance tool (opt-in): without a checkout, one line ---------------------------------

def test_conformance_without_a_checkout_says_why_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "conformance.py"), "--reference", str(tmp_path)],
                       env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("conformance: ")
    assert "is not a checkout of the GEAR release" in r.stderr
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from conformance import load_reference
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert "no checkout of the release given" in load_reference(None)
