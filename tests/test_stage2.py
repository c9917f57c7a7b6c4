"""Stage 2's two modes (params `stage2`, gear/stage2.py): `fresh` (the DAG as it always was) and
`ar-init` (stage 1 per AR size, the GEAR AR continuing the stage-1 AR of its size for
ar.steps - tune.steps): the DAG of both tools in each mode, switching modes reruns exactly the
jobs the mode changes, the warm start loads exactly the tuned AR, and the one-line refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gear import dag, dvcfile, paths, stage2
from gear.config import ParamsError, load_params
from dags import ENV, set_params as _params, smk_dry
from tiny import ROOT, copy_workflow, fake_run, retouch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc")

AR_INIT = ["stage2=ar-init", "ar.sizes=[tiny, small]", "tune.ablations=[ste]"]


def _jobs(p, stage):
    return [j for j in dag.main_jobs(p) if j.stage == stage]


# ---- the DAG in both modes (pure) -----------------------------------------------------------------

def test_fresh_keeps_the_dag_and_ar_init_runs_stage1_per_size():
    fresh = dag.load_params(ROOT / "params.yaml", ["ar.sizes=[tiny, small]"])
    assert [str(dag.primary(j, fresh)) for j in _jobs(fresh, "tune")] == ["models/tune/seed0/gear",
                                                                         "models/tune/seed0/ste"]
    gear_ar = _jobs(fresh, "train_ar_gear")[1]
    assert [str(dag.primary(d, fresh)) for d in dag.deps(gear_ar, fresh)] == [
        "data/tokens/seed0/gear", "models/frozen/seed0/gear", "models/teacher"]
    assert "stage2" not in gear_ar.decl.keys  # fresh records exactly what it did before

    p = dag.load_params(ROOT / "params.yaml", AR_INIT)
    assert {str(dag.primary(j, p)) for j in _jobs(p, "tune")} == {
        f"models/tune/seed0/{s}/{v}" for v in ("gear", "ste") for s in ("tiny", "small")}
    assert len(_jobs(p, "tokenize")) == 2 and len(_jobs(p, "evaluate_tokenizer")) == 4
    gear_ar = _jobs(p, "train_ar_gear")[1]  # size small: its tokens, tokenizer and stage-1 AR are small's
    assert [str(dag.primary(d, p)) for d in dag.deps(gear_ar, p)] == [
        "data/tokens/seed0/small/gear", "models/frozen/seed0/small/gear", "models/teacher",
        "models/tune/seed0/small/gear"]
    assert {"stage2", "tune.steps"} <= set(gear_ar.decl.keys)
    base_ar = _jobs(p, "train_ar_baseline")[1]  # the baseline is the same job in both modes
    assert base_ar.decl == _jobs(fresh, "train_ar_baseline")[1].decl
    assert [str(dag.primary(d, p)) for d in dag.deps(base_ar, p)] == [
        "data/tokens/baseline", "models/frozen/baseline", "models/teacher"]
    # the size-free readers (t2i room, report tables) take the tune.ar_size guide's tokenizer
    t2i = dag.Job.of("t2i_tokenize", {"seed": 0}, mode="ar-init")
    assert str(dag.primary(dag.deps(t2i, p)[0], p)) == "models/frozen/seed0/tiny/gear"
    with paths.using(dag.layout_for(p, None)[1]):
        assert paths.eval_tokenizer_json("gear", 0) == Path("eval/tokenizer/seed0/tiny/gear.json")
        assert paths.frozen_dir("gear", 0, "small") == Path("models/frozen/seed0/small/gear")
        assert paths.frozen_dir("baseline", None, "small") == Path("models/frozen/baseline")
    assert paths.frozen_dir("gear", 0, "small") == Path("models/frozen/seed0/gear")  # fresh: no size


def test_generated_dvc_yaml_follows_the_mode():
    stages = dvcfile.dvc_file(dag.load_params(ROOT / "params.yaml", AR_INIT), "main")["stages"]
    assert stages["tune"]["matrix"] == {"seed": "${study.seeds}", "variant": ["gear", "ste"], "size": "${ar.sizes}"}
    assert stages["tune"]["cmd"].endswith("--size ${item.size} --params params.yaml")
    assert "models/tune/seed${item.seed}/${item.size}/gear" in stages["train_ar_gear"]["deps"]
    assert {"stage2", "tune.steps"} <= set(stages["train_ar_gear"]["params"])
    assert stages["train_ar_baseline"] == dvcfile.dvc_file(load_params(ROOT / "params.yaml"), "main")[
        "stages"]["train_ar_baseline"]
    t2i = dvcfile.dvc_file(dag.load_params(ROOT / "params.yaml", AR_INIT), "t2i")["stages"]
    assert "models/frozen/seed${item.seed}/${tune.ar_size}/gear" in t2i["t2i_tokenize"]["deps"]


def test_ablation_rows_follow_the_mode():
    from gear import ablations

    p = dag.load_params(ROOT / "params.yaml", ["stage2=ar-init"])
    row = ablations.find(p, "tau-0.5")
    assert ablations.outputs(p, row, 0)["tokenizer"] == Path("ablations/tau-0.5/eval/tokenizer/seed0/tiny/gear.json")
    assert ablations.outputs(p, ablations.DEFAULT, 0)["tokenizer"] == Path("eval/tokenizer/seed0/tiny/gear.json")
    tune = dag.Job.of("tune", {"seed": 0, "variant": "gear", "size": "tiny"}, "tau-0.5", "ar-init")
    assert str(dag.primary(tune, p)) == "ablations/tau-0.5/models/tune/seed0/tiny/gear"
    skipped = {r.name for r in ablations.grid(p)} - {r.name for r in ablations.runnable(p)}
    assert "tune_ar_size-small" in skipped  # ar-init's guide is each AR's own size
    fresh = load_params(ROOT / "params.yaml")
    assert "tune_ar_size-small" in {r.name for r in ablations.runnable(fresh)}
    assert ablations.outputs(fresh, row, 0)["tokenizer"] == Path("ablations/tau-0.5/eval/tokenizer/seed0/gear.json")


# ---- the budget and the one-line refusals ---------------------------------------------------------

def test_budget_counts_the_stage1_steps():
    p = dag.load_params(ROOT / "params.yaml", ["stage2=ar-init"])
    assert stage2.continued_steps(p) == p.ar.steps - p.tune.steps == 200
    line = stage2.describe(p)
    assert "`ar-init`" in line and "for 200 steps (100 in stage 1 + 200 = 300 in all" in line
    assert "baseline's AR trains fresh for 300 steps" in line
    fresh = stage2.describe(load_params(ROOT / "params.yaml"))
    assert "`fresh`" in fresh and "for 300 steps" in fresh
    # the report's AR curves: the continued AR's step 0 is its AR's step tune.steps
    assert (stage2.steps_before(p, "gear"), stage2.steps_before(p, "baseline")) == (100, 0)
    assert stage2.steps_before(load_params(ROOT / "params.yaml"), "gear") == 0


@pytest.mark.parametrize("sets, message", [
    (["stage2=ar-init", "tune.steps=300"], "stage2 = 'ar-init': needs ar.steps (300) > tune.steps (300)"),
    (["stage2=ar-init", "ar.init=gpt.pt"], "starts the GEAR AR from stage 1, not ar.init"),
    (["stage2=ar-init", "tune.ar_size=small"], "tune.ar_size = 'small': must be one of ar.sizes ['tiny']"),
    (["stage2=vq-only"], "stage2"),
])
def test_bad_mode_params_are_one_line_refusals(sets, message):
    with pytest.raises(ParamsError, match=None) as e:
        dag.load_params(ROOT / "params.yaml", sets)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_size_flag_follows_the_mode():
    fresh, p = load_params(ROOT / "params.yaml"), dag.load_params(ROOT / "params.yaml", ["stage2=ar-init"])
    with pytest.raises(ParamsError, match="only under stage2 = ar-init"):
        dag.job_for("tune", {"variant": "gear", "size": "tiny"}, None, fresh)
    with pytest.raises(ParamsError, match="once per AR size, name one of ar.sizes"):
        dag.job_for("freeze", {"arm": "gear"}, None, p)
    job = dag.job_for("evaluate", {"what": "tokenizer", "arm": "gear", "size": "tiny"}, None, p)
    assert str(dag.primary(job, p)) == "eval/tokenizer/seed0/tiny/gear.json" and job.mode == "ar-init"
    assert dag.job_for("freeze", {"arm": "baseline"}, None, p).stage == "freeze_baseline"


def test_a_stage1_ar_of_another_size_is_refused_in_one_line(tmp_path):
    from gear.artifacts import write_model
    from gear.io import ArtifactError, write_json
    from gear.stages.train_ar import load_stage1
    from gear.train.ar_objective import build_ar

    p = load_params(ROOT / "params.yaml", ["ar.sizes=[tiny, small]"])
    tiny, proj = build_ar(p, "tiny", 64, 4, 10, 32)
    write_model(tmp_path, "ar", tiny)
    write_model(tmp_path, "projector", proj)
    write_json(tmp_path / "config.json", {"tokenizer": {}, "ar": tiny.cfg.to_dict()})
    small, small_proj = build_ar(p, "small", 64, 4, 10, 32)
    with pytest.raises(ArtifactError, match=r"holds a stage-1 AR of .* not the small AR .* `gear tune --variant "
                                            r"gear --size small`") as e:
        load_stage1(small, small_proj, tmp_path, "small")
    assert "\n" not in str(e.value)


# ---- both tools: switching modes reruns exactly what the mode changes ------------------------------

GEAR_SIDE = {"tune", "freeze", "evaluate_tokenizer", "tokenize", "train_ar_gear", "sample_gear",
             "evaluate_samples_gear", "report", "all"}


def test_switching_modes_reruns_the_gear_arm_only_in_snakemake(tmp_path):
    copy_workflow(tmp_path)
    fake_run(tmp_path)  # the fresh tree, every job made
    retouch(tmp_path)
    assert smk_dry(tmp_path) == {}
    _params(tmp_path, stage2="ar-init")
    assert set(smk_dry(tmp_path)) == GEAR_SIDE  # nothing of the baseline, nothing upstream
    fake_run(tmp_path)  # the ar-init tree made beside it (other folders)
    retouch(tmp_path)
    assert smk_dry(tmp_path) == {}
    _params(tmp_path, stage2="fresh")
    # the fresh tokenizers are still there and current; the GEAR AR in models/ar/ is ar-init's: rerun
    # it and what reads it, and the report (it states the mode)
    assert set(smk_dry(tmp_path)) == {"train_ar_gear", "sample_gear", "evaluate_samples_gear", "report", "all"}


def test_dvc_lists_the_ar_init_dag(tmp_path):
    copy_workflow(tmp_path)
    _params(tmp_path, stage2="ar-init")
    e = dict(ENV, PATH=ENV["PATH"])
    subprocess.run([sys.executable, "-m", "gear.cli", "dag"], cwd=tmp_path, env=e, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True, env=e)
    out = subprocess.run(["dvc", "dag", "--md", "train_ar_gear@0-tiny"], cwd=tmp_path, env=e, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tune@0-gear-tiny" in out.stdout and "tokenize@0-gear-tiny" in out.stdout, out.stdout
    assert "tune@0-gear\"" not in out.stdout


# ---- the warm start, through the real stages at smoke budgets -------------------------------------

def test_ar_init_train_ar_starts_from_the_stage1_ar_and_trains_the_rest_of_the_budget(tmp_path, monkeypatch):
    import torch

    from gear.artifacts import load_tensors
    from gear.train import ar_trainer
    from tiny import gear_cli

    monkeypatch.chdir(tmp_path)
    mode = ("stage2=ar-init", "tune.ablations=[]", "ar.steps=9", "ar.lr=0.01")  # tune.steps 6: 3 steps here
    for args in (["shard"], ["teacher"], ["tokenizer-init"], ["tune", "--size", "custom"],
                 ["freeze", "--arm", "gear", "--size", "custom"], ["tokenize", "--arm", "gear", "--size", "custom"]):
        assert gear_cli(args, *mode) == 0, args
    stage1 = Path("models/tune/seed0/custom/gear")
    seen = {}
    real = ar_trainer.configure_optimizer

    def spy(trained, *a, **k):  # the AR and projector as the optimizer gets them: step 0
        seen.update({k: v.detach().clone() for k, v in trained.state_dict().items()})
        return real(trained, *a, **k)

    monkeypatch.setattr(ar_trainer, "configure_optimizer", spy)
    lrs, real_lr = [], ar_trainer.lr_at
    monkeypatch.setattr(ar_trainer, "lr_at", lambda *a: lrs.append(real_lr(*a)) or lrs[-1])
    assert gear_cli(["train-ar", "--arm", "gear", "--size", "custom"], *mode) == 0
    for i, name in enumerate(("ar", "projector")):
        want = load_tensors(stage1 / f"{name}.safetensors", what=name)
        got = {k.split(".", 1)[1]: v for k, v in seen.items() if k.startswith(f"{i}.")}
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name
    assert lrs == [0.01] * 3  # ar.steps - tune.steps steps, at full lr: no second warm-up (ar.warmup_steps 2)
    out = Path("models/ar/seed0/gear/custom")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["steps"], cfg["budget"], cfg["stage2"], cfg["init"]) == (3, 9, "ar-init", str(stage1))
    rec = json.loads((out / "provenance.json").read_text())
    assert rec["params"]["stage2"] == "ar-init" and rec["params"]["tune.steps"] == 6
    assert str(stage1) in rec["deps"] and "models/frozen/seed0/custom/gear" in rec["deps"]
