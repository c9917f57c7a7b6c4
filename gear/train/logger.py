"""Metrics that DVC reads, written with dvclive on rank 0.

The full history also lives in the training state (`state_dict`), because DVC and Snakemake delete
a stage's declared metrics folder before re-running it: on resume the history is replayed into a
fresh dvclive folder, so a killed-and-resumed run ends with exactly the files of an uninterrupted
one.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("DVCLIVE_LOGLEVEL", "ERROR")


class MetricsLog:
    def __init__(self, directory: str | Path, rt, history: list[dict] | None = None):
        self.rt = rt
        self.history: list[dict] = []
        self.live = None
        if rt.is_main:
            from dvclive import Live

            self.live = Live(str(directory), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)
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
        if self.live is not None:
            self.live.end()
