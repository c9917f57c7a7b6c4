"""What made each artifact, stored in the artifact, and checked before any stage uses it.

Every job (gear/dag.py) records in its first output (`<dir>/provenance.json`, or a "provenance"
entry of a JSON file output):
  params    the keys its stage read (gear/guard.py sees every read; a subset of what it declares)
            with their values
  deps      the digest of each input's record as it was when the job ran
  code      for a stage whose code defines its output's format (Stage.code: the shards, the
            reports; DVC's code deps), the digest of that code: a report made by another version
            of gear/report reruns in Snakemake as it does in DVC
Before a stage does any work it checks its inputs, recursively up the DAG: an input is stale
when a key its stage read has another value now, when it was made from another version of one
of its own inputs, or when one of those is stale. It is refused in one line that names the
stale artifact furthest up the DAG, the key that differs, and the command that remakes it. So no order of `dvc repro`, `snakemake`,
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
from operator import attrgetter
from pathlib import Path

from gear import dag
from gear.dag import Job
from gear.io import ArtifactError, write_json
from gear.stagespec import FREE

RECORD = "provenance.json"
STATE = Path(".gear")
CODE_ROOT = Path(__file__).resolve().parents[1]  # the repository of the running gear package


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(v):
    import dataclasses

    return dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v


def current(job: Job, params, key: str):
    """The value a params key has for a job now: its row's params; a seeded job's compute.seed is
    its study seed; a section without the keys that change no output (gear/stagespec.py FREE)."""
    if key == "compute.seed" and job.decl.seeded:
        return job.wildcards["seed"]
    return _without_free(key, _plain(attrgetter(key)(dag.layout_for(params, job.row)[0])))


def values(job: Job, params, keys=None) -> dict:
    """{key: current value} of `keys` (default: every key the stage declares)."""
    return {k: current(job, params, k) for k in sorted(dag.leaves(job.decl.keys) if keys is None else keys)}


def _without_free(key: str, value):
    if not isinstance(value, dict):
        return value
    return {k: _without_free(f"{key}.{k}", v) for k, v in value.items() if f"{key}.{k}" not in FREE}


def digest(rec: dict | None) -> str | None:
    """An input's identity for the records made from it. Its code digest is left out: new shard or
    report code reruns that stage, and what follows reruns in each tool when its output changed
    (DVC by hash, Snakemake by date), not on every edit of a comment."""
    return None if rec is None else _digest({k: v for k, v in rec.items() if k != "code"})


def code_digest(job: Job) -> dict:
    """{path: digest of its bytes} of the code the stage declares (Stage.code), as DVC hashes it:
    relative to the working directory (the repository), else to the installed gear package."""
    out = {}
    for name in job.decl.code:
        path = Path(name) if Path(name).exists() else CODE_ROOT / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(path) if path.is_dir() else f.name}\0".encode() + f.read_bytes())
        out[name] = h.hexdigest()[:16]
    return out


def record(job: Job, params, reads=None) -> dict:
    """What made a job's output: the params keys the stage read (all it declares when not known)
    with their values, and the digest of each input's record as it was read."""
    rec = {"stage": job.stage, "wildcards": job.wildcards, "row": job.row, "params": values(job, params, reads),
           "deps": {str(dag.primary(d, params)): digest(read(d, params)) for d in dag.read_deps(job, params)}}
    return {**rec, "code": code_digest(job)} if job.decl.code else rec


def write(job: Job, params, reads=None) -> None:
    """Record a finished job in its first output (atomically)."""
    out, rec = dag.primary(job, params), record(job, params, reads)
    if job.decl.outs[0].kind == "dir":
        write_json(out / RECORD, rec)
    elif out.suffix == ".json" and out.is_file():
        write_json(out, {**json.loads(out.read_text()), "provenance": rec})


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


def own_difference(job: Job, params, rec: dict) -> str | None:
    """`key = recorded, params give current` for the first key the stage read whose value changed,
    or `another version of <code path>` for a stage whose declared code changed since (a record
    written before records held code is taken as current, as DVC's lock of it is)."""
    if job.decl.code and "code" in rec:
        now, was = code_digest(job), rec["code"]
        if changed := next((name for name in now if was.get(name) != now[name]), None):
            return f"another version of {changed}"
    for key, was in sorted((rec.get("params") or {}).items()):
        try:
            now = current(job, params, key)
        except AttributeError:  # a key this version of the params does not have
            return f"{key} (no longer a params key)"
        if now != was:
            return _first_difference({key: was}, {key: now})
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
    """Why the output of `job` is not what the current params call for, or None when it is: it is
    missing or unrecorded, an input up the DAG is stale (the one furthest up is named: remaking it
    comes first), a key the stage read has another value now, or an input changed since. Inputs
    that are gone are not walked: their record lives on in the digests of what was made from them."""
    memo = {} if memo is None else memo
    if job in memo:
        return memo[job]
    out, rec = dag.primary(job, params), read(job, params)
    remake = f"remake it: `{job.command(params_file)}`"
    why = None
    if not out.exists():
        why = f"{out} not found; make it: `{job.command(params_file)}`"
    elif rec is None:
        why = f"{out} has no provenance record (made by an older gear or by hand); {remake}"
    else:
        ups = [d for d in dag.read_deps(job, params) if dag.primary(d, params).exists()]
        why = next((w for w in (stale(d, params, params_file, memo) for d in ups) if w), None)
        if why is None and (diff := own_difference(job, params, rec)):
            why = f"{out} was made with {diff}; {remake}"
        for d in ups if why is None else ():
            path = str(dag.primary(d, params))
            if (rec.get("deps") or {}).get(path, "absent") != digest(read(d, params)):
                why = f"{out} was made from another {path}; {remake}"
                break
    memo[job] = why
    return why


def check_inputs(job: Job, params, params_file: str = "params.yaml") -> None:
    """Every input of `job` is what the current params call for, or one ArtifactError line."""
    check_jobs(dag.read_deps(job, params), params, params_file)


def check_jobs(jobs: list[Job], params, params_file: str) -> None:
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


def stamp_path(job: Job, params) -> Path:
    return STATE / "stamps" / f"{dag.primary(job, params)}.stamp"


def stamp(job: Job, params) -> str:
    """The job's stamp file (an input of its rule). Touched now when the job's existing output was
    made with other params than the current ones; else dated 1970, older than any output."""
    out, path = dag.primary(job, params), stamp_path(job, params)
    rec = read(job, params) if out.exists() else None
    fresh = rec is not None and own_difference(job, params, rec) is None
    path.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not fresh:
        path.write_text(json.dumps(values(job, params), sort_keys=True, default=str))  # now: newer than out
    else:  # older than any output: no rerun by itself (also after params that were changed and changed back)
        if not path.exists():
            path.write_text("")
        os.utime(path, (0, 0))
    return str(path)
