"""Preemption under DDP: SIGTERM reaching one rank only stops every rank at the same step (the
save is a collective), all exit for requeue with the same code, and the requeued run ends exactly
like an uninterrupted one. `gear tokenizer-init` on 2 gloo processes (the cheapest DDP loop).

Workers are launched as torchrun launches them (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT per process), without the torchrun agent: each process can then be signalled alone.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiny import PARAMS, assert_same_outputs, finish_ranks, gear_proc, launch_ranks, sets

STEPS = 12
# save_every 3: the signal lands after the first save with most of the run still ahead
EXTRA = (f"tokenizer.steps={STEPS}", "tokenizer.batch_size=4", "compute.precision=fp32", "compute.save_every=3")
MODEL, METRICS, STATE = "models/tokenizer_init", "metrics/tokenizer_init", ".gear_state/tokenizer_init/state.pt"
TERM = 128 + signal.SIGTERM


def launch(cwd: Path) -> list[subprocess.Popen]:
    """`gear tokenizer-init` as 2 gloo processes; stderr goes to rank<i>.log in cwd."""
    # params.yaml copied once per workspace: every launch reads the same one, even if it is edited meanwhile
    return launch_ranks(cwd, [sys.executable, "-m", "gear.cli", "tokenizer-init", "--params", "params.yaml",
                              *sets(*EXTRA)])


def finish(cwd: Path, procs: list[subprocess.Popen]) -> list[int]:
    return finish_ranks(cwd, procs, timeout=120)  # a hang: ranks stopping at different steps


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shards")
    shutil.copy(PARAMS, d / "params.yaml")
    gear_proc(d, ["shard"])
    return d


def test_sigterm_on_one_rank_stops_both_at_one_step_and_resumes_exactly(shards, tmp_path):
    a, b = (tmp_path / n for n in ("a", "b"))
    for d in (a, b):
        shutil.copytree(shards / "data", d / "data")
        shutil.copy(shards / "params.yaml", d)
    assert finish(a, launch(a)) == [0, 0]  # uninterrupted

    procs = launch(b)
    while not (b / STATE).exists():  # the first periodic save (step 3) is on disk
        assert all(p.poll() is None for p in procs), (b / "rank1.log").read_text()[-3000:]
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)  # rank 1 only: rank 0 learns of it through the all-reduce
    assert finish(b, procs) == [TERM, TERM]
    saved = torch.load(b / STATE, weights_only=True)
    said = re.findall(r"signal (\d+) at step (\d+): state saved", (b / "rank0.log").read_text())
    assert said == [(str(int(signal.SIGTERM)), str(saved["step"]))]  # the step both ranks saved
    assert 3 <= saved["step"] < STEPS and not (b / MODEL).exists()

    assert finish(b, launch(b)) == [0, 0]  # the requeued job
    assert_same_outputs(a, b, MODEL, METRICS)
    assert not (b / STATE).exists()


def test_stop_handlers_end_with_the_stage():
    """A stage's SIGTERM / SIGUSR1 handlers are the previous ones again once it returns or exits:
    left installed, every process forked later (a shard pool) would survive Pool.terminate()."""
    from gear.stages import tokenizer_init
    from gear.train.state import STOP_SIGNALS, StopRequest, restores_stop_signals

    @restores_stop_signals
    def stage(exit_code):
        stop = StopRequest()
        assert all(signal.getsignal(s) == stop._handle for s in STOP_SIGNALS)
        if exit_code is not None:
            sys.exit(exit_code)  # as exit_after_save leaves a preempted stage

    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    stage(None)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    with pytest.raises(SystemExit):
        stage(TERM)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    gear_dir = Path(tokenizer_init.__file__).parents[1]
    building = {f.relative_to(gear_dir).as_posix() for f in gear_dir.rglob("*.py") if "StopRequest()" in f.read_text()}
    assert building == {"train/loop.py"}  # every training stage stops through the one loop (tests/test_loop.py)
