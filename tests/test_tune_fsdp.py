"""`gear tune` with compute.fsdp (FSDP2 over gloo, 2 processes): the guide AR and its projector
are sharded, the tokenizer and discriminator stay DDP, and the run writes what the DDP run of the
same seed writes; preempted on one rank and requeued, it ends identical to an uninterrupted FSDP
run. Teacher and tokenizer-init have nothing to shard and say so in one line.

Workers are launched as torchrun launches them (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT per process), without the torchrun agent: each process can then be signalled alone.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import assert_same_outputs, finish_ranks, gear_cli, gear_proc, history, launch_ranks, sets

STEPS = 8
# save_every 3: a signal lands after the first save with most of the run still ahead. grad_clip 0:
# with clipping on (1.0, the default, active from step 2 here) the clip factor comes from a norm
# summed per shard under FSDP and per tensor under DDP, so the runs part by float32 rounding (max
# 6e-7 over 8 steps, measured); unclipped, the arithmetic is the same and so are the weights.
EXTRA = (f"tune.steps={STEPS}", "compute.save_every=3", "compute.precision=fp32", "tune.grad_clip=0")
MODEL, METRICS = "models/tune/seed0/{}", "metrics/tune/seed0/{}"
STATE = ".gear_state/tune/seed0/gear/state.pt"
TERM = 128 + signal.SIGTERM


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Shards, the demo teacher and the warm-up tokenizer (one process): what tune reads."""
    d = tmp_path_factory.mktemp("tune_fsdp")
    for stage in (["shard"], ["teacher"], ["tokenizer-init"]):
        gear_proc(d, stage, *EXTRA)
    return d


def workspace(base: Path, tmp: Path, name: str) -> Path:
    d = tmp / name
    shutil.copytree(base, d)
    return d


def launch(cwd: Path, *extra: str, variant: str = "gear") -> list[subprocess.Popen]:
    """`gear tune` as 2 gloo processes; stderr goes to rank<i>.log in cwd."""
    return launch_ranks(cwd, [sys.executable, "-m", "gear.cli", "tune", "--variant", variant, "--params",
                              str(Path(__file__).resolve().parents[1] / "params.yaml"), *sets(*EXTRA, *extra)])


finish = finish_ranks


def weights(d: Path, variant: str = "gear") -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p) for p in sorted((d / MODEL.format(variant)).glob("*.safetensors"))}


@pytest.fixture(scope="module")
def runs(base, tmp_path_factory):
    """run(variant, fsdp): the folder of one uninterrupted 2-process run, made once."""
    made = {}

    def run(variant: str, fsdp: bool) -> Path:
        if (variant, fsdp) not in made:
            d = workspace(base, tmp_path_factory.mktemp("runs"), f"{variant}_{'fsdp' if fsdp else 'ddp'}")
            assert finish(d, launch(d, f"compute.fsdp={str(fsdp).lower()}", variant=variant)) == [0, 0]
            made[variant, fsdp] = d
        return made[variant, fsdp]
    return run


@pytest.mark.parametrize("variant", ["gear", "ste"])  # the AR frozen in the tokenizer step; one joint step
def test_fsdp_tune_writes_what_ddp_writes(runs, variant):
    ddp, fsdp = runs(variant, False), runs(variant, True)
    wa, wb = weights(ddp, variant), weights(fsdp, variant)
    assert list(wa) == ["ar.safetensors", "discriminator.safetensors", "projector.safetensors",
                        "tokenizer.safetensors", "tokenizer_raw.safetensors"] and list(wb) == list(wa)
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for k in wa[name]:
            assert torch.equal(wb[name][k], wa[name][k]), f"{name}:{k}"
    a, b = history(ddp / METRICS.format(variant)), history(fsdp / METRICS.format(variant))
    assert set(a) == set(b) and {"ntp", "align_hard", "grad_norm_ar", "loss_tokenizer"} <= set(a)
    assert variant == "ste" or "align_soft" in a
    norm = lambda h: torch.tensor([float(v) for _, v in h["grad_norm_ar"]])
    torch.testing.assert_close(norm(b), norm(a), rtol=1e-6, atol=0)  # summed per shard: rounding only
    assert {k: v for k, v in a.items() if k != "grad_norm_ar"} == {k: v for k, v in b.items() if k != "grad_norm_ar"}


def test_fsdp_tune_preempted_on_one_rank_resumes_exactly(base, runs, tmp_path):
    """SIGTERM reaches rank 1 only: both ranks save the same step (full tensors) and exit for
    requeue; the requeued run ends identical to the uninterrupted FSDP run."""
    d = workspace(base, tmp_path, "resumed")
    procs = launch(d, "compute.fsdp=true")
    while not (d / STATE).exists():  # the first periodic save (step 3) is on disk
        assert all(p.poll() is None for p in procs), (d / "rank0.log").read_text()[-3000:]
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)
    assert finish(d, procs) == [TERM, TERM]
    saved = torch.load(d / STATE, weights_only=True)
    assert 3 <= saved["step"] < STEPS and not (d / MODEL.format("gear")).exists()
    fsdp_run = runs("gear", True)
    out = weights(fsdp_run)  # the state holds full tensors, as an unsharded run's
    for part, file in (("ar", "ar"), ("ema_ar", "ar"), ("proj", "projector")):
        assert {k: v.shape for k, v in saved[part].items()} == {k: v.shape for k, v in out[f"{file}.safetensors"].items()}
    assert len(saved["opt_ar"]["state"]) == len(saved["ar"]) + len(saved["proj"])

    assert finish(d, launch(d, "compute.fsdp=true")) == [0, 0]
    assert_same_outputs(fsdp_run, d, MODEL.format("gear"), METRICS.format("gear"))
    assert not (d / STATE).exists()


@pytest.mark.parametrize("stage, said", [
    ("teacher", "compute.fsdp shards the ARs; teacher trains its demo ViT replicated (DDP)"),
    ("tokenizer-init", "compute.fsdp shards the ARs; tokenizer-init trains its conv tokenizer replicated (DDP)"),
])
def test_stages_with_nothing_to_shard_say_so(base, tmp_path, monkeypatch, capsys, stage, said):
    d = tmp_path / "d"
    shutil.copytree(base / "data", d / "data")
    shutil.copytree(base / "models/teacher", d / "models/teacher")
    monkeypatch.chdir(d)
    steps = ("teachers.demo_steps=1", "tokenizer.steps=1")
    assert gear_cli([stage], *EXTRA, *steps) == 0
    assert said not in capsys.readouterr().out  # compute.fsdp false: nothing to say
    shutil.rmtree(d / ".gear_state", ignore_errors=True)
    assert gear_cli([stage], *EXTRA, *steps, "compute.fsdp=true") == 0
    assert capsys.readouterr().out.splitlines().count(said) == 1
