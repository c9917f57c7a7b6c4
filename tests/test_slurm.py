"""The slurm profile on a real one-node SLURM (tests/slurm_cluster.py), started by this module.

The embedded DAG at the tiny budgets of tests/tiny.py, CPU resources, runs through
`snakemake --profile slurm all` (every job an sbatch job, logged under logs/slurm/) while a local
run of the same params makes the reference; models and tokens are byte-identical; a second
invocation submits nothing. In that same SLURM run one training job is requeued while it runs
(`scontrol requeue`: SIGTERM, back to the queue): it saves its state, SLURM runs it again, it
resumes from the saved step, and its outputs equal the uninterrupted local run's. Last, one
training rule asks for 2 (fake) GPUs and runs 2 gloo ranks (the profile's torchrun launch) against
one process. Skipped, with the reason, where the machine cannot run SLURM daemons (not root, no
apt, a system SLURM's /etc/slurm/slurm.conf). `make test` runs this module beside the rest of the
suite (its jobs mostly wait on the plugin's status checks); `make test-slurm` runs it alone.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file as load_tensors

from gear import paths
from gear.config import apply_overrides, load_params
from slurm_cluster import SlurmCluster, unavailable
from tiny import ROOT, TINY, copy_workflow

BIN = Path(sys.executable).parent
# The DAG fixture runs inside the first test: ~6 min beside the rest of the suite on 2 cores.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.timeout(1200)]

# Dropout off: a 2-rank run then does the math of one process (the multi-task test compares them).
# No extra tuned tokenizer (tune.ablations, default [ste]): its 3 jobs run rules that the gear
# tokenizer's jobs already send through sbatch, and they cost ~45 CPU-s and a queued level here.
AR_STEPS = 40
SMOKE = [*TINY, f"ar.steps={AR_STEPS}", "ar.class_dropout=0", "ar.token_dropout=0", "compute.save_every=5", "compute.log_every=5",
         "tune.ablations=[]",
         "resources.train_gpus=0", "resources.train_cpus=1", "resources.light_cpus=1",
         "resources.train_mem_mb=2000", "resources.light_mem_mb=2000",
         "resources.train_runtime=20", "resources.light_runtime=20"]
# What a cluster without accounting storage needs on the command line (README, "SLURM"), and the
# status-check interval. The plugin checks every POLL_S seconds while jobs finish, adds 10 s after
# each check that finds none finished, and waits one interval more before it exits; a job is seen
# at the first check after it ends. Smoke jobs take 11-24 s alone here (two Snakemake starts, the
# stage's imports, the stage; up to 3 at once on 2 cores) and 12-32 s beside the rest of the suite
# (`make test`), the requeued one 37-51 s from sbatch to its end. At 30 s a level of the DAG costs
# 30 s, the requeued one 60-70 s; at 25, `make test` saw 3-4 levels of 60 s (DAG 375-436 s against
# ~370 s at 30); at 20, a job of 21 s costs 50 s; at the default 40, every level costs 40 s.
POLL_S = 30
SLURM_FLAGS = ["--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks",
               str(POLL_S), "--latency-wait", "5"]
# The training job requeued mid-run, and the plugin's --comment for it (squeue %k).
ARM, SIZE, SEED = "gear", "custom", 0
REQUEUED_COMMENT = f"rule_train_ar_{ARM}_wildcards_{SEED}_{SIZE}"
TRAIN_LOG = Path("logs") / f"train_ar_{ARM}" / str(SEED) / f"{SIZE}.log"  # the rule's log (workflow/rules/common.smk)
COMPARED = [paths.SHARD_DIR, paths.TOKENIZER_INIT_DIR, paths.FROZEN_DIR, paths.TOKENS_DIR, paths.AR_DIR]


def compared_targets(d: Path) -> list[str]:
    """What the local reference makes: the AR models and every frozen tokenizer, so every job whose
    outputs are compared (shards, tokenizers, tokens, models) and none of evaluate_*, sample, report."""
    p = load_params(d / "params.yaml")
    return ([str(paths.ar_dir(arm, size, SEED)) for arm in paths.AR_ARMS for size in p.ar.sizes]
            + [str(paths.frozen_dir(arm, SEED)) for arm in paths.tokenizer_arms(p)])


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(f"no SLURM test cluster: {why}")
    # `make test` ends this module with SIGTERM when the suite is interrupted: unwind, so that the
    # fixtures stop their Snakemake runs and the cluster its jobs and daemons, none left behind
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        # 3 CPUs declared (1 per smoke job): the widest level of the smoke DAG (3 jobs) never queues,
        # so a job on the critical path never waits a status-check interval behind an evaluation
        with SlurmCluster.start(tmp_path_factory.mktemp("slurm"), cpus=3) as c:
            yield c
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_workdir(d: Path, *extra: str) -> Path:
    copy_workflow(d)
    raw = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), [*SMOKE, *extra])
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(d / "params.yaml")  # valid before any job
    return d


def env(cluster=None) -> dict:
    e = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
             SLURM_PARTITION="test", SLURM_ACCOUNT="")
    return dict(e, SLURM_CONF=str(cluster.conf)) if cluster else e


class Snakemake:
    """`snakemake --profile slurm|local ARGS` in d, started now; `.wait()` asserts it succeeded."""

    def __init__(self, d: Path, cluster, *args: str, nice: int = 0):
        profile = ["--profile", "slurm", *SLURM_FLAGS] if cluster else ["--profile", "local", "--cores", "2"]
        self.out = d.parent / f"{d.name}.snakemake.{time.monotonic_ns()}.out"
        with self.out.open("w") as f:
            self.proc = subprocess.Popen([str(BIN / "snakemake"), *profile, *args], cwd=d, env=env(cluster),
                                         stdout=f, stderr=subprocess.STDOUT, text=True,
                                         preexec_fn=(lambda: os.nice(nice)) if nice else None)
        self.t0, self.started = time.monotonic(), time.time()

    def stop(self) -> None:
        """End it if it still runs (SIGTERM: Snakemake cancels its SLURM jobs)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait(self, timeout: float = 900) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        self.wall = self.out.stat().st_mtime - self.started  # until its last line
        text = self.out.read_text()
        assert self.proc.returncode == 0, text[-6000:]
        return text


def snakemake(d: Path, cluster, *args: str) -> str:
    return Snakemake(d, cluster, *args).wait()


def scontrol_show(cluster, job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], env=env(cluster), capture_output=True, text=True).stdout


def field(show: str, key: str) -> str:
    m = re.search(rf"\b{key}=(\S*)", show)
    return m.group(1) if m else ""


def requeue_mid_run(cluster, d: Path, run: Snakemake) -> dict:
    """While `run` goes on: once the REQUEUED_COMMENT job runs and has saved a step, requeue it;
    keep its first run's log (written before SLURM starts it again) and its final record."""
    p = load_params(d / "params.yaml")
    state = d / paths.state_dir(p, "train_ar", paths.seed_part(SEED), ARM, SIZE) / "state.pt"
    log = d / TRAIN_LOG
    seen: dict = {}
    while run.proc.poll() is None:
        if "job" not in seen:
            if state.is_file():
                r = subprocess.run(["squeue", "-h", "-o", "%i %T %k"], env=env(cluster), capture_output=True, text=True)
                jobs = [j for j, st, comment in (line.split() for line in r.stdout.splitlines())
                        if comment == REQUEUED_COMMENT and st == "RUNNING"]
                if jobs:
                    subprocess.run(["scontrol", "requeue", jobs[0]], env=env(cluster), check=True)
                    seen.update(job=jobs[0], at=time.monotonic() - run.t0)
        else:
            show = scontrol_show(cluster, seen["job"])
            st = field(show, "JobState")
            if "first_log" not in seen and st == "PENDING" and field(show, "Restarts") == "1":
                seen["first_log"] = log.read_text() if log.is_file() else ""  # the first run is over
            elif st in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                seen["show"] = show
                break
        time.sleep(0.2)
    return seen


def digests(d: Path, roots: list[Path]) -> dict[str, str]:
    """sha256 of every file under the given output roots (tensors, shards, configs)."""
    out = {}
    for root in roots:
        for f in sorted((d / root).rglob("*")):
            if f.is_file() and f.suffix in (".safetensors", ".tar", ".npy", ".npz"):
                out[str(f.relative_to(d))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def dag(cluster, tmp_path_factory):
    """The SLURM run of `all` (with the requeue) and the local reference, side by side: the
    SLURM run mostly waits on status checks; the local one runs at low priority in those gaps."""
    d = make_workdir(tmp_path_factory.mktemp("slurm_dag"))
    local = make_workdir(tmp_path_factory.mktemp("local_dag"))
    slurm_run = Snakemake(d, cluster, "all")
    local_run = Snakemake(local, None, *compared_targets(local), nice=10)
    try:
        requeue = requeue_mid_run(cluster, d, slurm_run)
        out = slurm_run.wait()
        local_run.wait()
    finally:
        slurm_run.stop()
        local_run.stop()
    if "show" not in requeue and "job" in requeue:  # the job record outlives the run (MinJobAge)
        requeue["show"] = scontrol_show(cluster, requeue["job"])
    print(f"\nslurm profile, embedded DAG at smoke budgets: {slurm_run.wall:.0f} s (requeue at "
          f"{requeue.get('at', float('nan')):.0f} s); local reference: {local_run.wall:.0f} s")
    return d, local, out, requeue


def test_profile_runs_every_job_through_sbatch(cluster, dag):
    d, local, _, _ = dag
    logs = sorted((d / "logs" / "slurm").rglob("*.log"))
    rules = {l.relative_to(d / "logs" / "slurm").parts[0].removeprefix("rule_") for l in logs}
    expected = {"shard", "teacher", "tokenizer_init", "tune", "freeze", "freeze_baseline", "tokenize",
                "tokenize_baseline", "train_ar_baseline", "train_ar_gear", "sample_baseline", "sample_gear",
                "evaluate_real", "evaluate_tokenizer", "evaluate_tokenizer_baseline", "evaluate_samples_baseline",
                "evaluate_samples_gear", "report"}
    assert expected <= rules, sorted(rules)
    assert (d / "reports" / "index.md").is_file()

    ours, theirs = digests(d, COMPARED), digests(local, COMPARED)
    assert ours and ours.keys() == theirs.keys(), sorted(set(ours) ^ set(theirs))
    assert ours == theirs, sorted(k for k in ours if ours[k] != theirs[k])

    again = snakemake(d, cluster, "all")
    assert "Nothing to be done" in again, again[-3000:]
    assert sorted((d / "logs" / "slurm").rglob("*.log")) == logs  # nothing submitted


def test_requeued_training_job_resumes_exactly(cluster, dag):
    """The job requeued mid-run in the DAG's SLURM run: its first run saved the state on SIGTERM
    and exited, SLURM started it again (Restarts=1), the second run began at the saved step, and
    its model equals the local run's, which nothing interrupted."""
    d, local, out, requeue = dag
    assert "job" in requeue, "the training job finished before it could be requeued:\n" + out[-3000:]
    show = requeue.get("show", "")
    assert field(show, "Restarts") == "1" and field(show, "JobState") == "COMPLETED", show
    first = requeue.get("first_log")
    assert first is not None, f"never saw job {requeue['job']} pending after the requeue:\n{show}"
    m = re.search(r"signal 15 at step (\d+): state saved, exiting for requeue", first)
    assert m, first[-2000:]
    step = int(m.group(1))
    assert 0 < step < AR_STEPS, first[-2000:]
    second = (d / TRAIN_LOG).read_text()
    assert f"| {step}/{AR_STEPS} " in second and f"| 0/{AR_STEPS} " not in second, second[-2000:]  # resumed
    target = paths.ar_dir(ARM, SIZE, SEED)
    ours, theirs = digests(d, [target]), digests(local, [target])
    assert ours and ours == theirs, second[-2000:]


def test_two_gpu_training_job_runs_two_ranks_that_follow_one_process(cluster, dag):
    """resources.train_gpus 2: the training job asks SLURM for 2 GPUs (the node's count-only GRES)
    and the profile's `torchrun --standalone --nproc_per_node=2` launch runs 2 gloo ranks in it,
    each with half the global batch. With dropout off (SMOKE) the math is that of one process, so
    its loss curve and weights match the 1-process model of the same DAG to float tolerance."""
    d, _, _, _ = dag
    target = paths.ar_dir(ARM, SIZE, SEED)
    curve_file = d / paths.train_ar_metrics_dir(ARM, SIZE, SEED) / "plots" / "metrics" / "ntp.tsv"
    one = load_tensors(d / target / "ar.safetensors"), curve(curve_file)
    raw = apply_overrides(yaml.safe_load((d / "params.yaml").read_text()), ["resources.train_gpus=2"])
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))  # resources: no rule's digest
    # the target first: --forcerun takes every word after it
    out = snakemake(d, cluster, str(target), "--forcerun", f"train_ar_{ARM}")
    jobs = re.findall(r"with SLURM jobid '?(\d+)", out)
    assert len(jobs) == 1, out[-3000:]  # this one training job, nothing else
    show = scontrol_show(cluster, jobs[0])
    assert "TresPerJob=gres:gpu:2" in show, show
    log = (d / TRAIN_LOG).read_text()
    assert "2 processes on cpu" in log, log[-2000:]
    two = load_tensors(d / target / "ar.safetensors"), curve(curve_file)
    assert len(two[1]) == len(one[1]) > 1
    torch.testing.assert_close(torch.tensor(two[1]), torch.tensor(one[1]), rtol=1e-3, atol=1e-4)
    assert one[0].keys() == two[0].keys()
    for k in one[0]:
        torch.testing.assert_close(two[0][k], one[0][k], rtol=1e-3, atol=1e-4, msg=k)


def curve(tsv: Path) -> list[float]:
    return [float(line.split("\t")[1]) for line in tsv.read_text().splitlines()[1:]]
