"""evaluate (real / tokenizer / samples) and report on a tiny offline world: 16 classes x (20 train,
5 val) embedded crops at 32 px, a random demo teacher, random frozen tokenizers and ARs."""
from __future__ import annotations

import json
import re
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from gear import paths
from gear.artifacts import load_tokenizer, write_model, write_tokenizer
from gear.cli import main
from gear.config import load_params
from gear.data import shard
from gear.data.embedded import SOURCES
from gear.data.loader import eval_batches
from gear.io import ArtifactError, save_tensors, sha256_file, write_json
from gear.metrics.features import FeatureModel, fid_statistics, frechet_distance, read_real_cache
from gear.models.ar import GPT, GPTConfig
from gear.models.demo_teacher import DemoViT
from gear.models.tokenizer import Tokenizer, TokenizerConfig
from gear.runtime import setup
from gear.stages import evaluate, report

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SETS = ["teachers.demo_dim=32", "teachers.demo_depth=1", "teachers.demo_heads=2",
        "data.embedded_train_per_class=20", "data.embedded_val_per_class=5", "data.shard_dir=data/shards",
        "compute.workers=0", "compute.device=cpu", "compute.precision=fp32",
        "tokenizer.ch=8", "tokenizer.norm_groups=4", "tokenizer.z_channels=16", "tokenizer.codebook_size=64",
        "metrics.max_patches=256", "metrics.batch_size=32", "metrics.max_real=200"]
CLI = [f"--params={PARAMS}", *[f"--set={s}" for s in SETS]]
NUM_SAMPLES = 32


def params(*extra: str):
    return load_params(PARAMS, [*SETS, *extra])


def _smooth_images(n: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=32, mode="bilinear")
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_samples(arm: str, size: str, images: np.ndarray) -> None:
    d = paths.samples_dir(arm, size)
    d.mkdir(parents=True, exist_ok=True)
    labels = np.arange(len(images)) % len(SOURCES)
    np.savez(d / "samples.npz", images=images, labels=labels, indices=np.zeros((len(images), 64), np.int64))
    Image.fromarray(np.concatenate(list(images[:8]), axis=1)).save(d / "grid.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Shards, a demo teacher folder as `gear teacher` writes it, frozen tokenizers, tiny ARs, samples."""
    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        p = params()
        shard.run(p)
        torch.manual_seed(0)
        vit = DemoViT(32, 4, 32, 1, 2, num_classes=len(SOURCES))
        torch.nn.init.normal_(vit.head.weight, std=0.5)  # a classifier head that is not uniform: IS > 1
        save_tensors(paths.teacher_dir() / "model.safetensors", vit.state_dict())
        write_json(paths.teacher_dir() / "config.json", {"teacher": "demo", "trained": True, "architecture": vit.config,
                                                         "classes": list(SOURCES), "val_acc": 0.0})
        for arm in paths.tokenizer_arms(p):
            write_tokenizer(paths.frozen_dir(arm), Tokenizer(TokenizerConfig.from_params(p)), {"arm": arm})
        for i, arm in enumerate(paths.AR_ARMS):
            cfg = GPTConfig.from_size("tiny", vocab_size=64, grid=8, num_classes=len(SOURCES))
            ar = GPT(cfg)
            torch.nn.init.normal_(ar.head.weight, std=0.02)
            write_model(paths.ar_dir(arm, "tiny"), "ar", ar)
            sha = sha256_file(paths.frozen_dir(arm) / "tokenizer.safetensors")
            write_json(paths.ar_dir(arm, "tiny") / "config.json",
                       {"arm": arm, "size": "tiny", "gpt": cfg.to_dict(), "tokenizer_sha256": sha})
            write_samples(arm, "tiny", _smooth_images(NUM_SAMPLES, seed=i))
    return root


@pytest.fixture
def ws(world, tmp_path, monkeypatch) -> Path:
    """A private copy of the world as the working directory."""
    shutil.copytree(world, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    return tmp_path / "w"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


# ---- patch sampling ----------------------------------------------------------------------------

def test_patch_sample_is_uniform_aligned_and_batch_independent():
    ids = torch.arange(6 * 10, dtype=torch.float32).reshape(6, 10, 1)  # 6 images x 10 patches, row = its id
    feats = lambda s: dict(a=ids[s], b=torch.cat([2 * ids[s], -ids[s]], -1))  # noqa: E731
    one, two = evaluate.PatchSample(17, seed=3), evaluate.PatchSample(17, seed=3)
    one.add(**feats(slice(0, 6)))
    for s in (slice(0, 1), slice(1, 4), slice(4, 6)):
        two.add(**feats(s))
    assert len(one.keys) == 17 and torch.equal(one.feats["a"], two.feats["a"]) and torch.equal(one.keys, two.keys)
    a, b = one.feats["a"], one.feats["b"]
    assert torch.equal(b, torch.cat([2 * a, -a], -1))                      # rows stay paired across sets
    assert len(set(a.flatten().tolist())) == 17                           # no patch twice
    every = evaluate.PatchSample(1000)  # bigger than the stream: everything is kept
    every.add(**feats(slice(0, 6)))
    assert torch.equal(every.feats["a"].flatten(), ids.flatten())
    assert every.similarity("b", "a", k=5)["cka"] == pytest.approx(1.0, abs=1e-12)  # linear map of a
    with pytest.raises(ValueError, match="disagree"):
        one.add(a=ids[:2], b=ids[:3])


# ---- synthetic training metrics (dvclive folders) -------------------------------------------------

def _tsv(path: Path, name: str, steps, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{name}\n" + "".join(f"{s}\t{v}\n" for s, v in zip(steps, values)))


def write_synthetic_metrics(p) -> None:
    """dvclive folders of every training stage; GEAR's NTP reaches the baseline's final value at
    step 60 of 100 (smoothed over 5 points), its alignment loss never does."""
    steps = list(range(0, 101, 10))
    curves = {"baseline": {"ntp": [3.0] * 11, "align": [-0.5] * 11},
              "gear": {"ntp": [4.0] * 4 + [2.0] * 7, "align": [-0.2] * 11}}
    for arm, named in curves.items():
        for name, values in named.items():
            _tsv(report._tsv("train_ar", arm, "tiny", name), name, steps, values)
        write_json(paths.metrics_dir("train_ar", arm, "tiny") / "metrics.json",
                   {"step": 100, "ntp": named["ntp"][-1], "align": named["align"][-1], "val_ntp": 3.5, "lr": 1e-3})
    for v in paths.tune_variants(p):
        for name in report.CODEBOOK:
            _tsv(report._tsv("tune", v, name), name, steps, np.linspace(1, 0.5, 11))
        write_json(paths.metrics_dir("tune", v) / "metrics.json", {"step": 100, "val_psnr": 20.0, "usage": 0.5})
    write_json(paths.metrics_dir("tokenizer_init") / "metrics.json", {"step": 100, "val_psnr": 21.0})
    write_json(paths.metrics_dir("teacher") / "metrics.json", {"step": 10, "val_acc": 0.25})


# ---- evaluate through the CLI --------------------------------------------------------------------

def test_evaluate_and_report_end_to_end(ws, capsys):
    assert main(["evaluate", "real", *CLI]) == 0
    summary = json.loads((paths.real_stats_dir() / "summary.json").read_text())
    assert summary["feature_space"] == "demo" and summary["extractor"] == "gear-custom-demo-teacher"
    assert summary["num_real"] == 200 and summary["real_split"] == "train" and summary["resolution"] == 32
    assert summary["weights"] == "models/teacher/model.safetensors" and len(summary["weights_sha256"]) == 64
    first = _tree(paths.real_stats_dir())
    assert main(["evaluate", "real", *CLI]) == 0                          # deterministic: same subset, same stats
    again = _tree(paths.real_stats_dir())
    assert again == first

    for arm in ("baseline", "gear", "ste"):
        assert main(["evaluate", "tokenizer", "--arm", arm, *CLI]) == 0
    assert _tree(paths.real_stats_dir()) == again                         # later stages never write eval/real
    e = json.loads(paths.eval_tokenizer_json("gear").read_text())
    assert {"rfid", "rfid_val", "val_fid", "psnr", "ssim", "usage", "entropy", "effective_size", "cka_pre",
            "cknna_pre", "cka_post", "cknna_post", "feature_space", "num_real", "num_images", "num_patches",
            "soft_entropy_tau"} <= e.keys()
    assert e["feature_space"] == "demo" and e["num_images"] == 80 and e["num_real"] == 200 and e["num_patches"] == 256
    assert e["rfid"] > e["val_fid"] >= 0 and e["rfid_val"] > 0 and 0 <= e["ssim"] <= 1
    assert e["effective_size"] == pytest.approx(math.exp(e["entropy"]))
    assert all(0 <= e[k] <= 1 for k in ("cka_pre", "cka_post", "usage"))
    # usage against a direct pass over val with the frozen tokenizer (fp32, as the params say)
    tok, seen = load_tokenizer(paths.frozen_dir("gear")), set()
    with torch.no_grad():
        for x, _ in eval_batches(params(), "val", 32):
            seen |= set(tok.encode(x)[1].indices.flatten().tolist())
    assert e["usage"] == len(seen) / 64

    for arm in paths.AR_ARMS:
        assert main(["evaluate", "samples", "--arm", arm, "--size", "tiny", *CLI]) == 0
    s = json.loads(paths.eval_samples_json("gear", "tiny").read_text())
    assert {"fid", "is_mean", "is_std", "precision", "recall", "feature_space", "num_samples", "num_real",
            "ar_layers", "ar_cka", "ar_cknna", "ar_num_patches"} <= s.keys()
    assert s["feature_space"] == "demo" and s["num_samples"] == NUM_SAMPLES and s["num_real"] == 200
    assert s["ar_layers"] == [1, 2, 3, 4] and set(s["ar_cka"]) == {"1", "2", "3", "4"}
    assert all(0 <= v <= 1 for v in s["ar_cka"].values()) and s["is_mean"] >= 1 and s["fid"] > 0

    # the report over these JSONs and synthetic training metrics
    write_synthetic_metrics(params())
    assert main(["report", *CLI]) == 0
    md, page = (paths.REPORTS_DIR / "index.md").read_text(), (paths.REPORTS_DIR / "index.html").read_text()
    assert {"index.md", "index.html", "curves_tiny.png", "codebook_tune.png", "ar_layers_tiny.png",
            "samples_baseline_tiny.png", "samples_gear_tiny.png"} <= {f.name for f in paths.REPORTS_DIR.iterdir()}
    row = next(line for line in md.splitlines() if line.startswith("| tiny | gear |"))
    assert row == "| " + " | ".join(["tiny", "gear", report.fmt(s["fid"]), report.fmt(s["is_mean"]),
                                      report.fmt(s["precision"]), report.fmt(s["recall"]), "demo",
                                      str(NUM_SAMPLES), "200 train"]) + " |"
    row = next(line for line in md.splitlines() if line.startswith("| gear |"))
    assert row.split(" | ")[1:3] == [report.fmt(e["rfid"]), report.fmt(e["rfid_val"])]
    assert page.count("data:image/png;base64,") == 5 and page.count("<table>") == 5

    # bad arguments and stale or missing inputs: one line, exit 2, before compute
    capsys.readouterr()
    assert main(["evaluate", "tokenizer", "--arm", "nope", *CLI]) == 2
    assert main(["evaluate", "samples", "--arm", "ste", "--size", "tiny", *CLI]) == 2
    for stale in ("metrics.max_real=100", "metrics.feature_space=dinov2"):
        assert main(["evaluate", "tokenizer", "--arm", "gear", *CLI, f"--set={stale}"]) == 2
        assert "rerun `gear evaluate real`" in capsys.readouterr().err
    weights = "tokenizer.safetensors"  # another tokenizer than the AR was trained on
    shutil.copyfile(paths.frozen_dir("gear") / weights, paths.frozen_dir("baseline") / weights)
    assert main(["evaluate", "samples", "--arm", "baseline", "--size", "tiny", *CLI]) == 2
    assert "trained on other tokens" in capsys.readouterr().err
    (paths.samples_dir("baseline", "tiny") / "samples.npz").unlink()
    assert main(["evaluate", "samples", "--arm", "baseline", "--size", "tiny", *CLI]) == 2
    assert "samples.npz not found" in capsys.readouterr().err


def test_identical_real_and_samples_give_zero_fid(ws):
    p = params("metrics.real_split=val", "metrics.max_real=1000")
    evaluate.run(p, "real")
    real, _ = evaluate.read_images(p, "val")                            # all 80 val images, shard order
    write_samples("gear", "tiny", real)
    evaluate.run(p, "samples", arm="gear", size="tiny")
    s = json.loads(paths.eval_samples_json("gear", "tiny").read_text())
    assert abs(s["fid"]) < 1e-4 and s["precision"] == 1.0 and s["recall"] == 1.0 and s["num_real"] == 80


def test_val_vs_train_fid_small_and_monotone_in_blur_and_noise(ws):
    """The issue's check: FID(val, train) is small and grows as val is degraded more."""
    p = params("metrics.max_real=1000")
    evaluate.run(p, "real")                                             # all 320 train images
    rt = setup(p)
    fm = FeatureModel(evaluate.feature_extractor(p, rt.device), rt.device, 32, logits=False)
    real = read_real_cache(paths.real_stats_dir(), evaluate.real_summary(p)["cache_key"], fm.ext)
    val, _ = evaluate.read_images(p, "val")
    fid = lambda x: frechet_distance(fid_statistics(fm.extract(x, 32)["features"]), real.stats)  # noqa: E731
    blur = [fid(np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(r))) for i in val]))
            for r in (0.75, 1.5, 3.0)]
    rng = np.random.default_rng(0)
    noise = [fid(np.clip(val + rng.normal(0, s, val.shape), 0, 255).astype(np.uint8)) for s in (16, 32, 64)]
    base = fid(val)
    assert 0 < base < blur[0] < blur[1] < blur[2] and base < noise[0] < noise[1] < noise[2]
    assert base < 0.25 * fid(_smooth_images(80, 5))                      # small next to an unrelated image set


# ---- report -------------------------------------------------------------------------------------

def test_steps_to_reach():
    s = np.arange(0, 101, 10)
    r = report.steps_to_reach((s, np.full(11, 3.0)), (s, np.array([4.0] * 4 + [2.0] * 7)))
    # smoothed GEAR: ..., (4,4,4,4,2)/5 = 3.6 at 40, 3.2 at 50, 2.8 at 60 <= 3
    assert r == {"baseline_final": 3.0, "gear_final": 2.0, "baseline_steps": 100, "gear_reach_step": 60,
                 "ratio": 100 / 60}
    assert report.steps_to_reach((s, np.full(11, 3.0)), (s, np.full(11, 3.5)))["ratio"] is None
    assert np.allclose(report.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])


def _synthetic_evals(p) -> None:
    write_json(paths.real_stats_dir() / "summary.json", {"feature_space": "demo", "extractor": "x", "num_real": 200,
                                                          "real_split": "train", "resolution": 32})
    for i, arm in enumerate(paths.tokenizer_arms(p)):
        write_json(paths.eval_tokenizer_json(arm), {
            "rfid": 1.5 + i, "rfid_val": 1.25, "val_fid": 0.5, "psnr": 25.0, "ssim": 0.875, "usage": 0.5,
            "entropy": 3.0, "effective_size": math.exp(3.0), "cka_pre": 0.173 - 0.066 * i, "cknna_pre": 0.25,
            "cka_post": 0.125, "cknna_post": None, "feature_space": "demo", "num_images": 80, "real_split": "train",
            "num_real": 200, "cknna_k": 10, "teacher": "demo", "num_patches": 256})
    for i, arm in enumerate(paths.AR_ARMS):
        write_json(paths.eval_samples_json(arm, "tiny"), {
            "fid": 20.16 - 3.2 * i, "is_mean": 5.5, "precision": 0.75, "recall": 0.5, "feature_space": "demo",
            "num_samples": 256, "num_real": 200, "real_split": "train", "ar_layers": [1, 2],
            "ar_cka": {"1": 0.1 + i / 10, "2": 0.2}, "ar_cknna": {"1": None, "2": 0.3}, "ar_num_patches": 256})


def test_report_tables_curves_and_missing_inputs(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(world / "samples", "samples")
    p = params()
    _synthetic_evals(p)
    write_synthetic_metrics(p)
    report.run(p)
    md, page = (paths.REPORTS_DIR / "index.md").read_text(), (paths.REPORTS_DIR / "index.html").read_text()
    for text in (md, page):
        for needle in ("gFID", "precision", "rFID", "PSNR", "CKNNA pre", "eff. size", "speed-up", "Feature space: demo",
                       "eval/samples/gear/tiny.json", "eval/tokenizer/ste.json", "eval/real/summary.json",
                       "metrics/tune/gear/plots/metrics/usage.tsv", "metrics/train_ar/gear/tiny/plots/metrics/ntp.tsv",
                       "metrics/teacher/metrics.json", "samples/gear/tiny/grid.png"):
            assert needle in text, needle
    lines = md.splitlines()
    assert "| tiny | baseline | 20.16 | 5.5 | 0.75 | 0.5 | demo | 256 | 200 train |" in lines
    assert "| tiny | gear | 16.96 | 5.5 | 0.75 | 0.5 | demo | 256 | 200 train |" in lines
    assert "| gear | 2.5 | 1.25 | 25 | 0.875 | 0.5 | 3 | 20.09 | 0.107 | 0.25 | 0.125 | n/a | demo |" in lines
    assert "| tiny | gear | 256 | 0.2 / 0.2 | n/a / 0.3 |" in lines
    # steps to reach: NTP at 60 of 100 -> 1.667; alignment never -> n/a
    assert "| tiny | NTP loss | 3 | 2 | 100 | 60 | 1.667 |" in lines
    assert "| tiny | alignment loss | -0.5 | -0.2 | 100 | n/a | n/a |" in lines
    assert "| train_ar/gear/tiny | val_ntp | 3.5 |" in lines and "| teacher | val_acc | 0.25 |" in lines
    assert not any("| lr |" in line for line in lines)                  # only the listed final keys
    # self-contained HTML: every image inline, nothing fetched
    srcs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(srcs) == 5 and all(x.startswith("data:image/png;base64,") for x in srcs)
    assert page.count("<table>") == 5

    # a missing input: one line naming it, exit 2, reports/ left as it was
    before = _tree(paths.REPORTS_DIR)
    report._tsv("tune", "ste", "usage").unlink()
    capsys.readouterr()
    assert main(["report", *CLI]) == 2
    err = capsys.readouterr().err
    assert "metrics/tune/ste/plots/metrics/usage.tsv not found" in err and err.count("\n") == 1
    assert _tree(paths.REPORTS_DIR) == before
    paths.eval_tokenizer_json("ste").unlink()
    with pytest.raises(ArtifactError, match="eval/tokenizer/ste.json not found"):
        report.run(p)
