"""What made each artifact, stored in the artifact, and checked before any stage uses it.

Every job (gear/dag.py) records in its first output (`<dir>/provenance.json`, or a "provenance"
entry of a JSON file output):
  params    the values of exactly the keys its stage declares (the ones it could read)
  lineage   a digest of those values, its wildcards and the lineage of every input job: equal
            lineages mean the same params all the way up
  deps      the lineage of each input as it was when the job ran
Before a stage does any work it checks its inputs: an input whose lineage is not the one the
current params call for is refused in one line that names the first stale artifact up the DAG,
the key that differs, and the command that remakes it. So no order of `dvc repro`, `snakemake`,
`--config params=...` or preset switches can feed one stage outputs made with other params, and
`gear report` refuses a tree that mixes them. The record travels with the artifact (DVC caches
and checks it out with the folder), which is what makes it hold across both tools.

`stamp(job)` is the Snakemake side (workflow/rules/stages.smk): an input file per job that is
touched when the job's existing output was made with other params, so Snakemake reruns it (and,
by modification time, everything downstream) even when it holds no metadata for the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from gear import dag
from gear.dag import Job
from gear.io import ArtifactError, atomic_path

RECORD = "provenance.json"
STATE = Path(".gear")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(v):
    import dataclasses

    return dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v


def values(job: Job, params) -> dict:
    """The declared params of a job as it runs them (its row's params; a seeded job's compute.seed
    is its study seed)."""
    rp, _ = dag.layout_for(params, job.row)
    out = {k: _without_free(k, _plain(_get_raw(rp, k))) for k in dag._leaves(job.decl.keys)}
    if job.decl.seeded and "compute.seed" in out:
        out["compute.seed"] = job.wildcards["seed"]
    return out


def _without_free(key: str, value):
    """A section's value without the keys that never change what a stage writes (dag.FREE)."""
    if not isinstance(value, dict):
        return value
    return {k: _without_free(f"{key}.{k}", v) for k, v in value.items() if f"{key}.{k}" not in dag.FREE}


def _get_raw(params, key: str):
    for part in key.split("."):
        params = getattr(params, part)
    return params


def lineage(job: Job, params, memo: dict | None = None) -> str:
    memo = {} if memo is None else memo
    if job not in memo:
        memo[job] = _digest({"stage": job.stage, "wildcards": job.wildcards, "params": values(job, params),
                             "deps": [lineage(d, params, memo) for d in dag.deps(job, params)]})
    return memo[job]


def record(job: Job, params) -> dict:
    memo: dict = {}
    return {"stage": job.stage, "wildcards": job.wildcards, "row": job.row, "params": values(job, params),
            "lineage": lineage(job, params, memo),
            "deps": {str(dag.primary(d, params)): lineage(d, params, memo) for d in dag.deps(job, params)}}


def write(job: Job, params) -> None:
    """Record a finished job in its first output (atomically)."""
    out, rec = dag.primary(job, params), record(job, params)
    if job.decl.outs[0].kind == "dir":
        with atomic_path(out / RECORD) as tmp:
            tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    elif out.suffix == ".json" and out.is_file():
        data = json.loads(out.read_text())
        data["provenance"] = rec
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read(job: Job, params) -> dict | None:
    """The record of a job's existing output; None when the output or its record is absent."""
    out = dag.primary(job, params)
    try:
        if job.decl.outs[0].kind == "dir":
            f = out / RECORD
            return json.loads(f.read_text()) if f.is_file() else None
        if out.suffix == ".json" and out.is_file():
            rec = json.loads(out.read_text()).get("provenance")
            return rec if isinstance(rec, dict) else None
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _first_difference(have: dict, want: dict, prefix: str = "") -> str:
    """`key = recorded, params give current` for the first leaf that differs (sections descended)."""
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                return _first_difference(a, b, f"{prefix}{k}.")
            return f"{prefix}{k} = {a!r}, params give {b!r}"
    return "its inputs"


def stale(job: Job, params, params_file: str = "params.yaml", memo: dict | None = None) -> str | None:
    """Why the output of `job` is not what the current params call for, or None when it is. Of
    several stale artifacts the one furthest up the DAG is named (remaking it comes first), with
    the key that differs and the command that remakes it."""
    memo = {} if memo is None else memo
    out, rec = dag.primary(job, params), read(job, params)
    remake = f"remake it: `{job.command(params_file)}`"
    if not out.exists():
        return f"{out} not found; make it: `{job.command(params_file)}`"
    if rec is None:
        return f"{out} has no provenance record (made by an older gear or by hand); {remake}"
    if rec.get("lineage") == lineage(job, params, memo):
        return None
    ups = dag.read_deps(job, params)
    recorded = [d for d in ups if read(d, params) is not None]
    for d in recorded:  # the root cause first: an input made with other params
        why = stale(d, params, params_file, memo)
        if why:
            return why
    want = values(job, params)
    if rec.get("params") != want:
        return f"{out} was made with {_first_difference(rec.get('params') or {}, want)}; {remake}"
    for d in ups:  # else an input that is gone or was made by hand
        why = stale(d, params, params_file, memo)
        if why:
            return why
    return f"{out} was made from other versions of its inputs; {remake}"


def check_inputs(job: Job, params, params_file: str = "params.yaml") -> None:
    """Every input of `job` is what the current params call for, or one ArtifactError line."""
    check_jobs(dag.read_deps(job, params), params, params_file, f"gear {job.decl.cli.split()[0]}")


def check_jobs(jobs: list[Job], params, params_file: str, who: str) -> None:
    memo: dict = {}
    for d in jobs:
        why = stale(d, params, params_file, memo)
        if why:
            raise ArtifactError(f"input {why}")


# ---- one writer per output ---------------------------------------------------------------------


def output_lock(job: Job, params, params_file: str):
    """An exclusive lock on a job's outputs for the run's lifetime (gear.io.exclusive, under .gear/locks/
    so that a stage's own lock on its folder stays free): a second `gear` run of the same job (another
    terminal, a requeued job whose first copy still runs) stops in one line naming the running one,
    instead of interleaving its files."""
    from gear.io import exclusive

    out = dag.primary(job, params)
    return exclusive(out, job.command(params_file), lock=STATE / "locks" / (str(out).replace("/", "__") + ".lock"))


# ---- Snakemake: rerun jobs whose outputs another tool made with other params -------------------


def stamp(job: Job, params) -> str:
    """The job's stamp file (an input of its rule). Touched now when the job's existing output was
    made with other params than the current ones; else left as it is (created with an old time)."""
    out = dag.primary(job, params)
    path = STATE / "stamps" / f"{out}.stamp"
    rec = read(job, params) if out.exists() else None
    fresh = rec is not None and rec.get("params") == values(job, params)
    if out.exists() and not fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values(job, params), sort_keys=True, default=str))  # now: newer than out
    elif not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        os.utime(path, (0, 0))  # older than any output: no rerun by itself
    return str(path)
