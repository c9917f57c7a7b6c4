"""The one training loop (gear/train/loop.py): log and save cadence, resume into its parts, and a
stop signal that saves, exits for requeue and leaves the signal handlers as they were."""
from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
import torch

from gear.runtime import Runtime
from gear.train.loop import Loop, part
from gear.train.state import STOP_SIGNALS

STEPS = 5


def make_loop(tmp_path, sums: torch.Tensor, count_done: bool = False) -> Loop:
    params = SimpleNamespace(compute=SimpleNamespace(log_every=2, save_every=2))
    return Loop(params, Runtime(device=torch.device("cpu")), name="toy", steps=STEPS, state_dir=tmp_path / "state",
                compat={"toy": 1}, metrics_dir=tmp_path / "metrics", parts={"sums": part(sums.cpu, sums.copy_)},
                count_done=count_done)


def toy_step(sums: torch.Tensor, stop_at: int | None = None):
    def step_fn(step: int) -> int:
        sums.add_(step + 1)
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # preemption: handled after this step
        return step
    return step_fn


def row(step: int, out: int) -> dict:
    return {"out": out}


@pytest.mark.parametrize("count_done, logged", [(False, [0, 2, 4]), (True, [2, 4, 5])])
def test_rows_are_logged_at_the_cadence_and_the_state_is_cleared(tmp_path, count_done, logged):
    sums = torch.zeros(1)
    loop = make_loop(tmp_path, sums, count_done)
    loop.run(toy_step(sums), row)
    assert [r["step"] for r in loop.log.history] == logged
    assert loop.ckpt.path.exists()  # saved after steps 2 and 4
    loop.finish()
    assert not loop.ckpt.path.exists() and (tmp_path / "metrics" / "metrics.json").exists()


def test_a_stop_saves_exits_and_the_next_loop_resumes_where_it_stopped(tmp_path):
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    sums = torch.zeros(1)
    loop = make_loop(tmp_path, sums)
    with pytest.raises(SystemExit) as e:
        loop.run(toy_step(sums, stop_at=2), row)  # the signal arrives in the third step
    assert e.value.code == 128 + signal.SIGTERM
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before  # the handlers end with the loop

    resumed_sums = torch.zeros(1)
    resumed = make_loop(tmp_path, resumed_sums)
    assert resumed.start == 3 and resumed_sums.item() == 1 + 2 + 3
    assert [r["step"] for r in resumed.log.history] == [0, 2]  # the history replayed
    resumed.run(toy_step(resumed_sums), row)
    assert resumed_sums.item() == sum(range(1, STEPS + 1))
    assert [r["step"] for r in resumed.log.history] == [0, 2, 4]


def test_a_state_of_another_config_is_refused(tmp_path):
    sums = torch.zeros(1)
    loop = make_loop(tmp_path, sums)
    loop.save(1)
    params = SimpleNamespace(compute=SimpleNamespace(log_every=2, save_every=2))
    from gear.io import ArtifactError
    with pytest.raises(ArtifactError, match="another config"):
        Loop(params, Runtime(device=torch.device("cpu")), name="toy", steps=STEPS, state_dir=tmp_path / "state",
             compat={"toy": 2}, metrics_dir=tmp_path / "metrics", parts={"sums": part(sums.cpu, sums.copy_)})
