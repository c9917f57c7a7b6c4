"""Seeds as a DAG dimension: the seed picks paths and the stage seed, and adding a seed to
params.study.seeds reruns only that seed's stages (and the report), in both tools.

Both dry runs start from a DAG whose every output exists and is up to date (dummy files that DVC
records with `dvc commit` and Snakemake with `--touch`), then grow study.seeds from [0] to
[0, 1] and ask each tool what it would run.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from dags import BIN, ENV, dvc_changed, smk_dry, smk_jobs
from gear import paths
from gear.config import ParamsError, load_params
from gear.study import resolve_seed, seeded
from tiny import ROOT, copy_workflow, fake_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc")


def params_with(tmp_path: Path, **study) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["study"].update(study)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def test_resolve_seed_and_seeded_params(tmp_path):
    one = load_params(params_with(tmp_path, seeds=[3]))
    assert resolve_seed(one, None) == 3
    two = load_params(params_with(tmp_path, seeds=[0, 5]))
    with pytest.raises(ParamsError, match="--seed is required"):
        resolve_seed(two, None)
    with pytest.raises(ParamsError, match=r"--seed 7: not one of study.seeds \[0, 5\]"):
        resolve_seed(two, 7)
    p = seeded(two, 5)
    assert p.compute.seed == 5 and two.compute.seed == 0  # a copy: the caller's params are unchanged


@pytest.mark.parametrize("seeds,msg", [([], "at least one"), ([1, 1], "repeat"), ([-1], ">= 0")])
def test_bad_seed_lists_are_refused(tmp_path, seeds, msg):
    with pytest.raises(ParamsError, match=msg):
        load_params(params_with(tmp_path, seeds=seeds))


def test_seeded_paths_and_the_shared_baseline_tokenizer():
    assert paths.tune_dir("gear", 2) == Path("models/tune/seed2/gear")
    assert paths.frozen_dir("gear", 2) == Path("models/frozen/seed2/gear")
    assert paths.frozen_dir("baseline", 2) == paths.frozen_dir("baseline") == Path("models/frozen/baseline")
    assert paths.tokens_dir("baseline", 1) == Path("data/tokens/baseline")
    assert paths.ar_dir("baseline", "tiny", 1) == Path("models/ar/seed1/baseline/tiny")
    assert paths.eval_tokenizer_json("ste", 1) == Path("eval/tokenizer/seed1/ste.json")
    assert paths.eval_samples_json("gear", "B", 4) == Path("eval/samples/seed4/gear/B.json")
    with pytest.raises(ValueError, match="per seed"):
        paths.frozen_dir("gear")


def _touch_out(path: Path) -> None:
    """A dummy output: a file for .json/.md/.html paths, else a folder holding one file."""
    if path.suffix in (".json", ".md", ".html"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / "x").write_text("x\n")


def _grow_seeds(d: Path) -> None:
    raw = yaml.safe_load((d / "params.yaml").read_text())
    raw["study"]["seeds"] = [0, 1]
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _expected_new(p1) -> set[str]:
    """DVC stage names of seed 1 (the DAG's stages for seed 1) plus the report."""
    variants, sizes = paths.tune_variants(p1), p1.ar.sizes
    new = {f"{s}@1-{v}" for s in ("tune", "freeze", "evaluate_tokenizer") for v in variants} | {"tokenize@1-gear"}
    new |= {f"{s}_{a}@1-{z}" for s in ("train_ar", "sample", "evaluate_samples") for a in paths.AR_ARMS for z in sizes}
    return new | {"report"}


def test_adding_a_seed_reruns_only_that_seed_dvc(tmp_path):
    from dvc.repo import Repo

    copy_workflow(tmp_path)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"].values()
    code = {d for s in stages for d in s.get("deps", []) if d.startswith("gear/")}  # stages' code deps
    assert code
    for dep in code:
        (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / dep).write_text("# code\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True, env=ENV)
    with Repo(str(tmp_path)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                _touch_out(tmp_path / out.def_path)
    subprocess.run(["dvc", "commit", "-f", "-q"], cwd=tmp_path, check=True, env=ENV, timeout=300)
    assert dvc_changed(tmp_path) == set()  # everything committed: nothing to run

    _grow_seeds(tmp_path)
    changed = dvc_changed(tmp_path)
    assert changed == _expected_new(load_params(tmp_path / "params.yaml")), changed

    # and the tau experiment touches, among the already-run stages, those that read tau: the tuning,
    # the tokenizer evaluations (soft-assignment entropy at tau) and the report (its header)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["study"]["seeds"], raw["tau"] = [0], 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert dvc_changed(tmp_path) == {"tune@0-gear", "tune@0-ste", "evaluate_tokenizer@0-gear",
                                     "evaluate_tokenizer@0-ste", "evaluate_tokenizer_baseline", "report"}


def _made_by_snakemake(tmp_path):
    """A workflow copy whose every output exists as if Snakemake had run `all` with params.yaml."""
    copy_workflow(tmp_path)
    for job in smk_jobs(tmp_path, "params.yaml")["params.yaml"]:
        for f in job["output"]:
            _touch_out(tmp_path / f)
    fake_run(tmp_path)  # each output's provenance record, as the stages write it
    # --touch --forceall: Snakemake marks every job as run, in DAG order, with its metadata (the
    # input-set trigger that makes the report see new seeds needs it, as after a real run)
    touch = subprocess.run([str(BIN / "snakemake"), "--touch", "--forceall", "--cores", "1", "all"], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=180)
    assert touch.returncode == 0, touch.stderr[-2000:]
    assert smk_dry(tmp_path) == {}


def test_the_same_values_under_another_params_file_rerun_nothing_snakemake(tmp_path):
    # the params file's name is not part of a job's params (its keys' values are): `--config
    # params=<a copy>` reruns nothing, and a changed value there reruns what reads it
    _made_by_snakemake(tmp_path)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (tmp_path / "copy.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert smk_dry(tmp_path, "--config", "params=copy.yaml") == {}
    raw["ar"]["lr"] = raw["ar"]["lr"] * 2
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    jobs = smk_dry(tmp_path, "--config", "params=other.yaml")
    assert "tune" not in jobs and "teacher" not in jobs and jobs["train_ar_gear"] == 1, jobs


def test_adding_a_seed_reruns_only_that_seed_snakemake(tmp_path):
    _made_by_snakemake(tmp_path)
    _grow_seeds(tmp_path)
    p = load_params(tmp_path / "params.yaml")
    n_sizes, n_var = len(p.ar.sizes), len(paths.tune_variants(p))
    want = {"tune": n_var, "freeze": n_var, "evaluate_tokenizer": n_var, "tokenize": 1, "report": 1, "all": 1}
    want |= {f"{s}_{a}": n_sizes for s in ("train_ar", "sample", "evaluate_samples") for a in paths.AR_ARMS}
    assert smk_dry(tmp_path) == want
