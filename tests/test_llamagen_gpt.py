"""Released LlamaGen / GEAR-release c2i GPT checkpoints load into our GPT with identical logits.

The reference below is a small re-implementation of LlamaGen's published c2i Transformer
(autoregressive/models/gpt.py): its parameter names and shapes, RMSNorm computed in float32,
2D RoPE on interleaved pairs with a zero row at the class position, SwiGLU, a class-token
prefix. Dropouts are left out: the comparison runs in eval mode, where they are identities.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
import torch
import yaml

from gear import cli
from gear.io import ArtifactError, load_tensors
from gear.models.ar import GPT, GPTConfig
from gear.models.llamagen_gpt import from_llamagen, load_gpt, to_llamagen
from gear.models.sampling import generate
from public_layouts import RefTransformer as PublicGPT
from tiny import ar_world, build_ar_world

VOCAB, GRID, LAYERS, DIM, HEADS, CLASSES = 32, 4, 2, 64, 4, 5


def RefTransformer(classes=CLASSES) -> PublicGPT:
    """LlamaGen's published c2i Transformer (tests/public_layouts.py) at this module's shape."""
    return PublicGPT(VOCAB, GRID, LAYERS, DIM, HEADS, classes)


# ---- tests ---------------------------------------------------------------------------------

def reference(seed=0) -> RefTransformer:
    torch.manual_seed(seed)
    ref = RefTransformer().eval()
    with torch.no_grad():  # nothing zero-initialised: every tensor must reach the logits
        for p in ref.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)  # norm gains: not all ones
    return ref


def ours_cfg(**kw) -> GPTConfig:
    return GPTConfig(vocab_size=VOCAB, grid=GRID, n_layer=LAYERS, dim=DIM, n_head=HEADS, num_classes=CLASSES,
                     class_dropout=0.0, token_dropout=0.0, class_qk="zero", **kw)


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, GRID * GRID), generator=g)
    labels = torch.randint(0, CLASSES + 1, (n,), generator=g)  # includes the null class
    return tokens, labels


def test_published_layout_gives_identical_logits_and_round_trips():
    ref = reference()
    sd = ref.state_dict()
    assert "layers.1.attention.wqkv.weight" in sd and "cls_embedding.embedding_table.weight" in sd
    assert "layers.0.feed_forward.w3.weight" in sd and "output.weight" in sd
    cfg = ours_cfg()
    model = GPT(cfg).eval()
    model.load_state_dict(from_llamagen(sd, cfg), strict=True)
    tokens, labels = batch()
    with torch.no_grad():
        want = ref(tokens[:, :-1], labels)
        got = model(tokens, labels).logits
    diff = (want - got).abs().max().item()
    print(f"max |logits diff| = {diff:.3g} (logits scale {want.abs().max().item():.3g})")
    assert want.abs().max() > 1 and diff < 1e-4

    back = to_llamagen(model.state_dict(), cfg)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)

    # The KV-cache sampler uses the same tables: cached and uncached decoding agree.
    g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
    y = torch.arange(CLASSES)
    a = generate(model, y, cfg_scale=1.5, generator=g1, use_cache=True)
    b = generate(model, y, cfg_scale=1.5, generator=g2, use_cache=False)
    assert torch.equal(a, b)


def test_class_position_rule_is_why_class_qk_exists():
    """LlamaGen zeroes the class token's q and k; our default keeps them. Measured, and refused."""
    ref = reference()
    cfg = ours_cfg()
    converted = from_llamagen(ref.state_dict(), cfg)
    keep = GPT(ours_cfg().__class__(**{**cfg.to_dict(), "class_qk": "keep"})).eval()
    keep.load_state_dict(converted)
    tokens, labels = batch()
    with torch.no_grad():
        diff = (ref(tokens[:, :-1], labels) - keep(tokens, labels).logits).abs().max().item()
    assert diff > 1e-2  # the same weights under the other class rule give other logits
    with pytest.raises(ArtifactError, match="class_qk='zero'"):
        from_llamagen(ref.state_dict(), keep.cfg)
    with pytest.raises(ArtifactError, match="class_qk='zero'"):
        to_llamagen(keep.state_dict(), keep.cfg)


def test_load_gpt_unwraps_release_files_and_names_mismatches(tmp_path):
    ref, raw = reference(0), reference(1)
    extra = {"projector.net.0.weight": torch.zeros(4, DIM)}  # a REPA projector saved beside the GPT
    path = tmp_path / "gear_stage1.pt"
    torch.save({"model": {**raw.state_dict(), **extra}, "ema": {"module." + k: v for k, v in ref.state_dict().items()},
                "vq": {"encoder.conv_in.weight": torch.zeros(1)}, "steps": 10}, path)
    model = GPT(ours_cfg()).eval()
    info = load_gpt(model, path)
    assert "[ema]" in info and "LlamaGen layout" in info
    tokens, labels = batch()
    with torch.no_grad():
        assert (model(tokens, labels).logits - ref(tokens[:, :-1], labels)).abs().max() < 1e-4
    assert "1 tensors outside the GPT" in load_gpt(model, path, key="model")

    with pytest.raises(ArtifactError, match=r"ar.init_key = 'vq_ema'.*top-level keys: ema, model, steps, vq"):
        load_gpt(model, path, key="vq_ema")
    with pytest.raises(ArtifactError, match="holds no GPT"):
        load_gpt(model, path, key="vq")
    wide = GPT(GPTConfig(**{**ours_cfg().to_dict(), "dim": 128})).eval()
    with pytest.raises(ArtifactError, match=r"embedding_table.weight is \(6, 64\).*needs cls_emb.weight \(6, 128\)"
                                            r".*\(2 layers, dim 64\), vocab 32, 5 classes"):
        load_gpt(wide, path)
    deep = GPT(GPTConfig(**{**ours_cfg().to_dict(), "n_layer": 3})).eval()
    with pytest.raises(ArtifactError, match="no layers.2.attention_norm.weight"):
        load_gpt(deep, path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_gpt(model, tmp_path / "absent.pt")


def test_train_ar_imports_a_released_checkpoint_unchanged(tmp_path, monkeypatch):
    """`ar.init` + `ar.steps: 0`: train-ar writes the released weights as they are, for sample /
    evaluate; a size that does not fit is one line, exit 2, nothing written."""
    raw = ar_world("data.embedded_train_per_class=4", "data.embedded_val_per_class=2",
                   f"tokenizer.codebook_size={VOCAB}", f"ar.custom_layers={LAYERS}", f"ar.custom_dim={DIM}",
                   f"ar.custom_heads={HEADS}", "ar.projector_hidden=16", "ar.steps=4", "ar.batch_size=8",
                   "ar.warmup_steps=1", "sample.per_class=1", "sample.batch_size=16")
    build_ar_world(tmp_path, raw, "baseline")
    monkeypatch.chdir(tmp_path)
    classes = 16  # the embedded set
    torch.manual_seed(0)
    ref = RefTransformer(classes=classes).eval()
    torch.save({"model": ref.state_dict()}, tmp_path / "c2i_custom.pt")
    base = ["--params", "params.yaml", "--set", "ar.init=c2i_custom.pt", "--set", "ar.steps=0"]

    assert cli.main(["train-ar", "--arm", "baseline", "--size", "custom", *base]) == 0
    (folder,) = glob.glob("models/ar/**/ar.safetensors", recursive=True)
    cfg = yaml.safe_load(open(Path(folder).parent / "config.json"))
    assert cfg["gpt"]["class_qk"] == "zero" and cfg["init"] == "c2i_custom.pt"
    saved = load_tensors(folder)
    want = from_llamagen(ref.state_dict(), GPTConfig.from_dict(cfg["gpt"]))
    assert all(torch.equal(saved[k], want[k]) for k in want)
    assert cli.main(["sample", "--arm", "baseline", "--size", "custom", *base]) == 0

    before = {p: os.path.getmtime(p) for p in glob.glob("models/**", recursive=True)}
    assert cli.main(["train-ar", "--arm", "baseline", "--size", "custom", *base, "--set", "ar.custom_dim=128",
                     "--set", "ar.custom_heads=4"]) == 2
    assert before == {p: os.path.getmtime(p) for p in glob.glob("models/**", recursive=True)}
