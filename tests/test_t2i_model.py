"""The caption condition of the one AR (gear/models/ar.py): what must hold exactly for captions
only (the sampler, KV cache, CFG, cfg_interval, compiled decoding, checkpointing and accumulation
are tested for both conditions by the same parametrised tests in tests/test_ar.py)."""
from __future__ import annotations

import json

import pytest
import torch

from gear.io import save_tensors
from gear.models.ar import GPT, GPTConfig, Projector
from gear.models.sampling import generate
from gear.train.ar_objective import ar_loss

CFG = dict(vocab_size=24, grid=3, n_layer=2, dim=32, n_head=2, text_dim=8, text_len=6, caption_dropout=0.0,
           token_dropout=0.0)


def model(**kw) -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(**{**CFG, **kw}))
    with torch.no_grad():  # the head starts at zero (uniform logits): give it weights so logits differ
        m.head.weight.normal_(std=0.5)
    return m.eval()


def captions(B: int, P: int = 6, D: int = 8, lengths=(2, 6, 4)):
    g = torch.Generator().manual_seed(1)
    text = torch.randn(B, P, D, generator=g)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for b in range(B):
        n = lengths[b % len(lengths)]
        mask[b, P - n:] = True                      # left padding: valid positions at the end
        text[b, :P - n] = 0
    return text, mask


def test_logits_shape_and_causality():
    m = model()
    text, mask = captions(3)
    tokens = torch.randint(0, 24, (3, 9))
    out = m(tokens, text, mask, return_layers=(1,))
    assert out.logits.shape == (3, 9, 24) and out.hidden[1].shape == (3, 9, 32)
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 24       # token 5 is input at the position predicting token 6
    out2 = m(changed, text, mask)
    assert torch.equal(out.logits[:, :6], out2.logits[:, :6])  # earlier predictions never see it
    assert not torch.allclose(out.logits[:, 6:], out2.logits[:, 6:])


def test_padded_caption_positions_change_nothing():
    """Pad values are ignored, and so is the amount of padding before a caption."""
    m = model()
    text, mask = captions(3)
    tokens = torch.randint(0, 24, (3, 9))
    ref = m(tokens, text, mask).logits
    noisy = torch.where(mask[..., None], text, torch.randn_like(text) * 5)
    assert torch.equal(m(tokens, noisy, mask).logits, ref)
    # the same captions in a model with a longer prefix (2 more pad positions), same weights
    wide = model(text_len=8)
    sd = {k: v for k, v in m.state_dict().items() if k != "text_emb.null"}
    wide.load_state_dict(sd, strict=False)
    text8 = torch.cat([torch.zeros(3, 2, 8), text], dim=1)
    mask8 = torch.cat([torch.zeros(3, 2, dtype=torch.bool), mask], dim=1)
    torch.testing.assert_close(wide(tokens, text8, mask8).logits, ref, rtol=1e-5, atol=1e-5)


def test_caption_changes_the_prediction():
    m = model()
    text, mask = captions(2, lengths=(6,))
    tokens = torch.randint(0, 24, (2, 9))
    other = text.clone()
    other[:, -1] += 1.0
    assert not torch.allclose(m(tokens, text, mask).logits, m(tokens, other, mask).logits)


def test_caption_dropout_uses_the_null_caption():
    m = model(caption_dropout=0.5).train()
    text, mask = captions(64)
    tokens = torch.randint(0, 24, (64, 9))
    torch.manual_seed(3)
    train_logits = m(tokens, text, mask).logits
    m.eval()
    cond = m(tokens, text, mask).logits
    null, _ = m.cond(text, mask, drop=torch.ones(64, dtype=torch.bool))
    dropped = ~torch.isclose(train_logits, cond).all(-1).all(-1)
    assert 10 < int(dropped.sum()) < 54                     # about half the captions dropped
    assert torch.allclose(null[0], null[1])                 # the null caption ignores the text


def test_loss_falls_and_gradients_reach_the_caption_path():
    torch.manual_seed(0)
    m = GPT(GPTConfig(**CFG)).train()
    proj = Projector(32, 5, hidden=16)
    text, mask = captions(8)
    tokens = torch.randint(0, 24, (8, 9))
    y = torch.randn(8, 9, 5)
    opt = torch.optim.AdamW([*m.parameters(), *proj.parameters()], lr=3e-3)
    losses = []
    for _ in range(30):
        loss, logs = ar_loss(m, proj, tokens, tokens, (text, mask), y, 1, 0.5)
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert m.text_emb.mlp[0].weight.grad.abs().sum() > 0
            assert proj.net[0].weight.grad.abs().sum() > 0
        opt.step()
        losses.append(logs["ntp"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_inputs_are_named():
    m = model()
    text, mask = captions(2)
    with pytest.raises(ValueError, match="text must be"):
        m(torch.zeros(2, 9, dtype=torch.long), text[:, :4], mask[:, :4])
    with pytest.raises(ValueError, match="cfg_scale"):
        generate(m, text, mask, cfg_scale=0.5)
    with pytest.raises(ValueError, match="num_classes .* or text_dim"):
        GPTConfig(**CFG, num_classes=4)


# What the seed's T2IGPT saved (config.json "t2i_gpt" = its T2IConfig; its state-dict keys): a T2I
# AR written before the one-GPT merge loads into the GPT unchanged, and new ones are saved the same.
SEED_T2I_CONFIG = {"vocab_size": 24, "grid": 3, "n_layer": 2, "dim": 32, "n_head": 2, "text_dim": 8, "text_len": 6,
                   "caption_dropout": 0.1, "token_dropout": 0.1, "resid_dropout": 0.0, "ffn_dropout": 0.0,
                   "ffn_multiple": 256, "rope_base": 10000.0, "norm_eps": 1e-5}
SEED_T2I_KEYS = {"text_emb.null", "text_emb.mlp.0.weight", "text_emb.mlp.0.bias", "text_emb.mlp.2.weight",
                 "text_emb.mlp.2.bias", "tok_emb.weight", "norm.weight", "head.weight",
                 *(f"blocks.{i}.{k}" for i in range(2) for k in (
                     "attn_norm.weight", "attn.qkv.weight", "attn.proj.weight", "ffn_norm.weight",
                     "ffn.gate_up.weight", "ffn.down.weight"))}


def test_a_saved_t2i_ar_keeps_loading(tmp_path):
    from gear.t2i.data import load_t2i

    m = model(caption_dropout=0.1, token_dropout=0.1)
    assert m.cfg.to_dict() == SEED_T2I_CONFIG and set(m.state_dict()) == SEED_T2I_KEYS
    save_tensors(tmp_path / "ar.safetensors", m.state_dict())
    (tmp_path / "config.json").write_text(json.dumps({"t2i_gpt": SEED_T2I_CONFIG}))
    loaded, _ = load_t2i(tmp_path)
    assert loaded.cfg.condition == "caption" and loaded.cfg == m.cfg
    text, mask = captions(3)
    tokens = torch.randint(0, 24, (3, 9))
    assert torch.equal(loaded(tokens, text, mask).logits, m.eval()(tokens, text, mask).logits)
