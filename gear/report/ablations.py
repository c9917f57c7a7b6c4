"""`gear ablation-report`: reports/ablations.md, reports/ablations.html and reports/ablations.json,
the paper's ablation tables (GEAR.md section 9, gear/report/paper.py) regenerated from this
pipeline's own outputs.

    gear ablation-report                 # after `snakemake ablations`: reads ablations/<row>/...
    gear ablation-report --from-dvc      # after `gear ablation-queue` + `dvc queue start`: the
                                         # experiments abl-<row> of `dvc exp show --json`, each
                                         # row's eval files read at its commit from the DVC cache
    gear ablation-report --from-dvc F    # the same from a saved `dvc exp show --json > F`: F only
                                         # names the commits; the files still come from this repo

One table per axis in the paper's layout: each row's gFID and rFID (with effective codebook size,
usage entropy and the eval AR's final NTP), the paper's label, gFID and rFID beside it, the default
row marked *. Per row: the mean ± std over study.seeds, the paired difference to the default
row (same seed: same data order and generators) with its t interval at study.confidence, and the
verdict on the paper's direction for that row (its gFID above or below its default's) in the
words of gear/report/verdicts.py. A row with no outputs
(not run yet, or failed) is listed as missing; a row that cannot run here (a hub teacher offline)
as skipped, with the reason. The files are written atomically; nothing else in reports/ changes.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl

from gear import ablations as ab
from gear import paths
from gear.io import ArtifactError, atomic_path, write_json
from gear.report.document import Table, to_html, to_markdown
from gear.report.paper import paper_row
from gear.report.readers import read_object
from gear.report.verdicts import (LEGEND, NOT_MEASURED, ONE_SEED, fmt_interval, fmt_mean_std, one_seed_note,
                                  paired_interval, reading, verdict)

# (column, file kind in ablations.outputs, key, lower is better or None: no difference shown)
METRICS = [("gFID", "samples", "fid", True), ("rFID", "tokenizer", "rfid", True),
           ("effective size", "tokenizer", "effective_size", None), ("usage entropy", "tokenizer", "entropy", None),
           ("final NTP", "train_ar", "ntp", True)]
EXPERIMENT_PREFIX = "abl-"
FILES = paths.ablation_report_files()


def experiment_name(row: ab.Row) -> str:
    return EXPERIMENT_PREFIX + row.name


# ----------------------------------------------------------------------------------------------
# collecting: values[row name][seed] = {metric key: float}, plus why a row has none


def _pick(files: dict[str, dict]) -> dict:
    return {key: float(files[kind][key]) for _, kind, key, _ in METRICS
            if isinstance(files[kind].get(key), (int, float))}


def _command(params, row: ab.Row, seed: int, kind: str) -> str:
    """The command that writes a row's file of this kind (ab.outputs)."""
    what = {"samples": f"evaluate samples --arm gear --size {ab.eval_size(params)}",
            "tokenizer": "evaluate tokenizer --arm gear", "train_ar": f"train-ar --arm gear --size {ab.eval_size(params)}"}
    return f"gear {what[kind]} --seed {seed}" + (f" --ablation {row.name}" if not row.default else "")


def from_pipeline(params) -> tuple[dict, dict, dict]:
    """(values, problems, sources[row]) read from the files the DAG wrote (a missing file: missing)."""
    values, problems, sources = {}, {}, {}
    for row in ab.grid(params):
        if ab.skip_reason(params, row):
            continue
        for seed in params.study.seeds:
            files = ab.outputs(params, row, seed)
            absent = [p for p in files.values() if not p.is_file()]
            if absent:
                problems.setdefault(row.name, f"missing: {absent[0]}" + (f" (+{len(absent) - 1})" if len(absent) > 1 else ""))
                continue
            sources.setdefault(row.name, []).extend(files.values())
            values.setdefault(row.name, {})[seed] = _pick({k: read_object(p, _command(params, row, seed, k))
                                                           for k, p in files.items()})
    return values, problems, sources


# An experiment abl-<row> is the whole dvc.yaml DAG at the row's params; `dvc exp show --json`
# names its commit. The eval JSONs are plain cached outs (dvc.yaml's only metric is
# reports/headline.json), so they are read at that commit through DVC's file system: its
# dvc.lock names each file's hash, the bytes come from this repository's DVC cache.

FINISHED = "success"  # `dvc exp show` executor state; a workspace `dvc exp run` has no executor


def dvc_experiments(show: list) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: {rev, state, params, timestamp}}: of one name, a
    finished run before a queued, running or failed one, then the newest."""
    found = {}
    for commit in show:
        for exp in commit.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state") or FINISHED
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                name = rev.get("name") or exp.get("name")
                if not name or not rev.get("rev"):
                    continue
                e = {"rev": rev["rev"], "state": "failed" if rev.get("error") else state,
                     "params": ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {},
                     "timestamp": data.get("timestamp") or ""}
                if name not in found or _rank(e) > _rank(found[name]):
                    found[name] = e
    return found


def _rank(exp: dict) -> tuple:
    return exp["state"] == FINISHED, exp["timestamp"]


def _dotted(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _read_experiment(params, name: str, rev: str) -> tuple[dict[int, dict], str | None]:
    """({seed: values}, the first problem) of the experiment at commit `rev`: a file it lacks (not
    run, or not in this repo's DVC cache) is "missing: <path> in <name>"."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError  # git's own errors, not all DvcExceptions

    fs = DVCFileSystem(".", rev=rev)  # lazy: opens the repo at rev on the first read
    values, problem = {}, None
    try:
        for seed in params.study.seeds:
            files, absent = {}, []
            for kind, path in ab.outputs(params, ab.DEFAULT, seed).items():  # an experiment runs the main DAG
                try:
                    text = fs.read_text(path.as_posix())
                except FileNotFoundError:
                    absent.append(path)
                    continue
                try:
                    files[kind] = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ArtifactError(f"{path} in {name}: not valid JSON ({e})") from None
                if not isinstance(files[kind], dict):
                    raise ArtifactError(f"{path} in {name}: expected a JSON object")
            if absent:
                in_lock = fs.exists(absent[0].as_posix())  # listed at that commit, bytes not here
                uncached = " (in its dvc.lock, not in this repo's DVC cache: dvc pull)" if in_lock else ""
                more = f" (+{len(absent) - 1})" if len(absent) > 1 else ""
                problem = problem or f"missing: {absent[0]} in {name}{more}{uncached}"
                continue
            values[seed] = _pick(files)
    except (DvcException, SCMError) as e:  # its commit not in this git (a saved show from elsewhere)
        return {}, f"missing: {name} at {rev[:7]} cannot be read here: {(str(e) or type(e).__name__).splitlines()[0]}"
    finally:
        fs.close()
    return values, problem


def from_experiments(params, show: list) -> tuple[dict, dict, dict]:
    """(values, problems, sources[row]) read from the experiments abl-<row> that `dvc exp show
    --json` lists, each at its own commit."""
    if not Path(".dvc").is_dir():
        raise ArtifactError("--from-dvc reads the experiments' files from the DVC repository: run it at its root "
                            "(no .dvc/ here)")
    exps = dvc_experiments(show)
    values, problems, sources = {}, {}, {}
    for row in ab.grid(params):
        if ab.skip_reason(params, row):
            continue
        name = experiment_name(row)
        exp = exps.get(name)
        if exp is None:
            problems[row.name] = f"missing: no experiment {name}"
            continue
        if exp["state"] != FINISHED:
            problems[row.name] = (f"failed: experiment {name} (dvc queue logs {name})" if exp["state"] == "failed"
                                  else f"missing: experiment {name} is {exp['state']}")
            continue
        wrong = [(k, v) for k, v in row.overrides if _dotted(exp["params"], k) != v]
        if wrong:
            k, v = wrong[0]
            problems[row.name] = f"stale: experiment {name} has {k} = {_dotted(exp['params'], k)!r}, the row {v!r}"
            continue
        seeds, problem = _read_experiment(params, name, exp["rev"])
        if problem:
            problems[row.name] = problem
        if seeds:
            values[row.name] = seeds
            sources[row.name] = [Path(f"{name}@{exp['rev'][:7]}")]
    return values, problems, sources


def read_dvc_show(source: str) -> list:
    """The parsed `dvc exp show --json`: from a saved file, or (source "") by running it. A saved file
    gives only each experiment's commit: its files are still read from this repository's git and DVC
    cache, so save it in this repository (e.g. `dvc exp show --json -A` for the experiments of every
    commit, where plain `dvc exp show` lists those of HEAD)."""
    if source:
        text = Path(source).read_text() if Path(source).is_file() else None
        if text is None:
            raise ArtifactError(f"--from-dvc {source}: file not found")
    else:
        try:
            r = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise ArtifactError("--from-dvc: the dvc command is not installed") from None
        if r.returncode != 0:
            raise ArtifactError(f"dvc exp show --json failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        text = r.stdout
    try:
        show = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"dvc exp show --json output is not JSON: {e}") from None
    if not isinstance(show, list):
        raise ArtifactError("dvc exp show --json output: expected a list of commits")
    return show


# ----------------------------------------------------------------------------------------------
# tables


def _direction(params, axis: str, row: ab.Row, diff) -> str:
    """The verdict on the paper's gFID direction for this row (vs its default), read here."""
    mine, base = paper_row(params, axis, row), paper_row(params, axis, ab.DEFAULT)
    if row.default or mine is None or diff is None or mine == base:
        return NOT_MEASURED
    return verdict(diff, 0.0, claimed_below=mine[2] < base[2])


def axis_table(params, axis: str, values: dict, problems: dict) -> pl.DataFrame:
    conf = params.study.confidence
    default = values.get(ab.DEFAULT.name, {})
    out = []
    for row in ab.table(params, axis):
        value = ab.default_value(params, ab.AXIS[axis]) if row.default else row.value
        line = {"value": f"{ab.value_name(value)}{'*' if row.default else ''}", "row": row.name}
        seeds = values.get(row.name, {})
        skip = ab.skip_reason(params, row)
        n = len(params.study.seeds)
        line["status"] = (f"skipped: {skip.split(';')[0]}" if skip else problems.get(row.name, "missing") if not seeds
                          else f"partial: {len(seeds)} of {n} seeds ({problems.get(row.name)})" if len(seeds) < n
                          else "ok")
        line["seeds"] = len(seeds)
        diff_gfid = None
        for label, _, key, lower in METRICS:
            vs = [v[key] for v in seeds.values() if key in v]
            line[label] = fmt_mean_std(vs) if vs else "n/a"
            if lower is not None and label in ("gFID", "rFID"):
                paired = [s for s in seeds if s in default and key in seeds[s] and key in default[s]]
                diff = (paired_interval([default[s][key] for s in paired], [seeds[s][key] for s in paired], conf)
                        if paired and not row.default else None)
                line[f"Δ {label} vs default"] = ("-" if row.default else "n/a" if diff is None else
                                                 f"{fmt_interval(diff)} {_reading(diff, lower)}")
                if label == "gFID":
                    diff_gfid = diff
        theirs = paper_row(params, axis, row)
        line["paper's row"] = theirs[1] if theirs else NOT_MEASURED
        line["paper's gFID"] = theirs[2] if theirs else None
        line["paper's rFID"] = theirs[3] if theirs else None
        line["paper's gFID direction"] = _direction(params, axis, row, diff_gfid)
        out.append(line)
    return pl.DataFrame(out)


def _reading(diff, lower: bool) -> str:
    r = reading(diff, lower, words=("better", "worse"))
    return "" if r == ONE_SEED else f"({r})"  # the interval cell already says n=1


def blocks(params, values: dict, problems: dict, sources: dict[str, list[Path]], origin: str) -> list:
    n = len(params.study.seeds)
    out = ["# GEAR ablations",
           f"The paper's ablation tables (GEAR.md section 9), one axis varied at a time with every other knob at its "
           f"default (marked *; the default row is the main DAG's GEAR arm). Numbers from {origin}. Each row: "
           f"tokenizer tuned end-to-end ({params.tune.steps} steps), frozen, a fresh `{ab.eval_size(params)}` AR "
           f"trained on its tokens ({params.ar.steps} steps), sampled and evaluated. Seeds: "
           f"{', '.join(map(str, params.study.seeds))}; values are mean ± std over seeds; Δ is the paired "
           f"difference row - default with a two-sided t interval at {params.study.confidence:.0%}. "
           f"\"paper's gFID direction\": the paper's sign of (row - default) gFID read here. {LEGEND} The paper's "
           "numbers are ImageNet-256 at full scale: compare directions, not values."]
    if n == 1:
        out.append(one_seed_note())
    for axis in ab.AXES:
        used = [p for row in ab.table(params, axis.name) for p in sources.get(row.name, [])]
        out += [f"## {axis.title}", Table(axis_table(params, axis.name, values, problems), used)]
    return out


def run(params, from_dvc: str | None = None) -> None:
    if from_dvc is None:
        values, problems, sources = from_pipeline(params)
        origin = "this pipeline's outputs (`snakemake ablations`)"
    else:
        values, problems, sources = from_experiments(params, read_dvc_show(from_dvc))
        origin = "the DVC experiments abl-<row> (`dvc exp show --json`), each read at its commit"
    if not values:
        first = next(iter(problems.items()), ("?", "no rows"))
        raise ArtifactError(f"no ablation row has outputs yet ({first[0]}: {first[1]}); run `snakemake ablations` "
                            "or the dvc queue first")
    doc = blocks(params, values, problems, sources, origin)
    with atomic_path(FILES["md"]) as tmp:
        tmp.write_text(to_markdown(doc))
    with atomic_path(FILES["html"]) as tmp:
        tmp.write_text(to_html(doc, paths.REPORTS_DIR, title="GEAR ablations"))
    write_json(FILES["json"], {"seeds": list(params.study.seeds), "values": {r: {str(s): v for s, v in d.items()}
                                                                             for r, d in values.items()},
                               "problems": problems})
    done = sum(1 for r in ab.grid(params) if r.name in values)
    print(f"ablation report: {FILES['md']} ({done} of {len(ab.grid(params))} rows with outputs)")

