"""The registry of tokenizer architectures (tokenizer.arch: vq16 | lfq16 | ibq16), tiny shapes.

Each public layout is written out from the public code, independently of our modules
(tests/public_layouts.py): Open-MAGVIT2's improved_model.py (the release's models/lfq_model.py) for
lfq16, taming's autoencoder as the IBQ release builds it (models/ibq_model.py) for ibq16, LlamaGen's
VQModel for vq16. A state dict with exactly those names and shapes, wrapped as each public
file is, must load strictly into our model of that arch, and be refused by the others in one line.
"""
import copy

import pytest
import torch

from gear.config import params_from_dict
from gear.io import ArtifactError
from gear.models.llamagen import load_tokenizer_state
from gear.models.magvit2 import AdaptiveGroupNorm, depth_to_space
from gear.models.quantizers import index_to_bits
from gear.models.tokenizer import ARCHS, Tokenizer, TokenizerConfig
from gear.runtime import Runtime
from gear.train.ar_objective import build_ar
from gear.train.gear_step import GearKnobs, GearModels, ar_step, frozen, soft_alignment_loss, tokenizer_step
from gear.train.tokenizer_objective import TokenizerObjective, build_tokenizer
from gear.models.discriminator import PatchDiscriminator
from public_layouts import (Layout, lightning_file, llamagen_layout, magvit2_layout, random_state,
                            release_file, vqgan_layout)

# one small config per arch, in the public code's terms: 32 groups as published, ch 32, 2 levels
CH, MULT, RES, K = 32, (1, 2), 16, 64
QUANT = {"vq16": "vq", "lfq16": "lfq", "ibq16": "ibq"}


def config(arch: str) -> TokenizerConfig:
    common = dict(arch=arch, quantizer=QUANT[arch], ch=CH, ch_mult=list(MULT), norm_groups=32, codebook_size=K)
    if arch == "vq16":   # LlamaGen: num_res_blocks 2 (decoder 3), z 32 -> codes 8
        return TokenizerConfig(**common, enc_res_blocks=2, dec_res_blocks=3, z_channels=32, code_dim=8)
    if arch == "lfq16":  # Open-MAGVIT2: num_res_blocks 2 on both sides, z = log2 K = 6
        return TokenizerConfig(**common, enc_res_blocks=2, dec_res_blocks=2, z_channels=6, code_dim=6,
                               attn_lowest=False)
    return TokenizerConfig(**common, enc_res_blocks=2, dec_res_blocks=3, z_channels=16, code_dim=16)  # IBQ: 2 / 2 + 1


def public_layout(arch: str) -> Layout:
    if arch == "vq16":
        return Layout(llamagen_layout(CH, MULT, 2, 32, 8, K))
    if arch == "lfq16":
        return magvit2_layout(CH, MULT, 2, 6)
    return vqgan_layout(CH, MULT, 2, 16, 16, K, RES, attn_resolutions=(RES // 2,))


# ---------------------------------------------------------------------------------------------- layouts and loading


@pytest.mark.parametrize("arch", list(ARCHS))
def test_our_modules_carry_the_public_names_and_shapes(arch):
    ours = {k: tuple(v.shape) for k, v in Tokenizer(config(arch)).state_dict().items()}
    public = dict(public_layout(arch))
    public.pop("quantize.codebook_used", None)  # LlamaGen's usage log: dropped on load, not a weight
    assert ours == public


@pytest.mark.parametrize("arch,wrap", [("vq16", "model"), ("vq16", "release"), ("lfq16", "lightning"),
                                       ("lfq16", "release"), ("ibq16", "lightning"), ("ibq16", "release")])
def test_public_files_load_strictly_with_their_wrappings(arch, wrap, tmp_path):
    layout = public_layout(arch)
    live, ema = random_state(layout, 1), random_state(layout, 2)
    obj = {"model": live} if wrap == "model" else (lightning_file if wrap == "lightning" else release_file)(live, ema)
    torch.save(obj, tmp_path / "public.pt")
    model = load_tokenizer_state(Tokenizer(config(arch)), tmp_path / "public.pt")
    want = live if wrap == "model" else ema  # the originals' LitEma and the release's vq_ema come first
    got = model.state_dict()
    assert set(got) <= set(want) and all(torch.equal(got[k], want[k]) for k in got)
    if wrap == "release":  # the raw weights on request
        got = load_tokenizer_state(Tokenizer(config(arch)), obj, key="vq").state_dict()
        assert all(torch.equal(got[k], live[k]) for k in got)


def test_an_original_lightning_ckpt_is_a_tokenizer_init(tmp_path):
    # tokenizer.init takes the originals' .ckpt files; the warm-up starts from their EMA weights
    layout = public_layout("lfq16")
    live, ema = random_state(layout, 1), random_state(layout, 2)
    torch.save(lightning_file(live, ema), tmp_path / "pretrain256_16384.ckpt")
    p = params_from_dict({"quantizer": "lfq", "data": {"resolution": RES}, "teachers": {"demo_patch": 2},
                          "ablations": {"quantizer": ["lfq"]},
                          "tokenizer": {"arch": "lfq16", "ch": CH, "ch_mult": list(MULT), "enc_res_blocks": 2,
                                        "dec_res_blocks": 2, "norm_groups": 32, "codebook_size": K,
                                        "init": str(tmp_path / "pretrain256_16384.ckpt")}})
    got = build_tokenizer(p, p.tokenizer.init).state_dict()
    assert all(torch.equal(got[k], ema[k]) for k in got) and set(got) == set(ema)


def test_lightning_loader_keeps_buffers_live_and_refuses_a_file_without_tokenizer_shadows():
    layout = public_layout("ibq16")
    live, ema = random_state(layout, 1), random_state(layout, 2)
    f = lightning_file(live, {k: v for k, v in ema.items() if k != "quantize.embedding.weight"})
    got = load_tokenizer_state(Tokenizer(config("ibq16")), f).state_dict()
    assert torch.equal(got["quantize.embedding.weight"], live["quantize.embedding.weight"])  # no shadow: live
    assert torch.equal(got["encoder.conv_in.weight"], ema["encoder.conv_in.weight"])
    bare = lightning_file(live, {})
    with pytest.raises(ArtifactError, match="none for its tokenizer tensors"):
        load_tokenizer_state(Tokenizer(config("ibq16")), bare)


@pytest.mark.parametrize("have,want", [(h, w) for h in ARCHS for w in ARCHS if h != w])
def test_a_file_of_another_arch_is_refused_in_one_line_naming_both(have, want):
    sd = random_state(public_layout(have), 0)
    with pytest.raises(ArtifactError) as e:
        load_tokenizer_state(Tokenizer(config(want)), {"vq": sd})
    msg = str(e.value)
    assert "\n" not in msg and f"is a {have} tokenizer" in msg and f"tokenizer.arch = {want}" in msg
    assert f"set tokenizer.arch: {have}" in msg


def test_a_mismatch_within_an_arch_names_the_tensor_and_what_the_file_fits():
    sd = random_state(magvit2_layout(CH, MULT, 3, 6), 0)  # 3 res blocks where the params say 2
    with pytest.raises(ArtifactError) as e:
        load_tokenizer_state(Tokenizer(config("lfq16")), sd)
    msg = str(e.value)
    assert "\n" not in msg and "unexpected" in msg
    assert "it fits quantizer=lfq tokenizer.codebook_size=64" in msg and "enc_res_blocks=3" in msg
    assert msg.endswith("tokenizer.arch=lfq16")


# ---------------------------------------------------------------------------------------------- full size


@pytest.mark.parametrize("arch,layout,lo,hi", [
    ("lfq16", lambda: magvit2_layout(128, (1, 1, 2, 2, 4), 4, 14), 110e6, 120e6),
    ("ibq16", lambda: vqgan_layout(128, (1, 1, 2, 2, 4), 4, 256, 256, 16384, 256, (16,)), 105e6, 115e6),
])
def test_release_configs_match_the_published_layouts(arch, layout, lo, hi):
    cfg = TokenizerConfig.release_lfq16() if arch == "lfq16" else TokenizerConfig.release_ibq16()
    with torch.device("meta"):
        model = Tokenizer(cfg)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == dict(layout())
    assert lo < sum(p.numel() for p in model.parameters()) < hi


# ---------------------------------------------------------------------------------------------- the interface


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_encode_decode_shapes_and_the_codebook_interface(arch):
    torch.manual_seed(0)
    cfg = config(arch)
    tok = Tokenizer(cfg).eval()
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    grid = tok.grid_size(RES)
    z_pre, q = tok.encode(x)
    assert grid == RES // 2 and z_pre.shape == (2, cfg.code_dim, grid, grid)
    assert q.dist.shape == (2, grid, grid, K) and q.dist.dtype == torch.float32
    assert torch.equal(q.indices, q.dist.argmin(-1))
    assert torch.equal(q.z_q, tok.quantize.embed(q.indices))  # the hard code, exactly
    recon = tok.decode(q.z_q)
    assert recon.shape == x.shape
    assert torch.equal(tok.decode_indices(q.indices.flatten(1)), recon)
    out = tok(x)
    assert torch.equal(out.recon, recon) and set(out.q.losses) == {"codebook", "commit", "entropy"}


def test_lfq16_indices_are_open_magvit2s_bit_packing():
    # the release: index = sum_i 2^i [z_i > 0] (channel i is bit i), zeros map to -1
    tok = Tokenizer(config("lfq16"))
    z = torch.randn(3, 6, 2, 2)
    z[0, 2, 0, 0] = 0.0
    q = tok.quantize(z)
    want = ((z > 0).long() * (2 ** torch.arange(6)).view(1, 6, 1, 1)).sum(1)
    assert torch.equal(q.indices, want)
    assert torch.equal(q.z_q, torch.where(z > 0, 1.0, -1.0))
    # vq16's LFQ keeps its order (channel 0 the top bit); both orders give back the index
    idx, weight = torch.arange(64), 2 ** torch.arange(6)
    assert torch.equal((index_to_bits(idx, 6, "lsb") * weight).sum(-1), idx)
    assert torch.equal((index_to_bits(idx, 6, "msb") * weight.flip(0)).sum(-1), idx)
    assert torch.equal(index_to_bits(torch.tensor(1), 6, "lsb"), torch.tensor([1, 0, 0, 0, 0, 0]))
    assert torch.equal(index_to_bits(torch.tensor(1), 6, "msb"), torch.tensor([0, 0, 0, 0, 0, 1]))


def test_depth_to_space_is_the_dcr_order():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).view(2, 8, 3, 3)
    y = depth_to_space(x)
    # output (c, 2h + r, 2w + s) reads input channel (r * 2 + s) * C + c at (h, w)
    for r in range(2):
        for s in range(2):
            assert torch.equal(y[:, :, r::2, s::2], x[:, (r * 2 + s) * 2:(r * 2 + s + 1) * 2])


def test_adaptive_group_norm_is_conditioned_on_the_codes_statistics():
    # gn(x) * gamma(sqrt(var_unbiased(style) + eps)) + beta(mean(style)), statistics over positions
    torch.manual_seed(0)
    norm = AdaptiveGroupNorm(z_channels=6, channels=8, groups=4)
    x, style = torch.randn(2, 8, 4, 4), torch.randn(2, 6, 3, 3) * 3 + 1
    s = style.flatten(2)
    scale = s.var(-1, correction=1).add(1e-6).sqrt() @ norm.gamma.weight.t() + norm.gamma.bias
    shift = s.mean(-1) @ norm.beta.weight.t() + norm.beta.bias
    want = torch.nn.functional.group_norm(x, 4, eps=1e-6) * scale[..., None, None] + shift[..., None, None]
    torch.testing.assert_close(norm(x, style), want)


def test_ibq_losses_are_the_releases_at_its_weights():
    # IBQ's quant loss: |z_q - z|^2 + |sg E[i] - z|^2 + beta |E[i] - sg z|^2 (beta on the codebook term)
    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig(**{**config("ibq16").to_dict(), "commit_weight": 1.0, "codebook_weight": 0.25}))
    z = torch.randn(2, 16, 3, 3)
    q = tok.quantize(z)
    e = tok.quantize.embedding.weight
    logits = torch.einsum("bdhw,nd->bnhw", z, e)
    hard = torch.nn.functional.one_hot(logits.argmax(1), K).permute(0, 3, 1, 2).float()
    soft = logits.softmax(1)
    z_q = torch.einsum("bnhw,nd->bdhw", hard - soft.detach() + soft, e)
    z_q2 = torch.einsum("bnhw,nd->bdhw", hard, e)
    want = ((z_q - z) ** 2).mean() + ((z_q2.detach() - z) ** 2).mean() + 0.25 * ((z_q2 - z.detach()) ** 2).mean()
    got = q.losses["codebook"] + q.losses["commit"]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q.z_q, z_q2, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- a GEAR step on each


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_tiny_gear_step_runs_on_every_arch(arch):
    torch.manual_seed(0)
    classes, dt = 5, 24
    p = params_from_dict({
        "quantizer": QUANT[arch], "e2e_mode": "gear", "align_layer": 2, "teacher": "demo",
        "data": {"resolution": RES}, "teachers": {"demo_patch": 2},
        "tokenizer": {"arch": arch, "ch": 8, "ch_mult": [1, 2], "z_channels": 16, "norm_groups": 4,
                      "attn_lowest": arch != "lfq16", "codebook_size": 32, "code_dim": 4, "perceptual": "none",
                      "gan_start": 0, "disc_ch": 8, "disc_layers": 1},
        "ar": {"sizes": ["custom"], "custom_layers": 3, "custom_dim": 32, "custom_heads": 2, "projector_hidden": 16},
        "tune": {"ar_size": "custom"},
    })
    tok = build_tokenizer(p)
    assert tok.config.arch == arch and type(tok.encoder) is ARCHS[arch].encoder
    grid = tok.grid_size(RES)
    ar, proj = build_ar(p, "custom", tok.codebook_size, grid, classes, dt)
    torch.nn.init.normal_(ar.head.weight, std=0.02)
    m = GearModels(tok, ar, proj, TokenizerObjective(p, None, PatchDiscriminator(ch=8, n_layers=1)))
    k = GearKnobs(mode="gear", tau=0.1, align_weight=0.5, align_weight_ar=0.5, align_layer=2)
    rt = Runtime(device=torch.device("cpu"), precision="fp32")
    x, labels, y = torch.rand(4, 3, RES, RES) * 2 - 1, torch.randint(0, classes, (4,)), torch.randn(4, grid ** 2, dt)

    # the soft branch reaches the encoder (and a learned codebook) and nothing of the AR
    out = tok(x)
    with frozen(ar, proj):
        soft_alignment_loss(m, k, out.q.dist, labels, y).backward()
    assert all(p.grad is None for p in [*ar.parameters(), *proj.parameters()])
    enc = [p.grad for p in tok.encoder.parameters()]
    assert all(g is not None for g in enc) and any(torch.count_nonzero(g) for g in enc)
    if arch != "lfq16":
        assert torch.count_nonzero(tok.quantize.embedding.weight.grad)
    tok.zero_grad(set_to_none=True)

    opt_tok = torch.optim.AdamW(tok.parameters(), lr=1e-3)
    opt_ar = torch.optim.AdamW([*ar.parameters(), *proj.parameters()], lr=1e-3)
    tok0, ar0 = copy.deepcopy(tok.state_dict()), copy.deepcopy(ar.state_dict())
    out, logs = tokenizer_step(m, k, opt_tok, x, labels, y, step=0, rt=rt)
    assert "align_soft" in logs and all(torch.isfinite(v) for v in logs.values())
    assert any(not torch.equal(v, tok0[n]) for n, v in tok.state_dict().items() if n.startswith("encoder."))
    assert all(torch.equal(v, ar0[n]) for n, v in ar.state_dict().items())
    assert out.q.indices.shape == (4, grid, grid)
    logs = ar_step(m, k, opt_ar, out.q.indices, labels, y, rt=rt)
    assert all(torch.isfinite(v) for v in logs.values())
    assert any(not torch.equal(v, ar0[n]) for n, v in ar.state_dict().items())


# ---------------------------------------------------------------------------------------------- params and folders


def test_arch_params_validate_at_the_edge_and_the_default_config_is_unchanged():
    from gear.config import ParamsError, load_params

    from gear.schema import TOKENIZER_ARCHS

    assert tuple(ARCHS) == TOKENIZER_ARCHS  # the params' names are the registry's
    p = load_params()
    assert p.tokenizer.arch == "vq16" and "arch" not in TokenizerConfig.from_params(p).to_dict()
    assert TokenizerConfig.from_dict(TokenizerConfig.from_params(p).to_dict()).arch == "vq16"
    lfq = TokenizerConfig.from_params(load_params(overrides=["tokenizer.arch=lfq16", "quantizer=lfq"]))
    assert (lfq.z_channels, lfq.code_dim, lfq.attn_lowest) == (9, 9, False)  # log2 512, no attention
    assert TokenizerConfig.from_dict(lfq.to_dict()) == lfq
    ibq = TokenizerConfig.from_params(load_params(overrides=["tokenizer.arch=ibq16", "quantizer=ibq"]))
    assert ibq.arch == "ibq16" and ibq.code_dim == ibq.z_channels
    with pytest.raises(ParamsError, match="quantizer.*must be lfq for tokenizer.arch lfq16"):
        load_params(overrides=["tokenizer.arch=lfq16"])
    with pytest.raises(ParamsError, match="tokenizer.arch"):
        load_params(overrides=["tokenizer.arch=vq8"])
    with pytest.raises(ValueError, match="arch ibq16 carries only ibq"):
        TokenizerConfig(arch="ibq16", quantizer="vq")


@pytest.mark.parametrize("arch", ["lfq16", "ibq16"])
def test_a_frozen_folder_of_each_arch_round_trips(arch, tmp_path):
    from gear.artifacts import load_tokenizer, write_tokenizer

    tok = Tokenizer(config(arch))
    write_tokenizer(tmp_path, tok, {"arm": "x"})
    back = load_tokenizer(tmp_path)
    assert back.config == tok.config
    assert all(torch.equal(v, tok.state_dict()[k]) for k, v in back.state_dict().items())
