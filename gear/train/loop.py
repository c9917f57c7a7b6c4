"""The one training loop of every training stage: resume, the log and save cadence, stop signals,
the progress bar and the metrics log (dvclive, gear/train/logger.py).

A stage builds its models, optimizers and data stream, makes a `Loop` from what its resumable
state is made of (`parts`: objects with state_dict / load_state_dict), and runs its step body:

    loop = Loop(params, rt, name="tokenizer_init", steps=t.steps, state_dir=..., compat={...},
                metrics_dir=..., parts={"tokenizer": tok, "opt_g": opt_g, "data": stream, ...})
    loop.run(step, row, show=("recon", "usage"))   # step(i) -> out; row(i, out) -> metrics, when due
    ... final evaluation, outputs written (rank 0), loop.log.log(...) ...
    loop.finish()                                  # publish the metrics, drop the state

Making the loop resumes (the parts loaded, every process's RNG restored), so a stage makes it
after everything that draws random numbers at start-up; the loop itself draws none, so a resumed
run makes exactly the draws of an uninterrupted one. A row is logged every compute.log_every
steps and at the last; the state is saved every compute.save_every steps and on SIGTERM /
SIGUSR1 (agreed across processes), then the process exits for requeue.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from tqdm import tqdm

from gear.train.logger import MetricsLog
from gear.train.state import Checkpointer, StopRequest, check_finite, restores_stop_signals


def part(state_dict: Callable[[], Any], load_state_dict: Callable[[Any], Any]) -> SimpleNamespace:
    """A loop part made of two functions: a running-sum tensor's (`part(t.cpu, t.copy_)`), a
    sharded module's full state (gear/train/parallel.py)."""
    return SimpleNamespace(state_dict=state_dict, load_state_dict=load_state_dict)


class Loop:
    """`name` names the job in the bar and in messages (e.g. `tune[gear/seed 0]`); `count_done`:
    a row is numbered by the steps done and logged after every log_every of them (rather than by
    the step's 0-based index, the first step's included)."""

    def __init__(self, params, rt, *, name: str, steps: int, state_dir: str | Path, compat: dict,
                 metrics_dir: str | Path, parts: dict[str, Any], count_done: bool = False):
        self.rt, self.name, self.steps, self.parts = rt, name, steps, parts
        self.log_every, self.save_every = params.compute.log_every, params.compute.save_every
        self.count_done = count_done
        self.ckpt = Checkpointer(state_dir, rt, compat)
        state = self.ckpt.load()
        self.start = 0
        if state is not None:
            for key, part in parts.items():
                part.load_state_dict(state[key])
            self.start = state["step"]
        self.log = MetricsLog(metrics_dir, rt, state["metrics"] if state else None,
                              staging=self.ckpt.path.parent / "dvclive")
        self._window = (time.perf_counter(), 0)  # (start, steps) since the last log: steps_per_s

    def check_finite(self, step: int, **losses: torch.Tensor) -> None:
        """Stop on a NaN/Inf loss; the last good state stays on disk."""
        check_finite(self.name, step, self.ckpt.path, **losses)

    def logged(self, step: int) -> int:
        """The number a row after the 0-based `step` is logged at (count_done: the steps done)."""
        return step + 1 if self.count_done else step

    def steps_per_s(self) -> float:
        """Wall-clock steps per second since the last log (the one non-reproducible metric)."""
        start, n = self._window
        return n / (time.perf_counter() - start)

    @restores_stop_signals  # the stop handlers end with the loop (a forked pool must not inherit them)
    def run(self, step_fn: Callable[[int], Any], row_fn: Callable[[int, Any], dict],
            show: tuple[str, ...] = ()) -> None:
        """step_fn(step) trains one step and returns what row_fn(step, out) needs to make the
        metrics row when a log is due; `show`: the row's values on the bar."""
        stop = StopRequest()
        with tqdm(total=self.steps, initial=self.start, desc=self.name, disable=not self.rt.is_main) as bar:
            for step in range(self.start, self.steps):
                out = step_fn(step)
                start, n = self._window
                self._window = (start, n + 1)
                bar.update(1)
                done = step + 1
                if self.logged(step) % self.log_every == 0 or done == self.steps:
                    row = row_fn(step, out)
                    self.log.log(self.logged(step), **row)
                    bar.set_postfix({k: f"{row[k]:.4f}" for k in show if k in row})
                    self._window = (time.perf_counter(), 0)
                stopping = stop.agreed(self.rt)  # every process saves at the same step
                if done % self.save_every == 0 or stopping:
                    self.save(done)
                    if stopping:
                        bar.close()
                        stop.exit_after_save(self.name, done, self.rt)

    def save(self, step: int) -> None:
        """The state after `step` steps (a collective: every process calls it)."""
        self.ckpt.save({"step": step, **{k: p.state_dict() for k, p in self.parts.items()},
                        "metrics": self.log.state_dict()})

    def finish(self) -> None:
        """After the outputs are written: publish the metrics, and the next run starts fresh."""
        self.log.close()
        self.ckpt.clear()


def untrained_metrics(metrics_dir: str | Path, rt, staging: str | Path) -> None:
    """The declared metrics of a stage that had nothing to train (a hub teacher, a judge without
    attributes): one row saying so."""
    log = MetricsLog(metrics_dir, rt, staging=staging)
    log.log(0, trained=0.0)
    log.close()
