"""The text-to-image chain on a tiny workspace, through the real CLI: t2i-shard, t2i-encode,
t2i-judge, t2i-tokenize (both arms), t2i-train, t2i-sample, t2i-evaluate and t2i-report, on random
tiny frozen tokenizers standing in for the class-conditional DAG's (16 px, 4x4 tokens, K = 32)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gear import paths as main_paths
from gear import dag
from gear.artifacts import write_tokenizer
from gear.config import load_params
from gear.io import save_tensors, write_json
from gear.models.demo_teacher import DemoViT
from gear.models.tokenizer import Tokenizer, TokenizerConfig
from gear.stages import t2i_sample, t2i_train
from gear.t2i import paths
from gear.train import loop as train_loop
from tiny import PARAMS, TINY, gear_cli, history, interrupt, stamp, tree_bytes

SEED = 0


def params(*extra):
    return load_params(PARAMS, [*TINY, *extra])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A demo teacher, the two frozen tokenizers and the room's data stages, built once."""
    root = tmp_path_factory.mktemp("t2i")
    with contextlib.chdir(root):
        p = params()
        torch.manual_seed(0)
        vit = DemoViT(image_size=16, patch=4, dim=32, depth=1, heads=2, num_classes=16)
        save_tensors(main_paths.teacher_dir() / "model.safetensors", vit.state_dict())
        write_json(main_paths.teacher_dir() / "config.json", {"teacher": "demo", "trained": True,
                                                              "architecture": vit.config, "classes": list("abcdefghijklmnop")})
        for arm, seed in (("baseline", None), ("gear", SEED)):
            torch.manual_seed(1 if seed is None else 2)
            write_tokenizer(main_paths.frozen_dir(arm, seed), Tokenizer(TokenizerConfig.from_params(p)), {"arm": arm})
        stamp(p, dag.Job.of("shard"), dag.Job.of("teacher"), dag.Job.of("freeze_baseline"),
              dag.Job.of("freeze", {"seed": SEED, "variant": "gear"}))
        for stage in (["t2i-shard"], ["t2i-encode"], ["t2i-judge"], ["t2i-tokenize", "--arm", "baseline"],
                      ["t2i-tokenize", "--arm", "gear"], ["t2i-evaluate", "real"]):
            assert gear_cli(stage) == 0, stage
    return root


def test_token_shards_are_byte_identical_and_match_the_tokenizer(ws):
    first = tree_bytes(paths.tokens_dir("gear", SEED))
    assert gear_cli(["t2i-tokenize", "--arm", "gear"]) == 0
    assert tree_bytes(paths.tokens_dir("gear", SEED)) == first
    man = json.loads((paths.tokens_dir("gear", SEED) / "manifest.json").read_text())
    assert man["grid"] == 4 and man["codebook_size"] == 32 and man["splits"]["train"]["count"] == 96
    assert man["text_len"] == 10 and man["text_dim"] == 16
    base_man = json.loads((paths.tokens_dir("baseline") / "manifest.json").read_text())
    assert base_man["tokenizer_sha256"] != man["tokenizer_sha256"]  # the arms differ in the tokenizer only


def test_chain_trains_samples_evaluates_and_reports(ws, capsys):
    for arm in paths.ARMS:
        for stage in (["t2i-train"], ["t2i-sample"], ["t2i-evaluate", "samples"]):
            assert gear_cli([*stage, "--arm", arm]) == 0, (stage, arm)
    cfg = json.loads((paths.ar_dir("gear", SEED) / "config.json").read_text())
    assert {f.name for f in paths.ar_dir("gear", SEED).iterdir()} >= {
        "ar.safetensors", "ar_raw.safetensors", "projector.safetensors", "ema_step3.safetensors",
        "ema_step6.safetensors", "config.json"}
    assert cfg["snapshots"] == {"3": "ema_step3", "6": "ema_step6"}
    with np.load(paths.samples_dir("gear", SEED) / "samples.npz") as f:
        assert f["images"].shape == (2 * 2 * 6 * 2, 16, 16, 3)   # steps x cfg x prompts x per_prompt
        assert sorted(set(f["step"].tolist())) == [3, 6] and sorted(set(f["cfg"].tolist())) == [1.0, 1.75]
    ev = json.loads(paths.eval_json("gear", SEED).read_text())
    assert [(r["step"], r["cfg_scale"]) for r in ev["snapshots"]] == [(3, 1.0), (3, 1.75), (6, 1.0), (6, 1.75)]
    for r in ev["snapshots"]:
        assert np.isfinite(r["fdd"]) and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
        assert set(r["prompt_accuracy"]) >= {"shape", "colour", "position", "all"}
    assert gear_cli(["t2i-report"]) == 0
    md = (ws / "reports" / "t2i.md").read_text()
    assert "not concluded (1 seed)" in md and "LlamaGen-REPA-1.0B" in md
    assert set(os.listdir(ws / "reports")) == {"t2i.md", "t2i.html", "t2i.json", "t2i_figures"}


def test_sampling_is_deterministic_and_follows_the_seed(ws):
    p = params("study.seeds=[0,1]")
    t2i_train.run(p, "baseline", seed=0)
    t2i_sample.run(p, "baseline", seed=0)
    first = tree_bytes(paths.samples_dir("baseline", SEED))
    t2i_sample.run(p, "baseline", seed=0)
    assert tree_bytes(paths.samples_dir("baseline", SEED)) == first
    shutil.copytree(paths.ar_dir("baseline", 0), paths.ar_dir("baseline", 1))  # same AR, another seed
    t2i_sample.run(p, "baseline", seed=1)
    with np.load(paths.samples_dir("baseline", 0) / "samples.npz") as a, \
            np.load(paths.samples_dir("baseline", 1) / "samples.npz") as b:
        assert not np.array_equal(a["indices"], b["indices"])


@pytest.mark.parametrize("kill", ["sigterm", "crash"])
def test_t2i_train_resumes_exactly(base, tmp_path, monkeypatch, kill):
    over = ("t2i.ar.steps=10", "t2i.ar.eval_steps=[4,10]", "compute.save_every=3")
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    monkeypatch.chdir(ref)
    t2i_train.run(params(*over), "gear")
    want, want_hist = tree_bytes(paths.ar_dir("gear", SEED)), history(paths.train_metrics_dir("gear", SEED))

    run = tmp_path / "run"
    shutil.copytree(base, run)
    monkeypatch.chdir(run)
    # sigterm: preemption during step 5 (after the step-4 snapshot); crash: right after the save at step 3
    interrupt(train_loop, lambda: t2i_train.run(params(*over), "gear"), kill, 5, monkeypatch)
    assert not paths.ar_dir("gear", SEED).exists()
    t2i_train.run(params(*over), "gear")
    assert tree_bytes(paths.ar_dir("gear", SEED)) == want
    assert history(paths.train_metrics_dir("gear", SEED)) == want_hist


def test_t2i_train_accumulates_and_checkpoints_through_the_shared_step(ws):
    """t2i.ar.grad_accum micro-steps with compute.grad_checkpointing (train-ar's step,
    gear/train/ar_objective.py) train the weights of one plain step on the whole batch (dropout
    off: the same arithmetic up to rounding)."""
    from safetensors.torch import load_file

    over = ("t2i.ar.caption_dropout=0.0", "t2i.ar.token_dropout=0.0", "t2i.ar.steps=3", "t2i.ar.eval_steps=[3]")
    weights = []
    for extra in ((), ("t2i.ar.grad_accum=2", "compute.grad_checkpointing=true")):
        t2i_train.run(params(*over, *extra), "gear")
        weights.append(load_file(paths.ar_dir("gear", SEED) / "ar_raw.safetensors"))
    plain, accum = weights
    assert set(plain) == set(accum)
    assert any(not torch.equal(plain[k], accum[k]) for k in plain)   # other arithmetic, truly run
    for k in plain:
        torch.testing.assert_close(accum[k], plain[k], rtol=1e-4, atol=1e-5)
    assert gear_cli(["t2i-train", "--arm", "gear"], "t2i.ar.grad_accum=3") == 2  # 8 pairs: not in 3 micro-steps


def test_t2i_sample_takes_cfg_interval_and_compiled_decoding(ws, capsys):
    """t2i.sample.cfg_interval and t2i.sample.compile reach the one sampler (gear/models/sampling.py)."""
    assert gear_cli(["t2i-train", "--arm", "gear"]) == 0
    assert gear_cli(["t2i-sample", "--arm", "gear"], "t2i.sample.cfg_interval=[0.5,0.25]") == 2
    assert "t2i.sample.cfg_interval = [0.5, 0.25]: must be [start, end]" in capsys.readouterr().err
    runs = []
    for extra in ((), ("t2i.sample.cfg_interval=[1.0,1.0]",), ("t2i.sample.compile=true",)):
        # a scale that makes the barely trained AR's small caption effect decide tokens
        assert gear_cli(["t2i-sample", "--arm", "gear"], "t2i.sample.cfg_scale=1000", *extra) == 0, extra
        with np.load(paths.samples_dir("gear", SEED) / "samples.npz") as f:
            runs.append((f["indices"], f["cfg"] > 1))
    (default, guided), (empty, _), (compiled, _) = runs
    assert guided.any() and np.array_equal(default[~guided], empty[~guided])
    assert not np.array_equal(default[guided], empty[guided])   # no token in the interval: no guidance
    assert np.array_equal(compiled, default)


def test_stale_and_missing_inputs_are_one_line_errors(ws, capsys):
    assert gear_cli(["t2i-train", "--arm", "gear"], "t2i.text.demo_dim=8") == 2  # captions encoded at 16
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t2i-encode" in err
    torch.manual_seed(5)
    write_tokenizer(main_paths.frozen_dir("gear", SEED), Tokenizer(TokenizerConfig.from_params(params())), {"arm": "gear"})
    assert gear_cli(["t2i-train", "--arm", "gear"]) == 2  # the tokenizer changed under the tokens
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stale" in err and "t2i-tokenize --arm gear --seed 0" in err
    assert gear_cli(["t2i-sample", "--arm", "baseline"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err
