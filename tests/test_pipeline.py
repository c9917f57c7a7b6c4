"""The Snakefile and dvc.yaml wire the same DAG through the one `gear` CLI, at gear.paths' paths.

Nothing runs a stage: Snakemake builds its job DAG through its API in a subprocess (dry), DVC's
stage graph comes from dvc.repo.Repo(...).index, and the slurm profile is exercised with `-n`.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from gear import paths
from gear.cli import STAGES, build_parser
from gear.config import load_params
from dags import BIN, dvc_stages, gear_argv, node, smk_jobs
from tiny import ROOT, copy_workflow

P = load_params(ROOT / "params.yaml")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc")
TRAIN_RULES = {"teacher", "tokenizer_init", "tune", "train_ar_baseline", "train_ar_gear", "sample_baseline",
               "sample_gear", "evaluate_real", "evaluate_tokenizer", "evaluate_tokenizer_baseline",
               "evaluate_samples_baseline", "evaluate_samples_gear"}  # the GPU rules (evaluate: distributed feature extraction)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the workflow files without outputs (an existing reports/ would satisfy `all`)."""
    d = copy_workflow(tmp_path_factory.mktemp("wf"))
    two_nodes = yaml.safe_load((ROOT / "presets/imagenet256.yaml").read_text())
    two_nodes["resources"]["train_nodes"] = 2
    (d / "two_nodes.yaml").write_text(yaml.safe_dump(two_nodes))
    return d


@pytest.fixture(scope="module")
def smk_all(workdir) -> dict[str, dict[str, dict]]:
    """params file -> stage name -> job, for the embedded default and two cluster settings."""
    result = smk_jobs(workdir, "params.yaml", "presets/imagenet256.yaml", "two_nodes.yaml")
    return {f: {node(j["rule"], j["wildcards"]): j for j in jobs if j["rule"] != "all"} for f, jobs in result.items()}


@pytest.fixture(scope="module")
def smk(smk_all) -> dict[str, dict]:
    return smk_all["params.yaml"]


@pytest.fixture(scope="module")
def dvc() -> dict:
    """name -> dict(cmd, deps, params, outs, metrics, plots, upstream) from DVC's own index."""
    return dvc_stages("dvc.yaml")


# ---- (a) one DAG ------------------------------------------------------------------------------

def expected_stages(p) -> set[str]:
    """Every stage of the DAG of params p: shared ones once, seeded ones per study seed."""
    out = {"shard", "teacher", "tokenizer_init", "evaluate_real", "report", "freeze_baseline", "tokenize_baseline",
           "evaluate_tokenizer_baseline"}
    for seed in p.study.seeds:
        out |= {f"{s}@{seed}-{v}" for s in ("tune", "freeze", "evaluate_tokenizer") for v in paths.tune_variants(p)}
        out |= {f"tokenize@{seed}-gear"}
        out |= {f"{s}_{a}@{seed}-{z}" for s in ("train_ar", "sample", "evaluate_samples")
                for a in paths.AR_ARMS for z in p.ar.sizes}
    return out


def test_same_stages_edges_and_outputs(smk, dvc):
    assert set(smk) == set(dvc)
    assert set(dvc) == expected_stages(P)
    for name, job in smk.items():
        assert {node(r, w) for r, w in job["upstream"]} == dvc[name]["upstream"], name
        declared = dvc[name]["outs"] + dvc[name]["metrics"] + dvc[name]["plots"]
        assert sorted(job["output"]) == sorted(declared), name


def test_same_params_per_stage(smk, dvc):
    """Each rule's `params:` holds the values of exactly the keys its DVC stage lists (both from the
    stage's declaration in gear/dag.py), so a params edit reruns the same stages in both tools."""
    for name, stage in dvc.items():
        assert sorted(smk[name]["params"]["digest"]) == sorted(stage["params"]), name
        for key, value in smk[name]["params"]["digest"].items():
            obj = P
            for part in key.split("."):
                obj = getattr(obj, part)
            if not hasattr(obj, "__dataclass_fields__") and not (key == "compute.seed" and "@" in name):
                assert value == obj, (name, key)


def test_tau_reruns_tune_and_downstream_only(dvc):
    # tau is read by the tuning, by the tokenizer evaluations (soft-assignment entropy at tau) and by
    # the report (its header): nothing upstream of the tuning, no baseline AR
    direct = {n for n, s in dvc.items() if "tau" in s["params"]}
    tune = {f"tune@{seed}-{v}" for seed in P.study.seeds for v in paths.tune_variants(P)}
    assert tune <= direct and {n.split("@")[0] for n in direct} == {"tune", "evaluate_tokenizer",
                                                                   "evaluate_tokenizer_baseline", "report"}
    rerun, frontier = set(direct), set(direct)
    while frontier:
        frontier = {n for n, s in dvc.items() if s["upstream"] & frontier} - rerun
        rerun |= frontier
    cached = set(dvc) - rerun
    assert {"shard", "teacher", "tokenizer_init", "evaluate_real", "freeze_baseline", "tokenize_baseline"} <= cached
    assert {n for n in dvc if n.startswith(("train_ar_baseline@", "sample_baseline@", "evaluate_samples_baseline@"))
            } == {n for n in cached if "_baseline@" in n}
    seed = P.study.seeds[0]
    assert {f"freeze@{seed}-gear", f"tokenize@{seed}-gear", "report"} <= rerun


# ---- (c) only real `gear` commands, with valid arguments --------------------------------------

def check_command(name: str, command: str, params_file: str) -> tuple[list[str], list[str]]:
    prefix, argv = gear_argv(command)
    ns = build_parser().parse_args(argv)  # an unknown stage or argument exits here
    rule, _, item = name.partition("@")
    parts, arm = (item.split("-") if item else []), None
    for a in paths.AR_ARMS:  # train_ar_gear@0-tiny: the arm is in the name, the seed leads the item
        if rule.endswith(f"_{a}"):
            rule, arm = rule[: -len(a) - 1], a
    want = parts[:1] + [arm] + parts[1:] if arm else parts
    stage, what = (("evaluate", rule.split("_", 1)[1]) if rule.startswith("evaluate_")
                   else (rule.replace("_", "-"), None))
    assert ns.stage == stage and stage in STAGES, command
    assert getattr(ns, "what", None) == what and ns.params == params_file and ns.overrides == [], command
    given = [str(ns.seed)] if getattr(ns, "seed", None) is not None else []
    given += [getattr(ns, k) for k in ("variant", "arm", "size") if getattr(ns, k, None) is not None]
    # the DVC item orders wildcards as the stage declares them (ar-init's tune: seed, size, variant)
    assert given[:1] == want[:1] and sorted(given[1:]) == sorted(want[1:]), command
    return prefix, argv


def test_commands_are_gear_stages(smk, dvc):
    for name, stage in dvc.items():
        prefix, argv = check_command(name, stage["cmd"], "params.yaml")
        assert prefix == [], stage["cmd"]
        job = smk[name]
        smk_prefix, smk_argv = check_command(name, job["shell"], "params.yaml")
        assert smk_argv == argv and smk_prefix == []  # one GPU per job in the embedded default
        log = f"logs/{job['rule']}/{'/'.join(job['wildcards'].values()) or 'run'}.log"
        assert job["shell"].endswith(f"> {log} 2>&1"), job["shell"]


# ---- (d) dvc.yaml paths are gear.paths' paths --------------------------------------------------

def test_dvc_paths_match_gear_paths(dvc):
    def live(d, *outs):
        return dict(outs=[*outs, str(d / "metrics.json")], plots=[str(d / "plots" / "metrics")])

    shards = str(paths.shard_dir(P))
    want = {
        "shard": dict(outs=[shards]),
        "teacher": live(paths.metrics_dir("teacher"), str(paths.teacher_dir())),
        "tokenizer_init": live(paths.metrics_dir("tokenizer_init"), str(paths.tokenizer_init_dir())),
        "evaluate_real": dict(outs=[str(paths.real_stats_dir())]),
        "report": dict(outs=[str(paths.REPORTS_DIR / f) for f in ("claims.json", "figures", "index.md", "index.html")],
                       metrics=[str(paths.REPORTS_DIR / "headline.json")]),
        "freeze_baseline": dict(outs=[str(paths.frozen_dir("baseline")), str(paths.freeze_stats_json("baseline"))]),
        "tokenize_baseline": dict(outs=[str(paths.tokens_dir("baseline"))]),
        "evaluate_tokenizer_baseline": dict(outs=[str(paths.eval_tokenizer_json("baseline"))]),
    }
    assert dvc["freeze_baseline"]["deps"][0] == str(paths.freeze_source_dir("baseline"))
    for seed in P.study.seeds:
        for v in paths.tune_variants(P):
            want[f"tune@{seed}-{v}"] = live(paths.tune_metrics_dir(v, seed), str(paths.tune_dir(v, seed)))
            want[f"freeze@{seed}-{v}"] = dict(outs=[str(paths.frozen_dir(v, seed)), str(paths.freeze_stats_json(v, seed))])
            want[f"evaluate_tokenizer@{seed}-{v}"] = dict(outs=[str(paths.eval_tokenizer_json(v, seed))])
            assert dvc[f"freeze@{seed}-{v}"]["deps"][0] == str(paths.freeze_source_dir(v, seed))
        want[f"tokenize@{seed}-gear"] = dict(outs=[str(paths.tokens_dir("gear", seed))])
        for a in paths.AR_ARMS:
            for z in P.ar.sizes:
                want[f"train_ar_{a}@{seed}-{z}"] = live(paths.train_ar_metrics_dir(a, z, seed), str(paths.ar_dir(a, z, seed)))
                want[f"sample_{a}@{seed}-{z}"] = dict(outs=[str(paths.samples_dir(a, z, seed))])
                want[f"evaluate_samples_{a}@{seed}-{z}"] = dict(outs=[str(paths.eval_samples_json(a, z, seed))])
                assert dvc[f"train_ar_{a}@{seed}-{z}"]["deps"][0] == str(paths.tokens_dir(a, seed))
    assert set(want) == set(dvc)
    for name, w in want.items():
        got = {k: dvc[name][k] for k in ("outs", "metrics", "plots") if dvc[name][k]}
        assert got == w, name
    state = str(Path(P.compute.state_dir))
    declared = [p for s in dvc.values() for k in ("outs", "metrics", "plots") for p in s[k]]
    assert not any(p == state or p.startswith(state + "/") for p in declared)


# ---- (b) the slurm profile and multi-GPU launches ----------------------------------------------

def test_slurm_profile_dry_run(workdir, tmp_path):
    # -n must never submit or cancel a job, SLURM installed or not (the plugin may still query
    # `scontrol show config`): spies first on PATH record any call.
    spy, calls = tmp_path / "spy", tmp_path / "slurm_calls"
    spy.mkdir()
    for cmd in ("sbatch", "srun", "scancel"):
        (spy / cmd).write_text(f"#!/bin/sh\necho {cmd} >> {calls}\nexit 1\n")
        (spy / cmd).chmod(0o755)
    env = dict(os.environ, SLURM_ACCOUNT="acct-1", SLURM_PARTITION="gpu-a100",
               PATH=f"{spy}:{BIN}:/usr/bin:/bin")
    out = subprocess.run([str(BIN / "snakemake"), "--profile", "slurm", "all", "-n"], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert not calls.exists(), calls.read_text()
    text = out.stdout + out.stderr
    blocks = [b for b in text.split("\nrule ")[1:] if not b.startswith("all:")]
    assert len(blocks) == len(expected_stages(P))
    for block in blocks:
        rule = block.split(":", 1)[0]
        res = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
        res = dict(kv.split("=", 1) for kv in res.split(":", 1)[1].strip().split(", "))
        assert res["slurm_account"] == "acct-1" and res["slurm_partition"] == "gpu-a100", rule
        assert ("gpu" in res) == (rule in TRAIN_RULES), rule
        if rule in TRAIN_RULES:
            assert res["gpu"] == str(P.resources.train_gpus) and res["slurm_extra"] == "--signal=TERM@120"
            assert res["cpus_per_task"] == str(P.resources.train_cpus)


@pytest.mark.parametrize("params_file,nodes", [("presets/imagenet256.yaml", 1), ("two_nodes.yaml", 2)])
def test_multi_gpu_launch_and_sbatch(workdir, smk_all, params_file, nodes):
    p = load_params(workdir / params_file)
    gpus = p.resources.train_gpus
    jobs = smk_all[params_file]
    assert {job["rule"] for job in jobs.values() if job["sbatch"]} == TRAIN_RULES
    for name, job in jobs.items():
        prefix, _ = check_command(name, job["shell"], params_file)
        if job["sbatch"] is None:
            assert prefix == [] and "gpu" not in job["resources"], name
            continue
        sbatch = job["sbatch"].split()
        assert "--signal=TERM@120" in sbatch and f"--nodes={nodes}" in sbatch, job["sbatch"]
        assert f"--cpus-per-task={p.resources.train_cpus}" in sbatch and f"-t {p.resources.train_runtime}" in job["sbatch"]
        if nodes == 1:
            assert prefix == ["torchrun", "--no-python", "--standalone", f"--nproc_per_node={gpus}"]
            # one task holding every GPU (a task per GPU would run the stage once per GPU)
            assert f"--gpus={gpus}" in sbatch and not any(s.startswith("--ntasks") for s in sbatch), job["sbatch"]
        else:  # one srun task per node, each a torchrun with one worker per GPU
            assert prefix[:4] == ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "torchrun"]
            assert f"--nnodes={nodes}" in prefix and f"--nproc_per_node={gpus}" in prefix
            assert "--rdzv-backend=c10d" in prefix
            assert f"--gres=gpu:{gpus}" in sbatch and f"--ntasks={nodes}" in sbatch, job["sbatch"]
            assert not any(s.startswith(("--gpus", "--ntasks-per-gpu")) for s in sbatch), job["sbatch"]
