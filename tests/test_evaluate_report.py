"""evaluate (real / tokenizer / samples) and report on a tiny offline world: 16 classes x (20 train,
5 val) embedded crops at 32 px, a random demo teacher, random frozen tokenizers and ARs."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from gear import paths
from gear.artifacts import load_tokenizer
from gear.cli import main
from gear.data.loader import eval_batches, read_batches
from gear.metrics import evaluation
from gear.metrics.features import FeatureModel, feature_extractor, fid_statistics, frechet_distance, read_real_cache
from gear.metrics.patches import PatchSample
from gear.report.document import fmt
from gear.runtime import setup
from gear.stages import evaluate
from gear.train.recon_check import to_uint8
from tiny import EVAL_CLI, EVAL_SAMPLES, EVAL_SEED, eval_params, smooth_images, tree_bytes, write_samples

SEED = EVAL_SEED


@pytest.fixture(scope="module")
def base(world):  # what `ws` (tests/conftest.py) copies
    return world


# ---- patch sampling ----------------------------------------------------------------------------

def test_patch_sample_is_uniform_aligned_and_batch_independent():
    ids = torch.arange(6 * 10, dtype=torch.float32).reshape(6, 10, 1)  # 6 images x 10 patches, row = its id
    feats = lambda s: dict(a=ids[s], b=torch.cat([2 * ids[s], -ids[s]], -1))  # noqa: E731
    one, two = PatchSample(17, seed=3), PatchSample(17, seed=3)
    one.add(**feats(slice(0, 6)))
    for s in (slice(0, 1), slice(1, 4), slice(4, 6)):
        two.add(**feats(s))
    assert len(one.keys) == 17 and torch.equal(one.feats["a"], two.feats["a"]) and torch.equal(one.keys, two.keys)
    a, b = one.feats["a"], one.feats["b"]
    assert torch.equal(b, torch.cat([2 * a, -a], -1))                      # rows stay paired across sets
    assert len(set(a.flatten().tolist())) == 17                           # no patch twice
    every = PatchSample(1000)  # bigger than the stream: everything is kept
    every.add(**feats(slice(0, 6)))
    assert torch.equal(every.feats["a"].flatten(), ids.flatten())
    assert every.similarity("b", "a", k=5)["cka"] == pytest.approx(1.0, abs=1e-12)  # linear map of a
    with pytest.raises(ValueError, match="disagree"):
        one.add(a=ids[:2], b=ids[:3])


# ---- evaluate through the CLI --------------------------------------------------------------------

def test_evaluate_and_report_end_to_end(ws, capsys):
    assert main(["evaluate", "real", *EVAL_CLI]) == 0
    summary = json.loads((paths.real_stats_dir() / "summary.json").read_text())
    assert summary["feature_space"] == "demo" and summary["extractor"] == "gear-custom-demo-teacher"
    assert summary["num_real"] == 200 and summary["real_split"] == "train" and summary["resolution"] == 32
    assert summary["weights"] == "models/teacher/model.safetensors" and len(summary["weights_sha256"]) == 64
    first = tree_bytes(paths.real_stats_dir())
    assert main(["evaluate", "real", *EVAL_CLI]) == 0                          # deterministic: same subset, same stats
    again = tree_bytes(paths.real_stats_dir())
    assert again == first

    for arm in ("baseline", "gear", "ste"):
        assert main(["evaluate", "tokenizer", "--arm", arm, *EVAL_CLI]) == 0
    assert tree_bytes(paths.real_stats_dir()) == again                         # later stages never write eval/real
    e = json.loads(paths.eval_tokenizer_json("gear", SEED).read_text())
    assert {"rfid", "rfid_val", "val_fid", "psnr", "ssim", "usage", "entropy", "effective_size", "cka_pre",
            "cknna_pre", "cka_post", "cknna_post", "feature_space", "num_real", "num_images", "num_patches",
            "soft_entropy_tau"} <= e.keys()
    assert e["feature_space"] == "demo" and e["num_images"] == 80 and e["num_real"] == 200 and e["num_patches"] == 256
    assert e["rfid"] > e["val_fid"] >= 0 and e["rfid_val"] > 0 and 0 <= e["ssim"] <= 1
    assert e["effective_size"] == pytest.approx(math.exp(e["entropy"]))
    assert all(0 <= e[k] <= 1 for k in ("cka_pre", "cka_post", "usage"))
    # usage against a direct pass over val with the frozen tokenizer (fp32, as the params say)
    tok, seen = load_tokenizer(paths.frozen_dir("gear", SEED)), set()
    with torch.no_grad():
        for x, _ in eval_batches(eval_params(), "val", 32):
            seen |= set(tok.encode(x)[1].indices.flatten().tolist())
    assert e["usage"] == len(seen) / 64

    for arm in paths.AR_ARMS:
        assert main(["evaluate", "samples", "--arm", arm, "--size", "tiny", *EVAL_CLI]) == 0
    g = json.loads(paths.eval_samples_json("baseline", "tiny", SEED).read_text())["fid"]
    s = json.loads(paths.eval_samples_json("gear", "tiny", SEED).read_text())
    assert {"fid", "is_mean", "is_std", "precision", "recall", "feature_space", "num_samples", "num_real",
            "ar_layers", "ar_cka", "ar_cknna", "ar_num_patches"} <= s.keys()
    assert s["feature_space"] == "demo" and s["num_samples"] == EVAL_SAMPLES and s["num_real"] == 200
    assert s["ar_layers"] == [1, 2, 3, 4] and set(s["ar_cka"]) == {"1", "2", "3", "4"}
    assert all(0 <= v <= 1 for v in s["ar_cka"].values()) and s["is_mean"] >= 1 and s["fid"] > 0

    # the report over these JSONs and synthetic training metrics (one seed)
    from report_worlds import write_training_metrics
    write_training_metrics(eval_params(), [SEED])
    assert main(["report", *EVAL_CLI]) == 0
    md, page = (paths.REPORTS_DIR / "index.md").read_text(), (paths.REPORTS_DIR / "index.html").read_text()
    assert {"curves_tiny.png", "codebook_tune.png", "ar_layers_tiny.png", "samples_baseline_tiny.png",
            "samples_gear_tiny.png"} == {f.name for f in (paths.REPORTS_DIR / "figures").iterdir()}
    row = next(line for line in md.splitlines() if line.startswith("| gFID |"))
    assert row.split(" | ")[1:3] == [fmt(g), fmt(s["fid"])]  # baseline, then gear, per seed
    assert "One seed: nothing can be concluded" in md and page.count("<table>") >= 8

    # bad arguments and stale or missing inputs: one line, exit 2, before compute
    capsys.readouterr()
    assert main(["evaluate", "tokenizer", "--arm", "nope", *EVAL_CLI]) == 2
    assert main(["evaluate", "samples", "--arm", "ste", "--size", "tiny", *EVAL_CLI]) == 2
    capsys.readouterr()
    # eval/real made under other params; with another feature space the stamped teacher (its record
    # lists every key it declares) is named first: either way one line and the command that remakes it
    for stale, remake in (("metrics.max_real=100", "gear evaluate real"), ("metrics.feature_space=dinov2", "gear ")):
        assert main(["evaluate", "tokenizer", "--arm", "gear", *EVAL_CLI, f"--set={stale}"]) == 2
        err = capsys.readouterr().err
        assert f"remake it: `{remake}" in err and len(err.strip().splitlines()) == 1, err
    weights = "tokenizer.safetensors"  # another tokenizer than the AR was trained on
    shutil.copyfile(paths.frozen_dir("gear", SEED) / weights, paths.frozen_dir("baseline") / weights)
    assert main(["evaluate", "samples", "--arm", "baseline", "--size", "tiny", *EVAL_CLI]) == 2
    assert "trained on other tokens" in capsys.readouterr().err
    (paths.samples_dir("baseline", "tiny", SEED) / "samples.npz").unlink()
    assert main(["evaluate", "samples", "--arm", "baseline", "--size", "tiny", *EVAL_CLI]) == 2
    assert "samples.npz not found" in capsys.readouterr().err


def read_images(params, split: str) -> np.ndarray:
    """uint8 (N, H, W, 3) images of the whole split as the evaluation reads them, in one process."""
    read = read_batches(params, split, evaluation.batch_plan(params, split, None))
    return np.concatenate([to_uint8(x) for x, _ in (out for out in read if out is not None)])


def test_identical_real_and_samples_give_zero_fid(ws):
    p = eval_params("metrics.real_split=val", "metrics.max_real=1000")
    evaluate.run(p, "real")
    real = read_images(p, "val")                            # all 80 val images, shard order
    write_samples("gear", "tiny", real)
    evaluate.run(p, "samples", arm="gear", size="tiny")
    s = json.loads(paths.eval_samples_json("gear", "tiny", SEED).read_text())
    assert abs(s["fid"]) < 1e-4 and s["precision"] == 1.0 and s["recall"] == 1.0 and s["num_real"] == 80


def test_val_vs_train_fid_small_and_monotone_in_blur_and_noise(ws):
    """The issue's check: FID(val, train) is small and grows as val is degraded more."""
    p = eval_params("metrics.max_real=1000")
    evaluate.run(p, "real")                                             # all 320 train images
    rt = setup(p)
    fm = FeatureModel(feature_extractor(p, rt.device), rt.device, 32, logits=False)
    real = read_real_cache(paths.real_stats_dir(), evaluation.real_summary(p)["cache_key"], fm.ext)
    val = read_images(p, "val")
    fid = lambda x: frechet_distance(fid_statistics(fm.extract(x, 32)["features"]), real.stats)  # noqa: E731
    blur = [fid(np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(r))) for i in val]))
            for r in (0.75, 1.5, 3.0)]
    rng = np.random.default_rng(0)
    noise = [fid(np.clip(val + rng.normal(0, s, val.shape), 0, 255).astype(np.uint8)) for s in (16, 32, 64)]
    base = fid(val)
    assert 0 < base < blur[0] < blur[1] < blur[2] and base < noise[0] < noise[1] < noise[2]
    assert base < 0.25 * fid(smooth_images(80, 5))                      # small next to an unrelated image set
