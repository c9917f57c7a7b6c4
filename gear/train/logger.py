"""Metrics that DVC reads, written with dvclive on rank 0.

dvclive writes live into a staging folder under the stage's resumable state dir (never the
declared metrics folder), and `close()` publishes it over the declared folder in one atomic swap,
right after the stage has written its model: a run that is killed or fails keeps the old model
*and* the old metrics, never a new curve beside an old model.

The full history also lives in the training state (`state_dict`), because DVC and Snakemake delete
a stage's declared metrics folder before re-running it: on resume the history is replayed into a
fresh staging folder, so a killed-and-resumed run ends with exactly the files of an uninterrupted
one.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch

from gear.io import atomic_dir

os.environ.setdefault("DVCLIVE_LOGLEVEL", "ERROR")


class MetricsLog:
    """`directory`: the declared metrics folder; `staging`: where dvclive writes until close()
    (a folder under the stage's compute.state_dir)."""

    def __init__(self, directory: str | Path, rt, history: list[dict] | None = None, *, staging: str | Path):
        self.rt = rt
        self.directory, self.staging = Path(directory), Path(staging)
        self.history: list[dict] = []
        self.live = None
        if rt.is_main:
            from dvclive import Live

            shutil.rmtree(self.staging, ignore_errors=True)  # a failed run's curve: the history replays it
            self.live = Live(str(self.staging), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)
        for row in history or []:
            self.log(row["step"], **{k: v for k, v in row.items() if k != "step"})

    def log(self, step: int, **metrics: float) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        if self.live is not None:
            self.live.step = int(step)
            for name, value in row.items():
                if name != "step" and math.isfinite(value):
                    self.live.log_metric(name, value)
            self.live.make_summary()

    def last(self, name: str) -> float | None:
        for row in reversed(self.history):
            if name in row:
                return row[name]
        return None

    def state_dict(self) -> list[dict]:
        return list(self.history)

    def close(self) -> None:
        """End the log and publish it: the staged folder replaces the declared one whole. Call it
        right after the stage's model is written."""
        if self.live is not None:
            self.live.end()
            with atomic_dir(self.directory) as tmp:
                shutil.copytree(self.staging, tmp, dirs_exist_ok=True)
            shutil.rmtree(self.staging, ignore_errors=True)


class WindowMean:
    """Mean of each logged scalar over the steps since the last log (one batch is a noisy reading:
    at batch 16 the recon L1 of consecutive steps differs by up to 25%). Values stay tensors until
    `result`, so a GPU loop does not sync every step; keys may join late (the GAN terms after
    gan_start), each averaged over the steps it was seen. Part of the resumable state, so a run
    stopped between two logs resumes to the same numbers."""

    def __init__(self, device=None):
        self.device = device  # where a loaded window's sums go
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for k, v in logs.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def result(self, rt) -> dict[str, float]:
        """Window means, averaged over processes (every rank logs the same keys: they depend on
        the step only); resets the window."""
        from gear.runtime import all_reduce_mean

        row = {k: all_reduce_mean(s / self.counts[k], rt).item() for k, s in sorted(self.sums.items())}
        self.sums, self.counts = {}, {}
        return row

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])
