"""The Snakemake and DVC DAGs of a workflow folder as plain data, for the wiring tests. Nothing
runs a stage: Snakemake builds its job DAG through its API in a subprocess (it changes directory
and logging) or dry-runs, and DVC's stage graph comes from dvc.repo.Repo(...).index.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tiny import ROOT

BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))

# argv: the workflow folder, the target, then params files. For each params file, every job of
# the forced DAG with its inputs, outputs, upstream jobs, params, resources, shell command, and
# for the training jobs the sbatch line and --gres the slurm plugin would build.
DAG_SCRIPT = r"""
import contextlib, io, json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

root, target = Path(sys.argv[1]), sys.argv[2]
key = lambda job: [job.rule.name, dict(job.wildcards_dict)]


def jobs(params_file):
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(), snakefile=root / "Snakefile", workdir=root,
                          config_settings=ConfigSettings(config={"params": params_file}))
        dag_api = wf.dag(DAGSettings(targets={target}, forceall=True))
        with contextlib.redirect_stdout(io.StringIO()):
            dag_api.printd3dag()  # builds the DAG
        dag = wf._workflow.dag
        for job in dag.jobs:
            sbatch = None
            if job.resources.get("slurm_extra"):
                validate_slurm_extra(job)
                sbatch = get_submit_command(job, dict(run_uuid="u", slurm_logfile="l", comment_str="c",
                                                      account="-A acct", partition="-p gpu", workdir=None))
                sbatch += set_gres_string(job)
            yield dict(
                rule=job.rule.name, wildcards=dict(job.wildcards_dict), input=[str(f) for f in job.input],
                output=[str(f) for f in job.output], upstream=[key(d) for d in dag.dependencies[job]],
                params=dict(job.params.items()),
                resources={k: v for k, v in job.resources.items() if isinstance(v, (int, str)) and "TBD" not in str(v)},
                shell=job.shellcmd, sbatch=sbatch)


print(json.dumps({f: list(jobs(f)) for f in sys.argv[3:]}))
"""


def smk_jobs(root: Path, *params_files: str, target: str = "all") -> dict[str, list[dict]]:
    """params file -> every job of the forced Snakemake DAG of `target` in `root` (DAG_SCRIPT)."""
    out = subprocess.run([sys.executable, "-c", DAG_SCRIPT, str(root), target, *params_files], cwd=root, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def smk_dry(d: Path, *extra: str) -> dict[str, int]:
    """rule -> job count of what `snakemake -n all` would run in `d` ({} when nothing)."""
    res = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "1", "all", *extra], cwd=d, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    text = res.stdout + res.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def dvc_changed(d: Path) -> set[str]:
    """The DVC stages in `d` that `dvc repro` would run."""
    out = subprocess.run(["dvc", "status", "--json"], cwd=d, env=ENV, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout or "{}"))


def node(rule: str, wildcards: dict) -> str:
    """Snakemake job -> DVC stage name: tune + {seed: 0, variant: gear} -> tune@0-gear; an AR arm
    is part of the DVC stage's name: train_ar + {seed: 0, arm: gear, size: tiny} -> train_ar_gear@0-tiny."""
    w = dict(wildcards)
    if "arm" in w:
        rule = f"{rule}_{w.pop('arm')}"
    return rule + ("@" + "-".join(w.values()) if w else "")


def dvc_stages(dvcfile: str) -> dict:
    """name -> dict(cmd, deps, params, outs, metrics, plots, upstream) of one dvc.yaml of the repo,
    from DVC's own index (t2i/dvc.yaml holds the text-to-image room)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        index = repo.index
        stages = {}
        for s in index.stages:
            if s.dvcfile.relpath != dvcfile:
                continue
            deps = [d for d in s.deps if not hasattr(d, "params")]
            params = [k for d in s.deps if hasattr(d, "params") for k in d.params]
            stages[s.name] = dict(
                cmd=s.cmd, deps=[d.def_path for d in deps], params=params,
                outs=[o.def_path for o in s.outs if not o.metric and not o.plot],
                metrics=[o.def_path for o in s.outs if o.metric],
                plots=[o.def_path for o in s.outs if o.plot], upstream=set())
        for down, up in index.graph.edges:  # DVC edges point from a stage to what it depends on
            if down.name in stages:
                stages[down.name]["upstream"].add(up.name)
    return stages


def gear_argv(command: str) -> tuple[list[str], list[str]]:
    """Split a rule/stage command into (launcher prefix, argv after `gear`) without redirections."""
    tokens = shlex.split(command)
    tokens = tokens[: tokens.index(">")] if ">" in tokens else tokens
    i = tokens.index("gear")  # the first `gear` is the command (`gear` is also an arm)
    return tokens[:i], tokens[i + 1:]


def set_params(d: Path, **changes) -> None:
    """Set dotted keys of the params.yaml in `d` (a copied workflow), as a user edits it."""
    raw = yaml.safe_load((d / "params.yaml").read_text())
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
