"""Teachers: token-grid shapes and order, fail-fast offline loading, z-score, demo training + stage."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from gear import paths
from gear.config import load_params
from gear.io import ArtifactError, load_tensors, save_tensors, write_json
from gear.models.demo_teacher import DemoViT
from gear.teachers import (HUB_TEACHERS, DemoTeacher, HubSpec, OpenClipTeacher, TimmTeacher, build_timm,
                           load_teacher, resolve_weights, spatial_zscore, zscore_strength)
from tiny import PARAMS, TINY_TEACHER


def tiny_params(*overrides: str):
    return load_params(PARAMS, [*TINY_TEACHER, "compute.precision=fp32", *overrides])


def save_demo(vit: DemoViT, classes: list[str]) -> None:
    out = paths.teacher_dir()
    save_tensors(out / "model.safetensors", vit.state_dict())
    write_json(out / "config.json", {"teacher": "demo", "trained": True, "architecture": vit.config,
                                     "classes": classes, "val_acc": 0.0})


def images(n: int = 2, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- shapes and patch order -------------------------------------------------------------------

def test_demo_teacher_features_on_token_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tiny_params()
    with pytest.raises(ArtifactError, match="run `gear teacher` first"):
        load_teacher(p)
    torch.manual_seed(0)
    vit = DemoViT(32, 4, 32, 1, 2, num_classes=3)
    torch.nn.init.normal_(vit.head.weight)
    save_demo(vit, ["a", "b", "c"])
    t = load_teacher(p)
    assert isinstance(t, DemoTeacher) and t.name == "demo" and t.dim == 32
    assert not t.training and not any(q.requires_grad for q in t.parameters())
    t.train()
    assert not t.training and not t.vit.training
    x = images()
    y = t.features(x, 8)
    assert y.shape == (2, 64, 32) and y.dtype == torch.float32 and not y.requires_grad
    assert torch.equal(y, vit.tokens(x)[:, 1:].detach())  # fp32, same input size: exact
    assert t.features(x, 4).shape == (2, 16, 32)  # resized input, interpolated positions
    assert t.pooled(x).shape == (2, 32)
    assert torch.equal(t.logits(x), vit(x).detach())
    # grad=True reaches the input, never the weights
    xg = x.clone().requires_grad_(True)
    t.features(xg, 8, grad=True).square().mean().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0 and all(q.grad is None for q in t.parameters())
    # a stale artifact (other architecture than params) is refused by name
    with pytest.raises(ArtifactError, match="demo_dim"):
        load_teacher(tiny_params("teachers.demo_dim=64", "teachers.demo_heads=2"))


def test_demo_patch_order_is_row_major():
    torch.manual_seed(0)
    vit = DemoViT(16, 4, 8, 0, 2, num_classes=2)  # depth 0: token k sees only patch k
    t = DemoTeacher(vit, ["a", "b"], precision="fp32")
    x = images(1, 16)
    x2 = x.clone()
    r, c = 1, 2
    x2[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 0.5
    changed = (t.features(x, 4) - t.features(x2, 4)).abs().sum(-1)[0]
    assert changed.nonzero().flatten().tolist() == [r * 4 + c]


def _timm_spec(arch: str) -> HubSpec:
    return HubSpec("timm", arch, "lvd142m", "none/none", ("model.safetensors",), 14, 56, True)


def test_timm_dinov2_shape_path_and_local_weights(tmp_path):
    spec = _timm_spec("vit_small_patch14_dinov2")
    model = build_timm(spec, None, pretrained=False, img_size=56, depth=1)
    t = TimmTeacher("dinov2_test", model, 14, 56, precision="fp32")
    x = images()
    for grid in (4, 8):
        y = t.features(x, grid)
        assert y.shape == (2, grid * grid, 384) and y.dtype == torch.float32
    # the same numbers by hand (the release's order): [-1, 1] -> [0, 1] -> ImageNet norm -> plain
    # bicubic to 56 px (no clamp) -> drop CLS
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    xn = ((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    ref = model.forward_features(F.interpolate(xn, size=(56, 56), mode="bicubic", align_corners=False))[:, 1:]
    assert torch.allclose(t.features(x, 4), ref, atol=1e-5)
    assert t.pooled(x).shape == (2, 384)
    with pytest.raises(RuntimeError, match="no classifier head"):
        t.logits(x)
    # a local weights file (teachers.weights) loads through timm's pretrained_cfg_overlay
    path = tmp_path / "w.safetensors"
    save_tensors(path, model.state_dict())
    again = TimmTeacher("dinov2_test", build_timm(spec, str(path), img_size=56, depth=1), 14, 56, precision="fp32")
    assert torch.equal(again.features(x, 4), t.features(x, 4))
    # register tokens are dropped too
    reg = TimmTeacher("reg", build_timm(_timm_spec("vit_small_patch14_reg4_dinov2"), None, pretrained=False,
                                        img_size=56, depth=1), 14, 56, precision="fp32")
    assert reg.model.num_prefix_tokens == 5 and reg.features(x, 4).shape == (2, 16, 384)


def test_open_clip_tower_tokens():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    v = VisionTransformer(image_size=32, patch_size=8, width=64, layers=1, heads=2, mlp_ratio=4.0, output_dim=16)
    t = OpenClipTeacher("clip_test", v, 8, 4, (0.5,) * 3, (0.5,) * 3, precision="fp32")
    x = images()
    y = t.features(x, 4)
    ref = v.ln_post(v.transformer(v._embeds(x)))[:, 1:]  # [-1, 1] is already (x01 - 0.5) / 0.5
    assert y.shape == (2, 16, 64) and torch.allclose(y, ref, atol=1e-5)
    assert t.pooled(x).shape == (2, 16)
    with pytest.raises(ValueError, match="built for a 4x4 grid"):
        t.features(x, 8)


# ---- weights resolution -----------------------------------------------------------------------

@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("name", list(HUB_TEACHERS))
def test_missing_weights_offline_fail_fast(name, empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        load_teacher(tiny_params(f"teacher={name}"))
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert name in msg and HUB_TEACHERS[name].hub_id in msg and "teachers.weights" in msg and "\n" not in msg


def test_unreachable_hub_and_bad_local_file_fail_fast(empty_hub_cache, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="unreachable"):
        resolve_weights("dinov2_vitb14", None)
    with pytest.raises(RuntimeError, match="not found"):
        resolve_weights("clip_vitb16", str(tmp_path / "missing.bin"))
    assert time.perf_counter() - start < 5


def test_weights_from_cache_or_local_file(empty_hub_cache, tmp_path):
    spec = HUB_TEACHERS["dinov2_vitb14"]
    snap = empty_hub_cache / f"models--{spec.hub_id.replace('/', '--')}"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    (snap / "snapshots" / "abc123").mkdir(parents=True)
    (snap / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x")
    assert resolve_weights("dinov2_vitb14", None) is None  # cached: timm will read it
    local = tmp_path / "w.pth"
    local.write_bytes(b"x")
    assert resolve_weights("siglip2_vitb16", str(local)) == str(local)


# ---- z-score ----------------------------------------------------------------------------------

def test_spatial_zscore_normalises_per_image():
    y = torch.randn(3, 16, 5, dtype=torch.float64) * torch.tensor([1.0, 4, 9, 0.5, 2], dtype=torch.float64) + 7
    z = spatial_zscore(y, 1.0)
    assert torch.allclose(z.mean(1), torch.zeros(3, 5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(1), torch.ones(3, 5, dtype=torch.float64), atol=1e-5)
    assert torch.equal(spatial_zscore(y, 0.0), y)
    s = 0.6
    assert torch.allclose(spatial_zscore(y, s), (1 - s) * y + s * z, atol=1e-12)
    y2 = y.clone()
    y2[1] *= 100  # another image in the batch does not change image 0's targets
    assert torch.equal(spatial_zscore(y2, s)[0], spatial_zscore(y, s)[0])


def test_zscore_modes():
    assert zscore_strength(tiny_params("teacher=clip_vitb16")) == 0.6
    assert zscore_strength(tiny_params("teacher=siglip2_vitb16", "teachers.zscore_strength=0.3")) == 0.3
    assert zscore_strength(tiny_params("teacher=dinov2_vitb14")) == 0.0
    assert zscore_strength(tiny_params()) == 0.0  # demo, auto
    assert zscore_strength(tiny_params("teachers.zscore='on'")) == 0.6
    assert zscore_strength(tiny_params("teacher=clip_vitb16", "teachers.zscore='off'")) == 0.0


def test_teacher_applies_zscore():
    torch.manual_seed(0)
    t = DemoTeacher(DemoViT(16, 4, 8, 1, 2, num_classes=2), ["a", "b"], zscore=1.0, precision="fp32")
    y = t.features(images(2, 16), 4)
    assert torch.allclose(y.mean(1), torch.zeros(2, 8), atol=1e-5)


# ---- training ---------------------------------------------------------------------------------

def test_demo_training_reduces_loss_on_fixed_batch():
    from gear.stages.teacher import make_optimizer

    torch.manual_seed(0)
    vit = DemoViT(16, 4, 32, 1, 2, num_classes=4)
    opt = make_optimizer(vit, 3e-3)
    x, y = images(16, 16), torch.arange(16) % 4
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(vit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


STAGE_SETS = [*TINY_TEACHER, "data.embedded_train_per_class=16", "data.embedded_val_per_class=4", "data.samples_per_shard=100",
              "teachers.demo_steps=12", "teachers.demo_batch_size=16", "compute.log_every=4",
              "compute.save_every=5", "compute.workers=0", "compute.precision=fp32"]


def _outputs() -> tuple[dict, dict]:
    weights = load_tensors(paths.teacher_dir() / "model.safetensors")
    return weights, json.loads((paths.teacher_dir() / "config.json").read_text())


def _read_metrics() -> dict[str, str]:
    root = paths.metrics_dir("teacher")
    return {str(f.relative_to(root)): f.read_text() for f in sorted(root.rglob("*.tsv"))} | \
        {"metrics.json": (root / "metrics.json").read_text()}


def test_teacher_stage_end_to_end_and_exact_resume(tmp_path, monkeypatch):
    from gear.stages import shard
    from gear.stages import teacher as stage

    monkeypatch.chdir(tmp_path)
    p = load_params(PARAMS, STAGE_SETS)
    shard.run(p)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        stage.run(p)
        ref_w, ref_cfg = _outputs()
        ref_metrics = _read_metrics()
        assert ref_cfg["trained"] and ref_cfg["architecture"]["dim"] == 32 and len(ref_cfg["classes"]) == 16
        assert 0.0 <= ref_cfg["val_acc"] <= 1.0
        assert json.loads(ref_metrics["metrics.json"])["val_acc"] == ref_cfg["val_acc"]
        assert not (paths.state_dir(p, "teacher") / "state.pt").exists()
        t = load_teacher(p)
        assert t.features(images(2, 32), 8).shape == (2, 64, 32) and t.logits(images(2, 32)).shape == (2, 16)

        # 1) SIGTERM during step 8: state saved at step 8, exit; 2) a crash at step 11 after the
        # save at step 10; each rerun resumes and must end exactly where the uninterrupted run did
        calls = {"n": 0}

        class Interrupted(stage.TrainStream):
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == 8:
                    os.kill(os.getpid(), signal.SIGTERM)
                if calls["n"] == 11:
                    raise KeyboardInterrupt("simulated crash")
                return super().__next__()

        monkeypatch.setattr(stage, "TrainStream", Interrupted)
        with pytest.raises(SystemExit) as stop:
            stage.run(p)
        assert stop.value.code == 128 + signal.SIGTERM
        assert torch.load(paths.state_dir(p, "teacher") / "state.pt", weights_only=True)["step"] == 8
        with pytest.raises(KeyboardInterrupt):
            stage.run(p)
        assert torch.load(paths.state_dir(p, "teacher") / "state.pt", weights_only=True)["step"] == 10
        stage.run(p)
        w, cfg = _outputs()
        assert w.keys() == ref_w.keys() and all(torch.equal(w[k], ref_w[k]) for k in w)
        assert cfg == ref_cfg
        assert _read_metrics() == ref_metrics
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def test_stage_with_hub_teacher_only_notes_it(tmp_path, monkeypatch):
    from gear.stages import teacher as stage

    monkeypatch.chdir(tmp_path)
    p = tiny_params("teacher=dinov2_vitb14", "metrics.feature_space=inception")
    stage.run(p)  # no shards needed: nothing is trained
    cfg = json.loads((paths.teacher_dir() / "config.json").read_text())
    assert cfg["teacher"] == "dinov2_vitb14" and cfg["trained"] is False
    with pytest.raises(ArtifactError, match="no trained demo teacher"):
        load_teacher(p, name="demo")


def test_vjepa_teacher_loads_a_local_save_pretrained_folder(tmp_path):
    """V-JEPA 2 through transformers, offline: a tiny random VJEPA2Model written by save_pretrained is
    the teachers.weights folder; features land on the token grid, frozen, and a plain file is refused."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VJEPA2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2.0,
                                    pred_hidden_size=16, pred_num_hidden_layers=1, pred_num_attention_heads=2,
                                    crop_size=32, frames_per_clip=2, tubelet_size=2, patch_size=16)
    transformers.VJEPA2Model(cfg).save_pretrained(tmp_path / "vjepa")
    p = tiny_params("teacher=vjepa2_vitl16", f"teachers.weights={tmp_path / 'vjepa'}")
    t = load_teacher(p)
    feats = t.features(images(2, 64), grid=4)
    assert feats.shape == (2, 16, 32) and torch.isfinite(feats).all()
    assert not any(q.requires_grad for q in t.parameters())
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="not a save_pretrained folder"):
        resolve_weights("vjepa2_vitl16", str(tmp_path / "file.bin"))
