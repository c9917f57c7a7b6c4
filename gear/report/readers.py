"""Checked input readers of the reports.

Every input is named with the command that (re)writes it; a missing, corrupt or malformed file is
a one-line ArtifactError naming the file and that command, raised before any report work.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl

from gear.io import ArtifactError

Need = tuple[Path, str]  # (file, the command that writes it)


def tsv(folder: Path, name: str) -> Path:
    """dvclive plot file <folder>/plots/metrics/<name>.tsv."""
    return folder / "plots" / "metrics" / f"{name}.tsv"


def bad(path: Path, what: str, cmd: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}; rerun `{cmd}`")


def check_present(need: list[Need], everything: str) -> None:
    """Refuse in one line when any input is missing: the first one, with its command."""
    missing = [(p, cmd) for p, cmd in need if not Path(p).is_file()]
    if missing:
        p, cmd = missing[0]
        raise ArtifactError(f"input {p} not found ({len(missing)} missing): run `{cmd}` (or `{everything}`)")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_object(path: Path, cmd: str) -> dict:
    """A JSON file that must hold an object."""
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"input {path} not found: run `{cmd}`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(path, f"not valid JSON ({e})", cmd) from None
    if not isinstance(d, dict):
        raise bad(path, "expected a JSON object", cmd)
    return d


def read_curve(path: Path, cmd: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a dvclive TSV (columns step, <name>[, timestamp]), finite and non-empty."""
    try:
        df = pl.read_csv(path, separator="\t")
    except FileNotFoundError:
        raise ArtifactError(f"input {path} not found: run `{cmd}`") from None
    except Exception as e:  # polars' own parse errors: a corrupt TSV
        raise bad(path, f"unreadable dvclive TSV ({type(e).__name__})", cmd) from None
    name = [c for c in df.columns if c not in ("step", "timestamp")]
    if "step" not in df.columns or len(name) != 1 or df.height == 0:
        raise bad(path, "expected a non-empty dvclive TSV with columns step and one metric", cmd)
    steps, values = df["step"].to_numpy(), df[name[0]].to_numpy().astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise bad(path, "non-finite values in the curve", cmd)
    return steps, values


def braced(items) -> str:
    """Shell brace form of several names ("{0,1,2}"), the name itself for one: tables name their
    files compactly."""
    items = [str(x) for x in items]
    return items[0] if len(items) == 1 else "{" + ",".join(items) + "}"
