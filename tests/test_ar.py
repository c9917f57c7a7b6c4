"""AR generator, REPA projector/losses and KV-cache sampling (tiny shapes, CPU, fp32)."""
import math

import pytest
import torch

from gear.models.ar import (GPT, GPTConfig, Projector, apply_rope, configure_optimizer, ntp_loss,
                            repa_loss, rope_tables)
from gear.models.sampling import filter_logits, generate

K, GRID, CLASSES = 32, 4, 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes gain nothing from threads, and OpenMP threads stall on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed=0, **kw) -> GPT:
    """A tiny AR with large random weights (sharp attention, non-uniform logits), so that a
    wrong key, position or mask changes the sampled tokens."""
    torch.manual_seed(seed)
    kw = {"n_layer": 3, "dim": 32, "n_head": 2, **kw}
    model = GPT(GPTConfig(vocab_size=K, grid=GRID, num_classes=CLASSES, **kw))
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def gen(seed):
    return torch.Generator().manual_seed(seed)


LABELS = torch.tensor([0, 1, 2, 3, 4, 5, 1, 2])   # 5 = null class (unconditional rows)


def reference_sampler(model: GPT, labels, scale, seed):
    """Independent CFG sampler on the public forward: cond and null run as separate batches."""
    g, B, L = gen(seed), len(labels), model.cfg.seq_len
    out = torch.zeros(B, L, dtype=torch.long)
    null = torch.full_like(labels, model.null_class)
    with torch.no_grad():
        for t in range(L):
            x = out[:, :t + 1]                     # token t is only a target: its value is unused
            c = model(x, labels).logits[:, t]
            logits = c if scale == 1.0 else (u := model(x, null).logits[:, t]) + scale * (c - u)
            out[:, t] = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
    return out


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_generate_matches_reference_cfg(scale):
    model = tiny(seed=1)
    assert torch.equal(generate(model, LABELS, cfg_scale=scale, generator=gen(5)),
                       reference_sampler(model, LABELS, scale, seed=5))


def test_sampling_deterministic_given_generator():
    model = tiny()
    a = generate(model, LABELS, cfg_scale=1.5, generator=gen(11))
    assert torch.equal(a, generate(model, LABELS, cfg_scale=1.5, generator=gen(11)))
    assert not torch.equal(a, generate(model, LABELS, cfg_scale=1.5, generator=gen(12)))
    model.train()
    generate(model, LABELS, generator=gen(1))
    assert model.training                          # mode restored


def test_bf16_sampling_runs():
    out = generate(tiny(), LABELS[:2], cfg_scale=2.0, generator=gen(0), bf16=True)
    assert out.shape == (2, GRID * GRID) and 0 <= out.min() and out.max() < K


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.5, 0.1, 0.3, 0.06, 0.04]]))
    inf = float("-inf")
    assert torch.equal(filter_logits(logits, top_k=2).isinf(), torch.tensor([[False, True, False, True, True]]))
    # top_p 0.75: 0.5 + 0.3 reach it -> keep two; 0.85 needs the third (0.1)
    assert filter_logits(logits, top_p=0.75).isinf().tolist() == [[False, True, False, True, True]]
    assert filter_logits(logits, top_p=0.85).isinf().tolist() == [[False, False, False, True, True]]
    assert filter_logits(logits, top_p=0.01).isinf().sum() == 4     # the best token always stays
    assert torch.allclose(filter_logits(logits, temperature=2.0), logits / 2)
    assert filter_logits(logits, top_k=1, top_p=0.5)[0, 0] != inf


def test_onehot_distribution_equals_indices():
    model = tiny()
    x = torch.randint(0, K, (3, GRID * GRID))
    labels = torch.tensor([0, 2, 5])
    onehot = torch.nn.functional.one_hot(x, K).float()
    a, b = model(x, labels), model(onehot, labels, return_layers=(2,))
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-6)
    assert b.logits.shape == (3, GRID * GRID, K)


def test_early_exit_hidden_equals_full_forward():
    model = tiny()
    x, labels = torch.randint(0, K, (2, GRID * GRID)), torch.tensor([1, 3])
    full = model(x, labels, return_layers=(1, 2, 3))
    for layer in (1, 2, 3):
        early = model(x, labels, stop_at_layer=layer)
        assert early.logits is None and set(early.hidden) == {layer}
        assert torch.equal(early.hidden[layer], full.hidden[layer])
    # position k has seen only the class and tokens < k: changing token k leaves it unchanged
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % K
    h_x, h_y = full.hidden[3], model(y, labels, return_layers=(3,)).hidden[3]
    assert torch.equal(h_x[:, :6], h_y[:, :6]) and not torch.allclose(h_x[:, 6:], h_y[:, 6:])


def test_prefix_forward_matches_full():
    model = tiny()
    x, labels = torch.randint(0, K, (2, GRID * GRID)), torch.tensor([1, 3])
    full = model(x, labels).logits
    torch.testing.assert_close(model(x[:, :7], labels).logits, full[:, :7], rtol=0, atol=1e-5)


@pytest.mark.parametrize("size,target", [("B", 111e6), ("L", 343e6), ("XL", 775e6)])
def test_param_counts(size, target):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_size(size, vocab_size=16384, grid=16, num_classes=1000))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / target - 1) < 0.02, n
    assert model.cfg.head_dim == 64


def test_zero_init_head_gives_uniform_logits():
    model = GPT(GPTConfig(vocab_size=K, grid=GRID, n_layer=2, dim=32, n_head=2, num_classes=CLASSES))
    logits = model(torch.randint(0, K, (2, GRID * GRID)), torch.tensor([0, 1])).logits
    assert torch.equal(logits, torch.zeros_like(logits))
    assert math.isclose(ntp_loss(logits, torch.randint(0, K, (2, GRID * GRID))).item(), math.log(K), rel_tol=1e-6)


def test_class_dropout_only_in_train_mode():
    model = tiny(class_dropout=0.5, token_dropout=0.0)
    B = 64
    x, labels = torch.randint(0, K, (B, GRID * GRID)), torch.randint(0, CLASSES, (B,))
    with torch.no_grad():
        cond = model(x, labels, stop_at_layer=1).hidden[1]
        null = model(x, torch.full_like(labels, CLASSES), stop_at_layer=1).hidden[1]
        assert torch.equal(model(x, labels, stop_at_layer=1).hidden[1], cond)     # eval: no dropout
        model.train()
        torch.manual_seed(0)
        h = model(x, labels, stop_at_layer=1).hidden[1]
    is_cond = (h == cond).flatten(1).all(1)
    is_null = (h == null).flatten(1).all(1)
    assert torch.all(is_cond ^ is_null)
    assert 10 < is_null.sum() < 54


def test_rope_is_relative_in_2d():
    cos, sin = rope_tables(GRID, 8, 10000.0)
    assert not cos[0].any() and not sin[0].any()       # class slot: zero q and k (LlamaGen)
    keep_cos, keep_sin = rope_tables(GRID, 8, 10000.0, "keep")   # old configs: unrotated
    assert torch.equal(keep_cos[0], torch.ones(8)) and torch.equal(keep_sin[0], torch.zeros(8))
    assert torch.equal(keep_cos[1:], cos[1:]) and torch.equal(keep_sin, sin)
    assert torch.equal(sin[1], torch.zeros(8))               # position 1 holds token 0 = (row 0, col 0)
    row_pairs, col_pairs = sin[1 + GRID, :2], sin[1 + GRID, 2:4]     # token GRID = (row 1, col 0)
    assert (row_pairs != 0).all() and (col_pairs == 0).all()
    q, k = torch.randn(8), torch.randn(8)

    def score(i, j):        # positions i, j hold tokens i-1, j-1
        return apply_rope(q, cos[i], sin[i]) @ apply_rope(k, cos[j], sin[j])

    # tokens (0,1)->(1,2) and (2,1)->(3,2): same 2D offset, same score; another offset differs
    at = lambda r, c: 1 + r * GRID + c
    torch.testing.assert_close(score(at(0, 1), at(1, 2)), score(at(2, 1), at(3, 2)))
    assert not torch.isclose(score(at(0, 1), at(1, 2)), score(at(0, 1), at(2, 1)))


def test_tiny_ar_overfits_fixed_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=K, grid=GRID, n_layer=2, dim=64, n_head=2, num_classes=CLASSES))
    opt = configure_optimizer(model, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    x, labels = torch.randint(0, K, (8, GRID * GRID)), torch.randint(0, CLASSES, (8,))
    model.train()
    for _ in range(50):
        loss = ntp_loss(model(x, labels).logits, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = ntp_loss(model(x, labels).logits, x).item()
    assert final < 0.25 * math.log(K), final


def test_optimizer_groups():
    model = tiny()
    opt = configure_optimizer(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_repa_gradients():
    model = tiny()
    proj = Projector(32, 12, hidden=16)
    x, labels = torch.randint(0, K, (2, GRID * GRID)), torch.tensor([0, 1])
    target = torch.randn(2, GRID * GRID, 12)
    loss = repa_loss(proj(model(x, labels, stop_at_layer=2).hidden[2]), target)
    assert -1 <= loss.item() <= 1
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.blocks[2].attn.qkv.weight.grad is None            # early exit: block 3 unused
    # soft branch: frozen AR, gradient reaches the distribution (the tokenizer side)
    model.requires_grad_(False)
    logits = torch.randn(2, GRID * GRID, K, requires_grad=True)
    repa_loss(proj(model(logits.softmax(-1), labels, stop_at_layer=1).hidden[1]), target).backward()
    assert logits.grad.abs().sum() > 0
    assert repa_loss(target, target).item() == pytest.approx(-1.0)


def test_config_roundtrip_and_sizes():
    cfg = GPTConfig.from_size("tiny", vocab_size=512, grid=8, num_classes=10, class_dropout=0.2)
    assert (cfg.n_layer, cfg.dim, cfg.n_head, cfg.class_dropout) == (4, 192, 3, 0.2)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert GPTConfig.from_size("B", 16384, 16, 1000).ffn_hidden == 2048
    assert GPTConfig.from_size("L", 16384, 16, 1000).ffn_hidden == 2816
    with pytest.raises(ValueError, match="unknown keys"):
        GPTConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="head dim"):
        GPTConfig(vocab_size=8, grid=2, n_layer=1, dim=30, n_head=5, num_classes=2)


def test_bad_inputs_raise():
    model = tiny()
    x, labels = torch.randint(0, K, (2, GRID * GRID)), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="sequence length"):
        model(torch.randint(0, K, (2, GRID * GRID + 1)), labels)
    with pytest.raises(ValueError, match="distribution input"):
        model(torch.rand(2, GRID * GRID, K + 1), labels)
    with pytest.raises(ValueError, match="labels"):
        model(x, labels[:1])
    with pytest.raises(ValueError, match="layers"):
        model(x, labels, stop_at_layer=4)
    with pytest.raises(ValueError, match="layers"):
        model(x, labels, stop_at_layer=1, return_layers=(2,))
    with pytest.raises(ValueError, match="labels must be in"):
        generate(model, torch.tensor([0, CLASSES + 1]))
    with pytest.raises(ValueError, match="top_p"):
        generate(model, labels, top_p=0.0)
    with pytest.raises(ValueError, match="cfg_interval"):
        generate(model, labels, cfg_interval=(0.5, 0.2))
    with pytest.raises(ValueError, match="temperature"):
        generate(model, labels, temperature=0.0)
    with pytest.raises(ValueError, match="repa_loss"):
        repa_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 5))


def test_bf16_autocast_train_step():
    model = tiny().train()
    proj = Projector(32, 12, hidden=16)
    x, labels = torch.randint(0, K, (2, GRID * GRID)), torch.tensor([0, 1])
    soft = torch.rand(2, GRID * GRID, K, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels, return_layers=(2,))
        loss = ntp_loss(out.logits, x) + repa_loss(proj(out.hidden[2]), torch.randn(2, GRID * GRID, 12))
        soft_loss = repa_loss(proj(model(soft, labels, stop_at_layer=1).hidden[1]), torch.randn(2, GRID * GRID, 12))
    (loss + soft_loss).backward()
    assert torch.isfinite(loss) and soft.grad.abs().sum() > 0


# ---- both conditions (class labels, captions): the one GPT, sampler and training step --------------

SAMPLING = [
    dict(),
    dict(cfg_scale=2.5),
    dict(cfg_scale=4.0, cfg_interval=(0.25, 0.75), temperature=0.7),
    dict(cfg_scale=1.5, top_k=5, top_p=0.8),
    dict(top_p=0.6, temperature=1.3),
]


@pytest.mark.parametrize("opts", SAMPLING)
def test_kv_cache_equals_recompute(tiny_ar, opts):
    model, cond = tiny_ar.model(), tiny_ar.cond()
    cached = generate(model, *cond, generator=gen(3), use_cache=True, **opts)
    full = generate(model, *cond, generator=gen(3), use_cache=False, **opts)
    assert cached.shape == (8, GRID * GRID) and cached.dtype == torch.long
    assert torch.equal(cached, full)
    assert len(set(map(tuple, cached.tolist()))) > 1       # not a degenerate constant sample


@pytest.mark.parametrize("opts", [SAMPLING[0], SAMPLING[2], SAMPLING[3]])
def test_fixed_shape_decode_step_gives_the_default_tokens(tiny_ar, opts, monkeypatch):
    """The compiled path's step (tensor position, whole cache under a mask), run eagerly."""
    import gear.models.sampling as sampling
    monkeypatch.setattr(sampling, "compiled_decode_step", lambda device: sampling.decode_step)
    model, cond = tiny_ar.model(), tiny_ar.cond()
    default = generate(model, *cond, generator=gen(3), **opts)
    assert torch.equal(generate(model, *cond, generator=gen(3), compile=True, **opts), default)


def test_compiled_decode_step_gives_the_default_tokens(tiny_ar):
    model, cond = tiny_ar.model(seed=4, n_layer=1), tiny_ar.cond(4)
    default = generate(model, *cond, cfg_scale=2.0, generator=gen(9))
    assert torch.equal(generate(model, *cond, cfg_scale=2.0, generator=gen(9), compile=True), default)


def guided_reference(model: GPT, cond, scale, interval, seed):
    """Independent CFG sampler on the public forward (the conditional logits) and the condition's
    null prefix through the trunk: guidance on token t iff lo <= t / L < hi."""
    g, B, L, P = gen(seed), len(cond[0]), model.cfg.seq_len, model.cfg.prefix_len
    null, valid = model.cond(*cond, drop=torch.ones(B, dtype=torch.bool))
    out = torch.zeros(B, L, dtype=torch.long)
    with torch.no_grad():
        for t in range(L):
            x = out[:, :t + 1]                     # token t is only a target: its value is unused
            logits = model(x, *cond).logits[:, t]
            if interval[0] <= t / L < interval[1]:
                h = torch.cat([null, model.tok_emb(x[:, :-1])], dim=1)
                kv = None if valid is None else torch.cat([valid, valid.new_ones(B, t)], dim=1)
                u = model.trunk(h, kv).logits[:, P - 1 + t]
                logits = u + scale * (logits - u)
            out[:, t] = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
    return out


@pytest.mark.parametrize("scale,interval", [(1.0, (0.0, 1.0)), (3.0, (0.0, 1.0)), (3.0, (0.25, 0.75)),
                                            (3.0, (1.0, 1.0))])
def test_generate_matches_reference_cfg_and_interval(tiny_ar, scale, interval):
    model, cond = tiny_ar.model(seed=1), tiny_ar.cond()
    got = generate(model, *cond, cfg_scale=scale, cfg_interval=interval, generator=gen(5))
    torch.testing.assert_close(got, guided_reference(model, cond, scale, interval, seed=5), rtol=0, atol=0)


def test_cfg_interval_limits_guidance(tiny_ar):
    model, cond = tiny_ar.model(seed=2), tiny_ar.cond()
    plain = generate(model, *cond, cfg_scale=1.0, generator=gen(7))
    # guided batch [cond; null] but an empty interval: the conditional rows must be untouched
    assert torch.equal(plain, generate(model, *cond, cfg_scale=3.0, cfg_interval=(1.0, 1.0), generator=gen(7)))
    late = generate(model, *cond, cfg_scale=3.0, cfg_interval=(0.5, 1.0), generator=gen(7))
    L = GRID * GRID
    assert torch.equal(late[:, :L // 2], plain[:, :L // 2]) and not torch.equal(late, plain)


def _fresh(tiny_ar, **kw) -> GPT:
    model = tiny_ar.model(std=0.02, class_dropout=0.0, caption_dropout=0.0, token_dropout=0.0, **kw)
    return model.train()


def _grads(*modules) -> list[torch.Tensor]:
    """Every parameter's gradient (zeros where none reached it: the null caption without dropout)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for m in modules for p in m.parameters()]


def test_grad_checkpointing_gives_the_same_loss_and_gradients(tiny_ar):
    model, cond = _fresh(tiny_ar), tiny_ar.cond(4)
    x = torch.randint(0, K, (4, GRID * GRID))
    grads = []
    for ckpt in (False, True):
        model.grad_checkpointing = ckpt
        model.zero_grad()
        loss = ntp_loss(model(x, *cond).logits, x)
        loss.backward()
        grads.append((loss.detach(), _grads(model)))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


class _Teacher:
    """Teacher features as a fixed function of the image (B, 3, H, W) -> (B, L, 12)."""

    def features(self, x, grid):
        return torch.nn.functional.adaptive_avg_pool2d(x, grid).flatten(2).transpose(1, 2).repeat(1, 1, 4)


def test_grad_accum_equals_one_step_of_the_whole_batch(tiny_ar):
    """k micro-steps of train-ar / t2i-train (gear/train/ar_objective.py) give the loss and
    gradients of one step on the k-times batch."""
    from gear.runtime import Runtime
    from gear.train.ar_objective import accumulate_grads, train_micro_step
    from gear.train.parallel import DataParallel

    rt = Runtime(torch.device("cpu"), precision="fp32")
    dp = DataParallel(rt, fsdp=False)
    model, proj = _fresh(tiny_ar), Projector(32, 12, hidden=16)
    B, k = 8, 4
    batch = (torch.randn(B, 3, 8, 8), torch.randint(0, K, (B, GRID * GRID)), *tiny_ar.cond(B))
    results = []
    for steps in (1, k):
        model.zero_grad(); proj.zero_grad()
        micro = iter([tuple(v[i::steps] for v in batch) for i in range(steps)])
        logs = accumulate_grads(steps, dp, (model, proj),
                                lambda: train_micro_step(model, proj, next(micro), _Teacher(), GRID, 2, 0.5, rt))
        results.append((logs, _grads(model, proj)))
    (one, g_one), (acc, g_acc) = results
    assert set(one) == set(acc) == {"ntp", "align"}
    for name in one:
        torch.testing.assert_close(acc[name], one[name], rtol=1e-5, atol=1e-6)
    for a, b in zip(g_one, g_acc):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    names = [n for n, _ in model.named_parameters()]
    cond_grads = [g for n, g in zip(names, g_one) if n.startswith(model.cond.attr) and not n.endswith("null")]
    assert cond_grads and all(g.abs().sum() > 0 for g in cond_grads)   # the condition's weights learn too
