"""One declaration per stage (gear/dag.py) and provenance in every artifact (gear/provenance.py):
the DVC files are generated from the table, stages read only their declared keys, and no order of
DVC, Snakemake and params switches can feed a stage, or the report, outputs made with other params.

The cross-tool tests start from a tree in which every job of the main DAG "ran": a dummy output
per declared output, written in DAG order, with the provenance record the real stage writes
(`fake_run`), and recorded by the tool that is said to have made it (`dvc commit`). Then they
change params and ask each tool what it would run (`dvc status`, `snakemake -n`).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dags import BIN, ENV, dvc_changed, set_params as _params, smk_dry
from gear import dag, dvcfile, provenance
from gear.config import load_params
from gear.guard import ParamsView, UndeclaredParam
from tiny import ROOT, copy_workflow, fake_run, retouch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc")


def test_no_module_imports_a_stage_but_the_cli():
    """Stages hold only their run(): what two stages share lives in a library module, so the CLI's
    stage runner is the only importer of a stage module. Every stage but a report (gear/report/) is one
    of gear/stages/*, the t2i room's included (its library: gear/t2i/)."""
    from gear.cli import STAGES

    modules = {m for m, _, _ in STAGES.values()}
    assert all(m.startswith(("gear.stages.", "gear.report.")) for m in modules), sorted(modules)
    stages = {f"gear.stages.{p.stem}" for p in (ROOT / "gear" / "stages").glob("*.py") if p.stem != "__init__"}
    found = []
    for path in sorted([*(ROOT / "gear").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        if path == ROOT / "gear" / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in sorted(names & stages)]
    assert "gear.stages.t2i_sample" in stages and "gear.stages.evaluate" in stages and not found, found


def test_dvc_files_are_generated_from_the_table(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert dvcfile.write_dvc_files(load_params(ROOT / "params.yaml"), check=True) == [], \
        "dvc.yaml / t2i/dvc.yaml differ from gear/dag.py: run `gear dag`"


def test_a_stage_cannot_read_an_undeclared_key():
    p = load_params(ROOT / "params.yaml")
    view = ParamsView(p, dag.declared("tune"), "tune")
    assert view.tau == p.tau and view.tokenizer.lr == p.tokenizer.lr and view.ar.class_dropout == p.ar.class_dropout
    assert view.tokenizer.downsample == p.tokenizer.downsample  # properties read through the view
    with pytest.raises(UndeclaredParam, match="stage tune reads params key ar.lr"):
        view.ar.lr
    with pytest.raises(UndeclaredParam, match="section sample"):
        view.sample
    with pytest.raises(AttributeError, match="read-only"):
        view.tau = 0.5
    assert view.digest("tau", "tokenizer") == p.digest("tau", "tokenizer")


def test_declared_keys_exist_and_jobs_cover_the_dag():
    p = load_params(ROOT / "params.yaml")
    for stage in dag.STAGES.values():
        for key in stage.keys:
            obj = p
            for part in key.split("."):
                assert hasattr(obj, part), f"{stage.name} declares unknown key {key}"
                obj = getattr(obj, part)
    jobs = dag.main_jobs(p)
    made = {dag.primary(j, p) for j in jobs}
    for j in jobs:
        for d in dag.deps(j, p):
            assert dag.primary(d, p) in made, (j, d)


PARSE = r"""
import sys, contextlib, io
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings
root = Path(sys.argv[1])
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(), snakefile=root / "Snakefile", workdir=root,
                      config_settings=ConfigSettings(config={"params": "params.yaml"}))
    wf.dag(DAGSettings(targets={"all", "ablations", "t2i", "released"}, forceall=True))
print("torch imported:", "torch" in sys.modules)
"""


def test_parsing_the_snakefile_imports_no_torch(tmp_path):
    copy_workflow(tmp_path)
    out = subprocess.run([sys.executable, "-c", PARSE, str(tmp_path)], cwd=tmp_path, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch imported: False" in out.stdout


# ---- a tree made by one tool, rerun by the other ------------------------------------------------

DOWNSTREAM_OF_TUNE = {"tune", "freeze", "evaluate_tokenizer", "tokenize", "train_ar_gear", "sample_gear",
                      "evaluate_samples_gear", "report", "all"}


@pytest.fixture
def dvc_made(tmp_path):
    """The main DAG at two seeds as `dvc repro` leaves it."""
    copy_workflow(tmp_path)
    _params(tmp_path, **{"study.seeds": [0, 1]})
    for stage in yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"].values():
        for dep in stage.get("deps", []):
            if dep.startswith("gear/"):
                (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / dep).write_text("# code\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True, env=ENV)
    fake_run(tmp_path)
    subprocess.run(["dvc", "commit", "-f", "-q"], cwd=tmp_path, check=True, env=ENV, timeout=300)
    retouch(tmp_path)
    assert dvc_changed(tmp_path) == set()
    assert smk_dry(tmp_path) == {}  # Snakemake holds no metadata for these files, and reruns nothing
    return tmp_path


def test_align_weight_reruns_tune_and_downstream_for_every_seed_in_both_tools(dvc_made):
    _params(dvc_made, align_weight=1.0)
    p = load_params(dvc_made / "params.yaml")
    n = len(dag.tune_variants(p))
    jobs = smk_dry(dvc_made)
    assert set(jobs) == DOWNSTREAM_OF_TUNE, jobs
    assert jobs["tune"] == 2 * n and jobs["tokenize"] == 2  # every seed, nothing upstream
    # DVC lists the stages whose own params changed (the report prints lambda in its header)
    assert {s.split("@")[0] for s in dvc_changed(dvc_made)} == {"tune", "report"}


def test_ar_lr_reruns_no_tuning_in_either_tool(dvc_made):
    _params(dvc_made, **{"ar.lr": 3e-4})
    assert not any(s.startswith("tune") for s in dvc_changed(dvc_made))
    jobs = smk_dry(dvc_made)
    assert "tune" not in jobs and jobs["train_ar_gear"] == 2 and jobs["train_ar_baseline"] == 2, jobs


def test_the_readme_preset_path_after_dvc_reruns_what_the_preset_changes(dvc_made):
    # `make repro` (DVC), then the README's CPU-study command: seed 0's tuning must not be reused
    # in a study declared at another lambda and budget
    (dvc_made / "presets" / "study.yaml").write_text(yaml.safe_dump(
        {**yaml.safe_load((dvc_made / "params.yaml").read_text()), "align_weight": 2.0}))
    jobs = smk_dry(dvc_made, "--config", "params=presets/study.yaml")
    assert jobs.get("tune") == 2 * 2 and "teacher" not in jobs and "shard" not in jobs, jobs


def test_dvc_after_snakemake_with_other_params_reruns(dvc_made):
    # Snakemake, under another params file, remade seed 0's gear tuning: DVC sees the changed output
    other = yaml.safe_load((dvc_made / "params.yaml").read_text())
    (dvc_made / "other.yaml").write_text(yaml.safe_dump({**other, "align_weight": 0.9}))
    fake_run(dvc_made, "other.yaml", jobs=[dag.Job.of("tune", {"seed": 0, "variant": "gear"})])
    assert "tune@0-gear" in dvc_changed(dvc_made)


def test_new_report_code_reruns_the_report_and_nothing_else_in_both_tools(dvc_made):
    # DVC hashes the report's code deps; Snakemake sees the change through the report's record
    (dvc_made / "gear" / "report").write_text("# the report's code, edited\n")
    assert dvc_changed(dvc_made) == {"report"}
    assert smk_dry(dvc_made) == {"report": 1, "all": 1}
    fake_run(dvc_made, jobs=[dag.Job.of("report")])  # remade by either tool: up to date in both
    subprocess.run(["dvc", "commit", "-f", "-q", "report"], cwd=dvc_made, check=True, env=ENV, timeout=300)
    assert dvc_changed(dvc_made) == set() and smk_dry(dvc_made) == {}


def test_shards_made_by_other_shard_code_are_named_and_an_older_record_is_taken_as_current(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = load_params(ROOT / "params.yaml")
    shard = dag.Job.of("shard")
    for name in shard.decl.code:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text("# code\n")
    dag.primary(shard, p).mkdir(parents=True)
    provenance.write(shard, p)
    assert provenance.stale(shard, p) is None
    Path("gear/data/shard.py").write_text("# other code\n")
    why = provenance.stale(shard, p)
    assert why == "data/shards was made with another version of gear/data/shard.py; remake it: `gear shard`", why
    rec = json.loads((dag.primary(shard, p) / provenance.RECORD).read_text())
    del rec["code"]  # written by a gear before records held code: DVC's lock says whether it is current
    (dag.primary(shard, p) / provenance.RECORD).write_text(json.dumps(rec))
    assert provenance.stale(shard, p) is None


def _one_line(res) -> str:
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    return lines[0]


def test_a_hand_mixed_tree_is_refused_by_the_next_stage_and_the_report(dvc_made, monkeypatch):
    # seed 1's gear tuning made with another lambda, by hand: freeze and report refuse, naming it
    monkeypatch.chdir(dvc_made)
    mixed = load_params("params.yaml", ["align_weight=0.9"])
    provenance.write(dag.Job.of("tune", {"seed": 1, "variant": "gear"}), mixed)
    for cmd in (["freeze", "--arm", "gear", "--seed", "1"], ["report"]):
        res = subprocess.run([sys.executable, "-m", "gear.cli", *cmd], cwd=dvc_made, env=ENV, capture_output=True,
                             text=True, timeout=120)
        line = _one_line(res)
        assert "models/tune/seed1/gear was made with align_weight = 0.9, params give 0.5" in line, line
        assert "`gear tune --variant gear --seed 1`" in line


def test_a_second_writer_of_the_same_output_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = load_params(ROOT / "params.yaml")
    job = dag.Job.of("teacher")
    with provenance.output_lock(job, p, "params.yaml"):
        with pytest.raises(Exception, match=r"models/teacher is being written by a running `gear teacher` \(pid \d+\)"):
            with provenance.output_lock(job, p, "params.yaml"):
                pass
    with provenance.output_lock(job, p, "params.yaml"):  # released: free again
        pass


# ---- the same, after a real run of every stage at smoke budgets --------------------------------

def test_after_a_smoke_dvc_repro_snakemake_reruns_exactly_what_changed(tmp_path):
    """`dvc repro` of the real stages (tiny shapes, one seed), then the other tool: Snakemake holds
    no metadata for these files, and still reruns tune and what follows (and nothing upstream) for a
    new lambda, and no tuning for a new AR learning rate; DVC agrees on the second."""
    from gear.config import apply_overrides
    from tiny import TINY, env as tiny_env

    copy_workflow(tmp_path)
    raw = apply_overrides(yaml.safe_load((tmp_path / "params.yaml").read_text()), [*TINY, "tune.ablations=[]"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    e = dict(tiny_env(), PATH=ENV["PATH"])
    subprocess.run([str(BIN / "gear"), "dag"], cwd=tmp_path, env=e, check=True, capture_output=True)
    for stage in yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"].values():
        for dep in stage.get("deps", []):
            if dep.startswith("gear/") and not (tmp_path / dep).exists():
                (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / dep).write_text("# code\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True, env=e)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)  # dvclive needs a commit (a fresh clone has one)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workflow"], cwd=tmp_path,
                   check=True)
    r = subprocess.run(["dvc", "repro", "-q"], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((tmp_path / "models/tune/seed0/gear/provenance.json").read_text())["params"]["align_weight"] == 0.5

    dry = lambda: smk_dry(tmp_path)  # noqa: E731
    assert dry() == {}
    base = (tmp_path / "params.yaml").read_text()
    _params(tmp_path, align_weight=1.0)
    assert dry() == {s: 1 for s in DOWNSTREAM_OF_TUNE}
    (tmp_path / "params.yaml").write_text(base)
    _params(tmp_path, **{"ar.lr": 3e-4})
    jobs = dry()
    assert "tune" not in jobs and jobs["train_ar_gear"] == jobs["train_ar_baseline"] == 1, jobs
    assert not any(s.startswith("tune") for s in dvc_changed(tmp_path))
