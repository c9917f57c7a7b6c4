"""A tiny, fast configuration of the whole pipeline for tests that run real stages.

Stages are run through the real CLI, in-process (`gear_cli`) or as subprocesses (`gear_proc`),
inside a scratch folder so their fixed relative output paths land there.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from gear import dag, provenance
from gear.config import apply_overrides, load_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"

# The demo teacher of every tiny config below (a 1-block, 2-head ViT), and of tests/test_teachers.py.
TINY_TEACHER = ["teachers.demo_dim=32", "teachers.demo_depth=1", "teachers.demo_heads=2"]

TINY = [
    "data.embedded_train_per_class=12", "data.embedded_val_per_class=4", "data.resolution=16",
    "data.samples_per_shard=64",
    *TINY_TEACHER, "teachers.demo_steps=4", "teachers.demo_batch_size=16",
    "tokenizer.ch=8", "tokenizer.z_channels=16", "tokenizer.norm_groups=4", "tokenizer.codebook_size=32",
    "tokenizer.code_dim=4", "tokenizer.disc_ch=8", "tokenizer.disc_layers=1", "tokenizer.steps=6",
    "tokenizer.batch_size=8", "tokenizer.gan_start=2", "tokenizer.perceptual=none",
    "ar.sizes=[custom]", "ar.custom_layers=2", "ar.custom_dim=32", "ar.custom_heads=2",
    "ar.projector_hidden=16", "ar.steps=6", "ar.batch_size=8", "ar.warmup_steps=2",
    "tune.ar_size=custom", "tune.steps=6", "tune.batch_size=8", "ablations.align_layer=[1,2]",
    "sample.per_class=2", "sample.batch_size=16",
    "metrics.batch_size=32", "metrics.max_real=96", "metrics.max_patches=256",
    "compute.workers=0", "compute.log_every=1", "compute.save_every=2",
    # the text-to-image room
    "t2i.data.embedded_train=96", "t2i.data.embedded_val=32", "t2i.data.samples_per_shard=40",
    "t2i.text.max_len=10", "t2i.text.demo_dim=16", "t2i.text.batch_size=16",
    "t2i.ar.size=custom", "t2i.ar.align_layer=1", "t2i.ar.projector_hidden=16", "t2i.ar.steps=6",
    "t2i.ar.batch_size=8", "t2i.ar.warmup_steps=2", "t2i.ar.eval_steps=[3,6]",
    "t2i.sample.prompts=6", "t2i.sample.per_prompt=2", "t2i.sample.batch_size=8",
    "t2i.judge.steps=6", "t2i.judge.batch_size=16",
]


# The AR stages' workspace (build_ar_world): 16 px shards, a random 4x4-token tokenizer of K = 32,
# a tiny demo teacher and a 2-block AR. Tests lay their own values over it (ar_world).
AR_WORLD = {
    "align_layer": 1,
    "data": {"resolution": 16, "embedded_train_per_class": 20, "embedded_val_per_class": 5,
             "samples_per_shard": 128},
    "teachers": {"demo_dim": 16, "demo_depth": 1, "demo_heads": 2, "demo_patch": 4},
    "tokenizer": {"ch": 8, "ch_mult": [1, 2, 2], "z_channels": 8, "norm_groups": 4, "codebook_size": 32,
                  "code_dim": 4},
    "ar": {"sizes": ["custom"], "custom_layers": 2, "custom_dim": 32, "custom_heads": 2, "projector_hidden": 32,
           "steps": 40, "batch_size": 16, "warmup_steps": 5, "lr": 3e-3, "ema_decay": 0.9},
    "sample": {"per_class": 2, "batch_size": 8},
    # fp32: exact on any CPU, and bf16 autocast is ~10x slower than fp32 on CPUs without AVX512-BF16
    "compute": {"device": "cpu", "precision": "fp32", "workers": 0, "log_every": 5, "save_every": 1000},
    "ablations": {"align_layer": [1, 2]},  # params.yaml's [1, 2, 3] does not fit a 2-block AR
}


def ar_world(*overrides: str) -> dict:
    """A fresh copy of AR_WORLD with `overrides` (key=value) laid over it."""
    return apply_overrides(copy.deepcopy(AR_WORLD), list(overrides))


def copy_workflow(d: Path) -> Path:
    """The workflow files of the repo (no outputs) into d, for Snakemake/DVC runs in a scratch folder."""
    for name in ("Snakefile", "params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, d / name)
    for name in ("workflow", "presets", "local", "slurm"):
        shutil.copytree(ROOT / name, d / name)
    return d


def sets(*extra: str) -> list[str]:
    out = []
    for kv in [*TINY, *extra]:
        out += ["--set", kv]
    return out


def env() -> dict:
    # faulthandler: a native crash in a stage (SIGABRT/SIGSEGV) prints every thread's Python stack
    # into the log the failing test shows, not just glibc's one line
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER="1")
    return e


def gear_cli(stage_args: list[str], *extra: str) -> int:
    """Run `gear <stage_args> --params params.yaml --set ...` in this process (cwd = scratch)."""
    from gear.cli import main

    return main([*stage_args, "--params", str(PARAMS), *sets(*extra)])


def gear_cmd(stage_args: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "gear.cli", *stage_args, "--params", str(PARAMS), *sets(*extra)]


def gear_proc(cwd: Path, stage_args: list[str], *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(gear_cmd(stage_args, *extra), cwd=cwd, env=env(), capture_output=True, text=True,
                       timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"gear {' '.join(stage_args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def build_ar_world(root: Path, raw: dict, arm: str, seed: int = 0) -> None:
    """In `root`: shards, a tiny trained-format demo teacher, a random frozen tokenizer for `arm`
    and its token shards, with `raw` as params.yaml: everything `gear train-ar` needs. A tuned arm
    (not baseline) is per study seed: its tokenizer and tokens go under seed<seed>/."""
    import torch
    import yaml

    from gear import paths
    from gear.artifacts import write_tokenizer
    from gear.config import params_from_dict
    from gear.stages import shard
    from gear.data.loader import read_manifest
    from gear.io import save_tensors, write_json
    from gear.models.demo_teacher import DemoViT
    from gear.models.tokenizer import Tokenizer, TokenizerConfig
    from gear.stages import tokenize

    with contextlib.chdir(root):
        params = params_from_dict(raw)
        shard.run(params)
        classes = read_manifest(params)["classes"]
        torch.manual_seed(0)
        vit = DemoViT(image_size=16, patch=4, dim=16, depth=1, heads=2, num_classes=len(classes))
        save_tensors(paths.teacher_dir() / "model.safetensors", vit.state_dict())
        write_json(paths.teacher_dir() / "config.json", {"teacher": "demo", "trained": True,
                                                         "architecture": vit.config, "classes": classes})
        write_tokenizer(paths.frozen_dir(arm, seed), Tokenizer(TokenizerConfig.from_params(params)), {"arm": arm})
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        tokenize.run(params, arm, seed=seed)
        # what the stages these stand in for would have recorded (gear/provenance.py)
        frozen = dag.Job.of("freeze_baseline") if arm == "baseline" else dag.Job.of("freeze", {"seed": seed, "variant": arm})
        tokens = (dag.Job.of("tokenize_baseline") if arm == "baseline"
                  else dag.Job.of("tokenize", {"seed": seed, "variant": arm}))
        stamp(params, dag.Job.of("shard"), dag.Job.of("teacher"), frozen, tokens)


def stamp(params, *jobs) -> None:
    """Record hand-made artifacts as the jobs they stand in for would (cwd: the tree's root)."""
    for job in jobs:
        provenance.write(job, params)


# ---- trees as a run leaves them, without running anything ---------------------------------------

def _all_jobs(p):
    """The main DAG's jobs and the report, in DAG order."""
    return dag.main_jobs(p) + [dag.Job.of("report")]


def retouch(d: Path) -> None:
    """Output times in DAG order, as a run leaves them (`dvc commit` relinks files in its own order)."""
    p = load_params(d / "params.yaml")
    t = 1_000_000_000
    for job in _all_jobs(p):
        for out in dag.outputs(job, p):
            t += 10
            for f in [d / out, *((d / out).rglob("*") if (d / out).is_dir() else [])]:
                os.utime(f, (t, t))


def fake_run(d: Path, params_file: str = "params.yaml", jobs=None) -> None:
    """Every job's outputs as dummies, in DAG order, with the record the real stage writes."""
    with contextlib.chdir(d):
        p = load_params(params_file)
        for job in jobs or _all_jobs(p):
            for out, decl in zip(dag.outputs(job, p), job.decl.outs):
                if decl.kind == "file":
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text("{}\n")
                else:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "x").write_text("x\n")
            provenance.write(job, p)


# ---- comparing what two runs wrote ----------------------------------------------------------------

def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def history(metrics_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """(step, value) rows of every dvclive metric; tokens_per_s is wall clock, left out."""
    out = {}
    for tsv in sorted((metrics_dir / "plots" / "metrics").glob("*.tsv")):
        if tsv.stem != "tokens_per_s":
            with open(tsv) as f:
                out[tsv.stem] = [(r["step"], r[tsv.stem]) for r in csv.DictReader(f, delimiter="\t")]
    return out


def assert_same_outputs(a: Path, b: Path, model_dir: str, metrics_dir: str) -> None:
    """The weights, curves and final metrics of one training stage are the same in trees a and b."""
    import json

    import torch
    from safetensors.torch import load_file

    files = sorted(p.name for p in (a / model_dir).glob("*.safetensors"))
    assert files and files == sorted(p.name for p in (b / model_dir).glob("*.safetensors"))
    for name in files:
        ta, tb = load_file(a / model_dir / name), load_file(b / model_dir / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}:{k} differs after resume"
    plots_a = sorted((a / metrics_dir).rglob("*.tsv"))
    assert plots_a
    for pa in plots_a:
        pb = b / pa.relative_to(a)
        assert pa.read_text() == pb.read_text(), f"{pa.name} differs after resume"
    ma, mb = (json.loads((d / metrics_dir / "metrics.json").read_text()) for d in (a, b))
    assert ma == mb


# ---- the evaluation world: what `gear evaluate` and `gear report` read ------------------------------
# 16 classes x (20 train, 5 val) embedded crops at 32 px, a random demo teacher, random frozen
# tokenizers and tiny ARs with smooth stand-in samples (tests/conftest.py `world`).

EVAL_SETS = [*TINY_TEACHER,
             "data.embedded_train_per_class=20", "data.embedded_val_per_class=5", "data.shard_dir=data/shards",
             "compute.workers=0", "compute.device=cpu", "compute.precision=fp32",
             "tokenizer.ch=8", "tokenizer.norm_groups=4", "tokenizer.z_channels=16", "tokenizer.codebook_size=64",
             "metrics.max_patches=256", "metrics.batch_size=32", "metrics.max_real=200"]
EVAL_CLI = [f"--params={PARAMS}", *[f"--set={s}" for s in EVAL_SETS]]
EVAL_SAMPLES = 32  # per AR arm
EVAL_SEED = 0  # the one study seed of params.yaml


def eval_params(*extra: str):
    return load_params(PARAMS, [*EVAL_SETS, *extra])


def smooth_images(n: int, seed: int):
    """n smooth random 32 px images (uint8 NHWC): bilinear upsampling of 4x4 noise."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=32, mode="bilinear")
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_samples(arm: str, size: str, images) -> None:
    """`images` as the sample stage writes them for (arm, size) at EVAL_SEED (cwd: the tree's root)."""
    import numpy as np
    from PIL import Image

    from gear import paths
    from gear.data.embedded import SOURCES

    d = paths.samples_dir(arm, size, EVAL_SEED)
    d.mkdir(parents=True, exist_ok=True)
    labels = np.arange(len(images)) % len(SOURCES)
    np.savez(d / "samples.npz", images=images, labels=labels, indices=np.zeros((len(images), 64), np.int64))
    Image.fromarray(np.concatenate(list(images[:8]), axis=1)).save(d / "grid.png")


def build_eval_world(root: Path) -> None:
    """In `root`: shards, a demo teacher folder as `gear teacher` writes it, frozen tokenizers,
    tiny ARs and their samples, with the records of the stages they stand in for."""
    import torch

    from gear import paths
    from gear.artifacts import write_model, write_tokenizer
    from gear.stages import shard
    from gear.data.embedded import SOURCES
    from gear.io import save_tensors, sha256_file, write_json
    from gear.models.ar import GPT, GPTConfig
    from gear.models.demo_teacher import DemoViT
    from gear.models.tokenizer import Tokenizer, TokenizerConfig

    with contextlib.chdir(root):
        p = eval_params()
        shard.run(p)
        torch.manual_seed(0)
        vit = DemoViT(32, 4, 32, 1, 2, num_classes=len(SOURCES))
        torch.nn.init.normal_(vit.head.weight, std=0.5)  # a classifier head that is not uniform: IS > 1
        save_tensors(paths.teacher_dir() / "model.safetensors", vit.state_dict())
        write_json(paths.teacher_dir() / "config.json", {"teacher": "demo", "trained": True, "architecture": vit.config,
                                                         "classes": list(SOURCES), "val_acc": 0.0})
        for arm in paths.tokenizer_arms(p):
            write_tokenizer(paths.frozen_dir(arm, EVAL_SEED), Tokenizer(TokenizerConfig.from_params(p)), {"arm": arm})
            write_json(paths.freeze_stats_json(arm, EVAL_SEED), {"arm": arm})  # the freeze stage's other output
        for i, arm in enumerate(paths.AR_ARMS):
            cfg = GPTConfig.from_size("tiny", vocab_size=64, grid=8, num_classes=len(SOURCES))
            ar = GPT(cfg)
            torch.nn.init.normal_(ar.head.weight, std=0.02)
            write_model(paths.ar_dir(arm, "tiny", EVAL_SEED), "ar", ar)
            sha = sha256_file(paths.frozen_dir(arm, EVAL_SEED) / "tokenizer.safetensors")
            write_json(paths.ar_dir(arm, "tiny", EVAL_SEED) / "config.json",
                       {"arm": arm, "size": "tiny", "gpt": cfg.to_dict(), "tokenizer_sha256": sha})
            write_samples(arm, "tiny", smooth_images(EVAL_SAMPLES, seed=i))
        stamp_eval_world(p)


def stamp_eval_world(p) -> None:
    """The records the stages the evaluation world's hand-made files stand in for would write."""
    from gear import paths

    jobs = [dag.Job.of("shard"), dag.Job.of("teacher"), dag.Job.of("tokenizer_init"), dag.Job.of("freeze_baseline")]
    for v in dag.tune_variants(p):  # in DAG order: a record holds the digests of its inputs' records
        jobs += [dag.Job.of("tune", {"seed": EVAL_SEED, "variant": v}),
                 dag.Job.of("freeze", {"seed": EVAL_SEED, "variant": v})]
    jobs += [dag.Job.of(f"{s}_{a}", {"seed": EVAL_SEED, "size": "tiny"}) for a in paths.AR_ARMS
             for s in ("train_ar", "sample")]
    stamp(p, *jobs)


# ---- stopping a training stage as a node would --------------------------------------------------

def interrupt(module, run, kill: str, at_step: int, monkeypatch) -> None:
    """Call `run()` (the training loop of `module`) and stop it: "sigterm" during step `at_step`
    (the stage saves its state and exits 143, for requeue) or "crash" right after its first
    periodic save. Signal handlers are restored after."""
    import pytest

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with monkeypatch.context() as m:
            if kill == "sigterm":
                real = module.check_finite

                def check(stage, step, state_path, **losses):
                    if step == at_step:
                        os.kill(os.getpid(), signal.SIGTERM)
                    real(stage, step, state_path, **losses)

                m.setattr(module, "check_finite", check)
                with pytest.raises(SystemExit) as e:
                    run()
                assert e.value.code == 128 + signal.SIGTERM
            else:
                real_save = module.Checkpointer.save

                def save_then_die(self, state):
                    real_save(self, state)
                    raise RuntimeError("node lost")

                m.setattr(module.Checkpointer, "save", save_then_die)
                with pytest.raises(RuntimeError, match="node lost"):
                    run()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


# ---- two gloo processes of one stage (tests/test_stop.py, test_fsdp.py, test_tune_fsdp.py) ---------

RANK_TERM = 128 + signal.SIGTERM  # a rank's exit code after a SIGTERM that saved its state


def launch_ranks(cwd: Path, cmd: list[str], world: int = 2) -> list[subprocess.Popen]:
    """`cmd` (a `python -m gear.cli ...` argv) as `world` gloo processes in cwd; stderr of rank r
    goes to rank<r>.log there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(world):
        with open(cwd / f"rank{r}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log, env={
                **env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}))
    return procs


def finish_ranks(cwd: Path, procs: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    """The ranks' exit codes, each 0 or RANK_TERM (else its log's tail); a hang (ranks in different
    collectives) fails after `timeout`, and no rank outlives the call."""
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, c in enumerate(codes):
        assert c in (0, RANK_TERM), (cwd / f"rank{r}.log").read_text()[-3000:]
    return codes
