"""Exact-resume training state: atomic save, safe load, RNG capture, preemption and NaN guards.

The state lives under params.compute.state_dir (never inside a declared output: Snakemake and DVC
delete those before a stage runs). One file, `state.pt`, written by rank 0 after gathering every
rank's RNG state; loaded with `weights_only=True` so a checkpoint cannot execute code, and with
`mmap=True` so that resuming N ranks does not hold N full copies in host memory.
"""
from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gear.io import ArtifactError, atomic_path
from gear.runtime import Runtime


class NonFiniteLossError(RuntimeError):
    pass


# ---- RNG state as plain tensors/ints (weights_only-safe) ---------------------------------------

def capture_rng() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- the checkpointer ------------------------------------------------------------------------

def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else f"{prefix.rstrip('.')}: checkpoint has {a!r}, params give {b!r}"


# Bumped whenever a stage's state gains or loses a key, so an older state is refused in one line
# instead of failing on a missing key. 2: log windows (loss means, codebook histogram) saved.
STATE_FORMAT = 2


class Checkpointer:
    """Save/load one stage's resumable state. `compat` is the plain-data config that a state must
    match to be resumed (model shapes, quantizer, ...): a mismatch is a clear error."""

    def __init__(self, directory: str | Path, rt, compat: dict):
        self.path = Path(directory) / "state.pt"
        self.rt = rt
        self.compat = compat

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            # mmap: tensors are paged in from the file as they are copied into the model, so N
            # processes on a node do not each hold a full host-memory copy of the state
            state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ArtifactError(f"training state {self.path} is unreadable ({type(e).__name__}); "
                                f"delete it to start over") from None
        if state.get("format", 1) != STATE_FORMAT:
            raise ArtifactError(f"training state {self.path} has format {state.get('format', 1)}, this gear "
                                f"writes {STATE_FORMAT}; delete it to start over")
        diff = _first_difference(state.get("compat"), self.compat)
        if diff:
            raise ArtifactError(f"training state {self.path} was written under another config ({diff}); "
                                f"delete it or restore the params")
        if state.get("world") != self.rt.world:
            raise ArtifactError(f"training state {self.path} was written with {state.get('world')} "
                                f"processes, this run has {self.rt.world}")
        restore_rng(state["rng"][self.rt.rank])
        return state

    def save(self, state: dict) -> None:
        rng = capture_rng()
        if self.rt.distributed:
            gathered: list = [None] * self.rt.world
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if self.rt.is_main:
            full = {**state, "rng": gathered, "compat": self.compat, "world": self.rt.world,
                    "format": STATE_FORMAT}
            with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
                torch.save(full, f)  # a file object: a full disk is OSError(ENOSPC), not torch's RuntimeError
        if self.rt.distributed:
            dist.barrier()

    def clear(self) -> None:
        """Called after the final outputs are written: the next run starts fresh."""
        if self.rt.is_main:
            self.path.unlink(missing_ok=True)


# ---- preemption and non-finite guards -------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def restores_stop_signals(stage_run):
    """A training stage's StopRequest handlers end with the stage. A process that runs several
    stages (the tests, a notebook) would otherwise keep them, and every process it forks later
    (a shard pool) would take SIGTERM as a stop request and outlive Pool.terminate()."""
    @functools.wraps(stage_run)
    def run(*args, **kwargs):
        saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        try:
            return stage_run(*args, **kwargs)
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
    return run


class StopRequest:
    """SIGTERM (preemption, scancel) and SIGUSR1 (SLURM's --signal warning) set a flag that the
    training loop checks after each step (`agreed`): it then saves the state and exits."""

    def __init__(self):
        self.signum: int | None = None
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def agreed(self, rt: Runtime) -> bool:
        """Whether every process saves and exits after this step. A signal reaches the processes at
        different steps (or only one of them) and the save is a collective, so the processes
        all-reduce (MAX) the signal number: all stop at the same step, with the signal one of them
        got. One tiny collective every step: a preempted job has seconds, not a log interval."""
        got = torch.tensor([self.signum or 0])  # a snapshot: a signal arriving now counts next step
        if rt.distributed:
            got = got.to(rt.device)
            dist.all_reduce(got, op=dist.ReduceOp.MAX)
        agreed = int(got.item())
        if agreed:
            self.signum = agreed
        return agreed != 0

    def exit_after_save(self, stage: str, step: int, rt: Runtime) -> None:
        """Exit so that the job is requeued; under SLURM with SIGUSR1 ask for the requeue."""
        if rt.is_main:
            print(f"gear {stage}: signal {self.signum} at step {step}: state saved, exiting for requeue",
                  file=sys.stderr)
            job = os.environ.get("SLURM_JOB_ID")
            if job and self.signum == signal.SIGUSR1:
                subprocess.run(["scontrol", "requeue", job], check=False)
        sys.exit(128 + int(self.signum))


def check_finite(stage: str, step: int, state_path: Path, **losses: torch.Tensor) -> None:
    """Stop the stage on the first NaN/Inf loss; the last good state stays on disk."""
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(f"{stage}: non-finite {name} ({value.item()}) at step {step}; "
                                     f"last good state kept at {state_path}")
