"""Tokenizer, quantizers, LlamaGen checkpoint layout, discriminator and perceptual losses (tiny shapes)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from gear.config import params_from_dict
from gear.io import ArtifactError
from gear.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from gear.models.llamagen import convert_state_dict, load_tokenizer_state
from gear.models.perceptual import LPIPS, FeaturePerceptual, make_perceptual
from gear.models.quantizers import ENTROPY_EPS, entropy_penalty, index_to_bits, make_quantizer
from gear.models.tokenizer import Tokenizer, TokenizerConfig
from public_layouts import llamagen_layout

QUANTIZERS = ("vq", "lfq", "ibq")


def tiny_config(quantizer: str, **kw) -> TokenizerConfig:
    d = dict(quantizer=quantizer, ch=16, ch_mult=[1, 2], enc_res_blocks=1, dec_res_blocks=1, z_channels=16,
             norm_groups=4, codebook_size=64, code_dim=6 if quantizer == "lfq" else 8, entropy_weight=0.05)
    return TokenizerConfig(**{**d, **kw})


def tiny_model(quantizer: str, seed: int = 0, **kw) -> Tokenizer:
    torch.manual_seed(seed)
    model = Tokenizer(tiny_config(quantizer, **kw))
    if quantizer in ("vq", "ibq"):  # spread the codes so many of them are in use
        nn.init.normal_(model.quantize.embedding.weight)
    return model


def images(n: int = 4, res: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, res // 4, res // 4, generator=g) * 2 - 1
    return F.interpolate(low, size=res, mode="bilinear", align_corners=False)  # smooth, in [-1, 1]


# ---------------------------------------------------------------------------------------------- quantizers


@pytest.mark.parametrize("name", QUANTIZERS)
def test_hard_index_is_argmin_of_dist_and_decode_paths_agree(name):
    model = tiny_model(name).eval()
    x = images()
    with torch.no_grad():
        out = model(x)
    q = out.q
    K = model.codebook_size
    assert q.dist.dtype == torch.float32 and q.dist.shape == (4, 8, 8, K)
    assert q.indices.dtype == torch.long and q.indices.shape == (4, 8, 8)
    assert torch.equal(q.indices, q.dist.argmin(-1))
    assert out.z_pre.shape == (4, model.config.code_dim, 8, 8)
    assert torch.equal(q.z_q, model.quantize.embed(q.indices))
    with torch.no_grad():
        assert torch.equal(model.decode_indices(q.indices), model.decode(q.z_q))
        assert torch.equal(model.decode_indices(q.indices.flatten(1)), out.recon)
    assert set(q.losses) == {"codebook", "commit", "entropy"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in q.losses.values())
    assert q.indices.unique().numel() > 1


@pytest.mark.parametrize("name", QUANTIZERS)
def test_bf16_autocast_keeps_quantizer_in_fp32(name):
    model = tiny_model(name).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(2))
        assert out.z_pre.dtype == torch.bfloat16 and out.q.dist.dtype == torch.float32
        assert torch.equal(out.q.indices, out.q.dist.argmin(-1))
        assert torch.equal(model.decode_indices(out.q.indices), out.recon)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_reconstruction_loss_reaches_encoder(name):
    model = tiny_model(name)
    out = model(images())
    (out.recon - images()).abs().mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    if name == "vq":  # standard STE: the codebook learns only from the codebook loss
        assert model.quantize.embedding.weight.grad is None
    if name == "ibq":  # softmax backward reaches codes that were not selected
        grad_rows = model.quantize.embedding.weight.grad.abs().sum(1) > 0
        assert grad_rows.sum() > out.q.indices.unique().numel()


@pytest.mark.parametrize("name", QUANTIZERS)
def test_soft_branch_gradient_reaches_encoder_and_codebook(name):
    model = tiny_model(name)
    q = model(images()).q
    p = torch.softmax(-q.dist / 0.1, dim=-1)
    table = torch.randn(model.codebook_size, 5)
    (p @ table).square().mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    assert model.decoder.conv_in.weight.grad is None  # the soft branch does not touch the decoder
    if name == "lfq":
        assert list(model.quantize.parameters()) == []
    else:
        assert model.quantize.embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", QUANTIZERS)
def test_quantizer_losses_train_their_targets(name):
    q = make_quantizer(name, 16, 4, l2_norm=False, commit_weight=0.25, codebook_weight=1.0,
                       entropy_weight=0.1, entropy_temperature=0.5)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    sum(out.losses.values()).backward()
    assert z.grad.abs().sum() > 0
    assert out.losses["entropy"].item() != 0
    if name != "lfq":
        assert q.embedding.weight.grad.abs().sum() > 0
    else:
        assert out.losses["codebook"].item() == 0


def test_vq_l2_distance_is_two_minus_two_cos():
    q = make_quantizer("vq", 32, 8, l2_norm=True)
    z = torch.randn(2, 8, 4, 4)
    out = q(z)
    zn = F.normalize(z.permute(0, 2, 3, 1), dim=-1)
    en = F.normalize(q.embedding.weight, dim=-1)
    torch.testing.assert_close(out.dist, 2 - 2 * zn @ en.t())
    torch.testing.assert_close(out.z_q.norm(dim=1), torch.ones(2, 4, 4))


def msb_index(bits: torch.Tensor) -> torch.Tensor:
    """(..., d) bits -> index, channel 0 the most significant bit (by hand, not via the module)."""
    d = bits.shape[-1]
    return (bits.long() * 2 ** torch.arange(d - 1, -1, -1)).sum(-1)


def test_lfq_codes_are_signs_and_bits_round_trip():
    K, d = 256, 8
    idx = torch.arange(K)
    bits = index_to_bits(idx, d)
    assert bits.shape == (K, d) and set(bits.unique().tolist()) == {0, 1}
    assert torch.equal(msb_index(bits), idx)

    q = make_quantizer("lfq", K, d)
    z = torch.randn(3, d, 5, 5)
    z[0, 2, 1, 1] = 0.0  # exact zero: ties go to bit 0 (-1), the lower index
    out = q(z)
    sign_bits = (z.permute(0, 2, 3, 1) > 0)
    assert torch.equal(out.indices, msb_index(sign_bits))
    assert torch.equal(out.indices, out.dist.argmin(-1))
    assert torch.equal(out.z_q, torch.where(z > 0, 1.0, -1.0))
    with pytest.raises(ValueError, match="log2"):
        make_quantizer("lfq", K, d + 1)
    with pytest.raises(ValueError, match="power of two"):
        make_quantizer("lfq", 100, 7)


def test_entropy_penalty_limits():
    K = 16
    # uniform everywhere: H - H = 0 but for the log epsilon: log K + log(1/K + eps) = log(1 + K eps)
    assert entropy_penalty(torch.zeros(10, K)).item() == pytest.approx(math.log1p(K * ENTROPY_EPS), abs=1e-6)
    confident = 50.0 * torch.eye(K)                                   # each token sure, all codes used
    assert abs(entropy_penalty(confident).item() + math.log(K)) < 1e-3


def test_bad_quantizer_inputs():
    with pytest.raises(ValueError, match="unknown quantizer"):
        make_quantizer("fsq", 16, 4)
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        make_quantizer("vq", 16, 4)(torch.randn(2, 3, 4, 4))


# ---------------------------------------------------------------------------------------------- tokenizer


def test_config_from_params_and_round_trip():
    p = params_from_dict({})
    cfg = TokenizerConfig.from_params(p)
    assert cfg.quantizer == p.quantizer and cfg.ch_mult == p.tokenizer.ch_mult and cfg.code_dim == p.tokenizer.code_dim
    assert cfg.downsample == p.tokenizer.downsample
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    lfq = TokenizerConfig.from_params(params_from_dict({"quantizer": "lfq"}))
    assert lfq.code_dim == int(math.log2(p.tokenizer.codebook_size))
    ibq = TokenizerConfig.from_params(params_from_dict({"quantizer": "ibq"}))
    assert ibq.code_dim == p.tokenizer.z_channels  # IBQ quantizes z itself, as released
    with pytest.raises(ValueError, match="unknown keys"):
        TokenizerConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="norm_groups"):
        TokenizerConfig(ch=30, norm_groups=8)


def test_tokenizer_input_checks():
    model = tiny_model("vq")
    assert model.grid_size(32) == 16
    with pytest.raises(ValueError, match="divisible"):
        model.grid_size(33)
    with pytest.raises(ValueError, match="expects images"):
        model.encode(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="square grid"):
        model.decode_indices(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        model.decode_indices(torch.full((1, 2, 2), 64))


def test_attention_off_keeps_mid_layout():
    model = tiny_model("vq", attn_lowest=False)
    names = model.state_dict().keys()
    assert not any(".attn." in k or ".q.weight" in k for k in names)
    assert "encoder.mid.2.conv1.weight" in names and "decoder.mid.2.conv1.weight" in names
    assert model(images(2)).recon.shape == (2, 3, 16, 16)


def test_tiny_tokenizer_learns_to_reconstruct():
    torch.manual_seed(0)
    model = tiny_model("vq")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = images(4)
    losses = []
    for _ in range(30):
        out = model(x)
        recon = (out.recon - x).abs().mean()
        loss = recon + sum(out.q.losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(recon.item())
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5]), losses


# ---------------------------------------------------------------------------------------------- LlamaGen layout


def test_full_vq16_matches_llamagen_layout_and_size():
    with torch.device("meta"):
        model = Tokenizer(TokenizerConfig.llamagen_vq16())
        sd = {k: torch.empty(s) for k, s in llamagen_layout(128, (1, 1, 2, 2, 4), 2, 256, 8, 16384).items()}
    n_params = sum(p.numel() for p in model.parameters())
    assert 70e6 < n_params < 74e6, n_params
    converted = convert_state_dict({"module." + k: v for k, v in sd.items()}, model)
    assert set(converted) == set(model.state_dict())


def test_tiny_llamagen_checkpoint_loads_exactly(tmp_path):
    cfg = TokenizerConfig.llamagen_vq16(ch=16, z_channels=32, codebook_size=64, norm_groups=8)
    model = Tokenizer(cfg)
    g = torch.Generator().manual_seed(1)
    shapes = llamagen_layout(16, (1, 1, 2, 2, 4), 2, 32, 8, 64)
    sd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    torch.save({"model": sd}, tmp_path / "vq_ds16_c2i.pt")
    load_tokenizer_state(model, tmp_path / "vq_ds16_c2i.pt")
    ours = model.state_dict()
    assert all(torch.equal(ours[k], sd[k]) for k in ours)
    # our own layout (e.g. a saved Tokenizer) loads too
    load_tokenizer_state(Tokenizer(cfg), {"ema": ours, "model": {}})

    missing = {k: v for k, v in sd.items() if k != "decoder.conv_out.bias"}
    with pytest.raises(RuntimeError, match="1 missing.*decoder.conv_out.bias"):
        load_tokenizer_state(model, missing)
    with pytest.raises(RuntimeError, match="1 unexpected.*encoder.extra"):
        load_tokenizer_state(model, {**sd, "encoder.extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="shape mismatch.*quantize.embedding.weight"):
        load_tokenizer_state(model, {**sd, "quantize.embedding.weight": torch.zeros(64, 4)})
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer_state(model, tmp_path / "absent.pt")
    with pytest.raises(RuntimeError, match="unexpected.*quantize.embedding"):  # a VQ checkpoint into LFQ
        load_tokenizer_state(Tokenizer(TokenizerConfig.llamagen_vq16(
            quantizer="lfq", ch=16, z_channels=32, codebook_size=256, norm_groups=8)), sd)


# ---------------------------------------------------------------------------------------------- GAN and perceptual


def test_patch_discriminator_and_hinge_losses():
    d = PatchDiscriminator(ch=8, n_layers=2)
    logits = d(images(2, res=32))
    assert logits.shape == (2, 1, 6, 6)
    ones = torch.ones(4)
    assert hinge_d_loss(2 * ones, -2 * ones).item() == 0.0
    assert hinge_d_loss(0 * ones, 0 * ones).item() == 1.0
    assert hinge_d_loss(-ones, ones).item() == 2.0
    assert hinge_g_loss(torch.tensor([1.0, 3.0])).item() == -2.0
    fake = images(2, res=32).requires_grad_(True)
    hinge_g_loss(d(fake)).backward()
    assert fake.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).features
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, folder / "vgg16.pth")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lins, folder / "lpips_vgg.pth")
    return folder


def test_lpips_loads_local_weights_only(lpips_dir, tmp_path):
    lp = make_perceptual("lpips", weights_path=lpips_dir)
    assert isinstance(lp, LPIPS) and not any(p.requires_grad for p in lp.parameters())
    lins = torch.load(lpips_dir / "lpips_vgg.pth")
    assert torch.equal(lp.lins[3].weight, lins["lin3.model.1.weight"])
    vgg = torch.load(lpips_dir / "vgg16.pth")
    assert torch.equal(lp.vgg[28].weight, vgg["features.28.weight"])
    x, y = images(2, res=32), images(2, res=32, seed=1).requires_grad_(True)
    assert torch.equal(lp.distance(x, x), torch.zeros(2))
    d = lp.distance(x, y)
    assert d.shape == (2,) and (d > 0).all()
    loss = lp(x, y)
    assert loss.dim() == 0 and torch.allclose(loss, d.mean())
    loss.backward()
    assert y.grad.abs().sum() > 0
    lp.train()
    assert not lp.training

    with pytest.raises(ArtifactError, match="not found"):
        LPIPS(tmp_path / "nowhere")
    (tmp_path / "vgg16.pth").write_bytes((lpips_dir / "vgg16.pth").read_bytes())
    with pytest.raises(ArtifactError, match="LPIPS heads"):
        LPIPS(tmp_path)
    with pytest.raises(ArtifactError, match="lpips_weights"):
        make_perceptual("lpips")


def test_feature_perceptual_and_factory():
    torch.manual_seed(0)
    proj = nn.Conv2d(3, 12, 4, stride=4).requires_grad_(False)

    def feature_fn(img):  # frozen patch features (B, N, D)
        return proj(img).flatten(2).transpose(1, 2)

    fp = make_perceptual("teacher", feature_fn=feature_fn)
    assert isinstance(fp, FeaturePerceptual)
    x, y = images(3), images(3, seed=2).requires_grad_(True)
    assert fp(x, x).item() == 0.0
    d = fp(y, x)
    assert d.dim() == 0 and 0 < d.item() <= 4
    d.backward()
    assert y.grad.abs().sum() > 0
    assert make_perceptual("none") is None
    with pytest.raises(ValueError, match="feature function"):
        make_perceptual("teacher")
    with pytest.raises(ValueError, match="unknown perceptual"):
        make_perceptual("vgg")


# ---------------------------------------------------------------------------------------------- fast paths
# Each faster formulation against the one it replaced: same weights, same math, float tolerance.


def _conv_attention(block, x):
    """AttnBlock as written before: 1x1 convolutions, (B, HW, C) by flatten/transpose."""
    B, C, H, W = x.shape
    h = block.norm(x)
    q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (block.q, block.k, block.v))
    h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, C, H, W)
    return x + block.proj_out(h)


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_gemm_paths_equal_the_1x1_convolutions(channels_last):
    from gear.models.tokenizer import AttnBlock, ResnetBlock, pointwise
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(8, 12, 1).to(memory_format=fmt)
    x = torch.randn(3, 8, 5, 7).to(memory_format=fmt)
    torch.testing.assert_close(pointwise(conv, x), conv(x), rtol=1e-5, atol=1e-6)

    block = AttnBlock(8, 4).to(memory_format=fmt)
    x = torch.randn(3, 8, 4, 4).to(memory_format=fmt).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = block(x), _conv_attention(block, x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    out.backward(g)
    grads_fast = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    for fast, slow in zip(grads_fast, (p.grad for p in block.parameters())):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)

    res = ResnetBlock(8, 12, 4).to(memory_format=fmt)  # 8 -> 12: a 1x1 shortcut
    x = torch.randn(2, 8, 6, 6).to(memory_format=fmt)
    ref = res.nin_shortcut(x) + res.conv2(F.silu(res.norm2(res.conv1(F.silu(res.norm1(x))))))
    torch.testing.assert_close(res(x), ref, rtol=1e-5, atol=1e-6)


def test_ema_update_is_the_per_tensor_lerp_and_copies_buffers():
    from gear.train.ema import EMA
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(2, 2))
    ema = EMA(model, 0.9)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model[1].running_mean.add_(1.0)
    ema.update(model)
    for e, b, p in zip(ema.model.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, b.lerp(p, 0.1), rtol=0, atol=0)
    torch.testing.assert_close(ema.model[1].running_mean, model[1].running_mean, rtol=0, atol=0)
    with pytest.raises(ValueError, match="parameters"):
        ema.update(nn.Linear(2, 2))


def test_generator_loss_leaves_the_discriminator_weights_without_gradient():
    from gear.train.tokenizer_objective import TokenizerObjective
    p = params_from_dict({"teachers": {"demo_patch": 2},
                          "tokenizer": {"ch": 16, "ch_mult": [1, 2], "z_channels": 16, "norm_groups": 4,
                                        "codebook_size": 64, "perceptual": "none", "gan_start": 0}})
    model, disc = tiny_model("vq"), PatchDiscriminator(ch=8, n_layers=2)
    objective = TokenizerObjective(p, None, disc)
    x = images(4, res=16)
    out = model(x)
    loss, logs = objective.generator_loss(x, out, step=0)
    assert "gan_g" in logs
    loss.backward()
    assert all(q.grad is None for q in disc.parameters())          # no weight gradient computed
    assert all(q.requires_grad for q in disc.parameters())         # flags restored
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0      # the GAN term still reaches the tokenizer
    # the generator's gradient equals the one through a discriminator whose weights take gradients
    model.zero_grad()
    ref = (F.l1_loss(out.recon, x) + p.tokenizer.gan_weight * hinge_g_loss(disc(out.recon))
           + sum(out.q.losses.values()))
    torch.testing.assert_close(ref, loss)
