"""`gear train-ar` with compute.fsdp (FSDP2 over gloo, 2 processes) on a tiny workspace: it follows
the single-process loss curve at the same global batch, writes the weights DDP writes (loadable
by the normal loader), saves resumable state in the unsharded layout, and a run preempted
(SIGTERM) on one rank only and restarted ends identical to an uninterrupted FSDP run.

Workers are launched as torchrun launches them (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT per process), without the torchrun agent: each process can then be signalled alone.
"""
from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from gear import artifacts
from gear.config import params_from_dict
from gear.models.ar import configure_optimizer
from gear.stages import train_ar
from gear.train.ar_objective import build_ar
from tiny import ar_world, build_ar_world, finish_ranks, launch_ranks

ARM, SIZE, STEPS = "baseline", "custom", 12
RAW = ar_world(
    # 16 classes: 80 train images; 272 val images = 3 eval batches of 128, uneven over 2 ranks
    "data.embedded_train_per_class=5", "data.embedded_val_per_class=17",
    f"ar.steps={STEPS}", "ar.batch_size=8", "ar.grad_accum=2", "ar.warmup_steps=2",
    # dropout off: 2 processes draw other masks than 1 (the math is otherwise the same)
    "ar.class_dropout=0.0", "ar.token_dropout=0.0",
    "compute.log_every=1", "compute.save_every=3")
SEED = "seed0"  # the one study seed (default study.seeds)
OUT, METRICS = Path("models/ar", SEED, ARM, SIZE), Path("metrics/train_ar", SEED, ARM, SIZE)
STATE = Path(".gear_state/train_ar", SEED, ARM, SIZE, "state.pt")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Shards, a demo teacher, a random frozen tokenizer and its token shards."""
    root = tmp_path_factory.mktemp("fsdp")
    build_ar_world(root, yaml.safe_load(yaml.safe_dump(RAW)), ARM)
    return root


def workspace(base: Path, tmp: Path, name: str) -> Path:
    d = tmp / name
    shutil.copytree(base, d)
    return d


def launch(cwd: Path, *overrides: str) -> list[subprocess.Popen]:
    """Start `gear train-ar` as 2 gloo processes; output goes to rank<i>.log in cwd."""
    cmd = [sys.executable, "-m", "gear.cli", "train-ar", "--arm", ARM, "--size", SIZE, "--params", "params.yaml"]
    return launch_ranks(cwd, cmd + [a for kv in overrides for a in ("--set", kv)])


finish = finish_ranks


def run2(cwd: Path, *overrides: str) -> None:
    assert finish(cwd, launch(cwd, *overrides)) == [0, 0]


def history(d: Path) -> dict[str, list[float]]:
    """Every logged metric per step; tokens_per_s (wall clock) left out."""
    out = {}
    for tsv in sorted((d / METRICS / "plots/metrics").glob("*.tsv")):
        if tsv.stem != "tokens_per_s":
            with open(tsv) as f:
                out[tsv.stem] = [float(r[tsv.stem]) for r in csv.DictReader(f, delimiter="\t")]
    return out


def weights(d: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p) for p in sorted((d / OUT).glob("*.safetensors"))}


@pytest.fixture(scope="module")
def fsdp_run(base, tmp_path_factory) -> Path:
    d = workspace(base, tmp_path_factory.mktemp("runs"), "fsdp")
    run2(d, "compute.fsdp=true")
    return d


def test_fsdp_follows_one_process_and_writes_what_ddp_writes(base, fsdp_run, tmp_path, monkeypatch):
    one = workspace(base, tmp_path, "one")
    monkeypatch.chdir(one)
    train_ar.run(params_from_dict(RAW), ARM, SIZE)  # micro-batches of 4 here, of 2 per process there
    a, b = history(one), history(fsdp_run)
    assert set(a) == set(b) and {"ntp", "align", "grad_norm", "val_ntp", "val_ntp_raw"} <= set(a)
    assert len(b["ntp"]) == STEPS and b["ntp"][-1] < b["ntp"][0] - 0.2  # it learns
    for k in a:
        torch.testing.assert_close(torch.tensor(b[k]), torch.tensor(a[k]), rtol=1e-4, atol=1e-6, msg=k)

    model, cfg = artifacts.load_ar(fsdp_run / OUT)  # the normal loader (as `gear sample` uses it)
    assert not model.training and cfg["final"]["val_ntp"] == pytest.approx(b["val_ntp"][-1])
    assert not (fsdp_run / STATE).exists()

    ddp = workspace(base, tmp_path, "ddp")
    run2(ddp, "compute.fsdp=false")
    c = history(ddp)
    for k in a:
        torch.testing.assert_close(torch.tensor(c[k]), torch.tensor(a[k]), rtol=1e-4, atol=1e-6, msg=k)
    wa, wb = weights(ddp), weights(fsdp_run)
    assert list(wa) == ["ar.safetensors", "ar_raw.safetensors", "projector.safetensors"] and list(wb) == list(wa)
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for k in wa[name]:
            torch.testing.assert_close(wb[name][k], wa[name][k], rtol=1e-4, atol=1e-5, msg=f"{name}:{k}")


def test_fsdp_preempted_on_one_rank_resumes_exactly(base, fsdp_run, tmp_path):
    """SIGTERM reaches rank 1 only: both ranks agree on the step, save it and exit for requeue;
    the requeued run ends identical to the uninterrupted one."""
    d = workspace(base, tmp_path, "resumed")
    state = d / STATE
    procs = launch(d, "compute.fsdp=true")
    while not state.exists():  # mid-run: the first periodic save (step 3) is on disk
        assert all(p.poll() is None for p in procs), (d / "rank0.log").read_text()[-3000:]
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)
    assert finish(d, procs) == [128 + signal.SIGTERM] * 2
    saved = torch.load(state, weights_only=True)
    assert 3 <= saved["step"] < STEPS and not (d / OUT).exists()
    assert "state saved" in (d / "rank0.log").read_text()
    check_unsharded_layout(saved)

    run2(d, "compute.fsdp=true")
    wa, wb = weights(fsdp_run), weights(d)
    assert list(wa) == list(wb)
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for k in wa[name]:
            assert torch.equal(wa[name][k], wb[name][k]), f"{name}:{k} differs after resume"
    assert history(d) == history(fsdp_run)
    assert not state.exists()


def check_unsharded_layout(state: dict) -> None:
    """The FSDP state holds full CPU tensors laid out as an unsharded run's: module state dicts
    and opt.state_dict() (state keyed by parameter index, in param_groups order)."""
    ar, proj = build_ar(params_from_dict(RAW), SIZE, 32, 4, 16, 16)
    for key, module in (("ar", ar), ("ema", ar), ("proj", proj)):
        want = module.state_dict()
        assert list(state[key]) == list(want)
        assert all(state[key][k].shape == want[k].shape and state[key][k].device.type == "cpu" for k in want)
    opt = configure_optimizer(nn.ModuleList([ar, proj]), 1e-3, (0.9, 0.999), 0.0)
    order = [p for g in opt.param_groups for p in g["params"]]
    n0 = len(opt.param_groups[0]["params"])
    assert [g["params"] for g in state["opt"]["param_groups"]] == [list(range(n0)), list(range(n0, len(order)))]
    assert list(state["opt"]["state"]) == list(range(len(order)))
    for i, p in enumerate(order):
        s = state["opt"]["state"][i]
        assert s["exp_avg"].shape == s["exp_avg_sq"].shape == p.shape and s["step"].dim() == 0
