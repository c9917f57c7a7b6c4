"""Fault tolerance: a training stage killed at any moment and restarted ends exactly like an
uninterrupted run; SIGTERM saves and exits for requeue; DDP (gloo, 2 processes) follows the
single-process loss curve at the same global batch."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiny import assert_same_outputs, env, gear_cmd, gear_proc

STEPS = 24


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Shards and a demo teacher, shared by the tests (copied into each scratch folder)."""
    d = tmp_path_factory.mktemp("base")
    gear_proc(d, ["shard"])
    gear_proc(d, ["teacher"])
    return d


def scratch(base: Path, tmp: Path, name: str) -> Path:
    d = tmp / name
    shutil.copytree(base / "data", d / "data")
    shutil.copytree(base / "models", d / "models")
    return d


def kill_after_first_save(cwd: Path, stage_args: list[str], state: Path, *extra: str, sig=signal.SIGKILL) -> int:
    proc = subprocess.Popen(gear_cmd(stage_args, *extra), cwd=cwd, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not state.exists():
        assert proc.poll() is None, f"stage ended before its first save: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=300)
    return proc.returncode


@pytest.mark.parametrize("stage_args, model_dir, metrics_dir, state_rel", [
    (["tokenizer-init"], "models/tokenizer_init", "metrics/tokenizer_init", ".gear_state/tokenizer_init/state.pt"),
    (["tune", "--variant", "gear"], "models/tune/seed0/gear", "metrics/tune/seed0/gear",
     ".gear_state/tune/seed0/gear/state.pt"),
])
def test_sigkill_then_restart_equals_uninterrupted(base, tmp_path, stage_args, model_dir, metrics_dir, state_rel):
    # every save (after steps 4, 9, 14, 19) falls inside a log window (logs at 0, 8, 16): the window
    # means and the codebook histogram must survive the kill
    extra = (f"tokenizer.steps={STEPS}", f"tune.steps={STEPS}", "compute.save_every=5", "compute.log_every=8")
    a, b = scratch(base, tmp_path, "a"), scratch(base, tmp_path, "b")
    if stage_args[0] == "tune":
        for d in (a, b):
            gear_proc(d, ["tokenizer-init"], *extra)
    gear_proc(a, stage_args, *extra)
    assert kill_after_first_save(b, stage_args, b / state_rel, *extra) == -signal.SIGKILL
    assert not (b / model_dir).exists()  # no half-written output
    gear_proc(b, stage_args, *extra)
    assert_same_outputs(a, b, model_dir, metrics_dir)
    assert not (b / state_rel).exists()  # cleared once the outputs are written


def test_sigterm_saves_and_exits_for_requeue(base, tmp_path):
    extra = (f"tokenizer.steps={STEPS}", "compute.save_every=1000")  # only the signal saves
    d = scratch(base, tmp_path, "t")
    state = d / ".gear_state/tokenizer_init/state.pt"
    proc = subprocess.Popen(gear_cmd(["tokenizer-init"], *extra), cwd=d, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait until training runs (the staged dvclive folder appears at the first log), then SIGTERM
    while not (d / ".gear_state/tokenizer_init/dvclive/metrics.json").exists():
        assert proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "state saved" in proc.stderr.read().decode()
    saved = torch.load(state, weights_only=True)
    assert 0 < saved["step"] < STEPS
    assert not (d / "metrics/tokenizer_init").exists()  # metrics are published with the model, not before
    gear_proc(d, ["tokenizer-init"], *extra)  # the requeued job resumes and finishes
    assert (d / "models/tokenizer_init/tokenizer.safetensors").exists()


def test_incompatible_state_is_a_clear_error(base, tmp_path):
    d = scratch(base, tmp_path, "c")
    extra = (f"tokenizer.steps={STEPS}", "compute.save_every=5")
    kill_after_first_save(d, ["tokenizer-init"], d / ".gear_state/tokenizer_init/state.pt", *extra)
    r = gear_proc(d, ["tokenizer-init"], *extra, "tokenizer.codebook_size=64", check=False)
    assert r.returncode == 2
    assert "codebook_size" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a state from an older gear (before its format was recorded) is refused in one line too
    state = d / ".gear_state/tokenizer_init/state.pt"
    saved = torch.load(state, weights_only=True)
    del saved["format"]
    torch.save(saved, state)
    r = gear_proc(d, ["tokenizer-init"], *extra, check=False)
    assert r.returncode == 2
    assert "has format 1" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_ddp_follows_the_single_process_loss_curve(base, tmp_path):
    """2 gloo processes with per-rank batch 4 == 1 process with batch 8 (same samples per step).
    Batch-coupled terms are off (no GAN BatchNorm, no entropy term) so the math is identical."""
    common = ("tokenizer.gan_weight=0", "tokenizer.entropy_weight=0", "tokenizer.steps=8", "compute.precision=fp32")
    single, ddp = scratch(base, tmp_path, "single"), scratch(base, tmp_path, "ddp")
    gear_proc(single, ["tokenizer-init"], *common, "tokenizer.batch_size=8")
    cmd = gear_cmd(["tokenizer-init"], *common, "tokenizer.batch_size=4")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    r = subprocess.run(torchrun, cwd=ddp, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    curve = lambda d: [float(line.split("\t")[1]) for line in
                       (d / "metrics/tokenizer_init/plots/metrics/recon.tsv").read_text().splitlines()[1:]]
    a, b = curve(single), curve(ddp)
    assert len(a) == len(b) == 8  # one row per step (log_every=1)
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_the_stage_and_keeps_the_last_good_state(base, tmp_path, monkeypatch, capsys):
    from tiny import gear_cli

    d = scratch(base, tmp_path, "nan")
    monkeypatch.chdir(d)
    # an absurd learning rate blows the weights up within a few steps
    rc = gear_cli(["tokenizer-init"], f"tokenizer.steps={STEPS}", "tokenizer.lr=1e30", "tokenizer.grad_clip=0",
                  "compute.save_every=1")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert "tokenizer_init: non-finite" in err[-1] and "at step" in err[-1]
    saved = torch.load(d / ".gear_state/tokenizer_init/state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["tokenizer"].values() if v.is_floating_point())
    assert not (d / "models/tokenizer_init").exists()
