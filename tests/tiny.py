"""A tiny, fast configuration of the whole pipeline for tests that run real stages.

Stages are run through the real CLI, in-process (`gear_cli`) or as subprocesses (`gear_proc`),
inside a scratch folder so their fixed relative output paths land there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gear import dag, provenance
from gear.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"

TINY = [
    "data.embedded_train_per_class=12", "data.embedded_val_per_class=4", "data.resolution=16",
    "data.samples_per_shard=64",
    "teachers.demo_dim=32", "teachers.demo_depth=1", "teachers.demo_heads=2", "teachers.demo_steps=4",
    "teachers.demo_batch_size=16",
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
    from gear.data import shard
    from gear.data.loader import read_manifest
    from gear.io import save_tensors, write_json
    from gear.models.demo_teacher import DemoViT
    from gear.models.tokenizer import Tokenizer, TokenizerConfig
    from gear.stages import tokenize

    cwd = os.getcwd()
    os.chdir(root)
    try:
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
    finally:
        os.chdir(cwd)


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
    cwd = os.getcwd()
    os.chdir(d)
    try:
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
    finally:
        os.chdir(cwd)
