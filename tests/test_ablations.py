"""The ablation grid (gear/ablations.py): the paper's rows, one-line errors, row params and paths,
what the Snakemake target shares (a dry run of the real DAG), the DVC queue's commands, and the
report from a partial grid, from files and from real DVC experiments, each read at its commit."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from dags import ENV, dvc_stages, smk_jobs
from gear import ablations, paths
from gear.config import load_params
from gear.report.paper import PAPER_TABLES
from gear.report.verdicts import fmt_interval, paired_interval
from report_worlds import write_ablation_row
from tiny import ROOT, copy_workflow


def test_imagenet_preset_grid_is_the_papers_tables():
    p = load_params(ROOT / "presets" / "imagenet256.yaml")
    rows = ablations.grid(p)
    assert len(rows) == sum(len(t) for t in PAPER_TABLES.values()) - len(PAPER_TABLES) + 1
    for axis, paper_rows in PAPER_TABLES.items():
        ours = ablations.table(p, axis)
        assert len(ours) == len(paper_rows) and sum(r.default for r in ours) == 1, axis
        if axis not in ("align_layer", "tune_ar_size"):  # matched by position at other depths/sizes
            theirs = {str(v) for v, label, *_ in paper_rows if not label.endswith("*")}
            assert {str(r.value) for r in ours if not r.default} == theirs, axis


def test_row_params_change_only_their_axis():
    p = load_params(ROOT / "params.yaml")
    row = ablations.find(p, "tau-0.5")
    q = ablations.row_params(p, row)
    assert q.tau == 0.5 and q.align_weight == p.align_weight and p.tau != 0.5
    assert ablations.find(p, "default").default


def test_rows_share_the_warmup_unless_they_change_the_tokenizer():
    p = load_params(ROOT / "params.yaml")
    tau = ablations.layout(p, ablations.find(p, "tau-0.5"))
    quant = ablations.layout(p, ablations.find(p, "quantizer-lfq"))
    with paths.using(tau):
        tau_init = paths.tokenizer_init_dir()
    with paths.using(quant):
        quant_init = paths.tokenizer_init_dir()
    assert tau_init == paths.tokenizer_init_dir()
    assert quant_init != paths.tokenizer_init_dir()


@pytest.mark.parametrize("override, words", [
    ("ablations.tau=[0.5,0]", "ablations.tau[1]"),
    ("ablations.teacher=[nope]", "ablations.teacher[0]"),
    ("ablations.tau=[0.5,0.5]", "listed twice"),
])
def test_bad_grid_values_are_one_line_errors(override, words):
    r = subprocess.run([sys.executable, "-m", "gear.cli", "params", "--params", str(ROOT / "params.yaml"),
                        "--set", override], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("args, words", [
    (["freeze", "--arm", "baseline", "--ablation", "tau-0.5"], "--arm must be gear"),
    (["freeze", "--arm", "gear", "--ablation", "tau-7"], "tau-7"),
])
def test_ablation_flag_errors_are_one_line(args, words):
    r = subprocess.run([sys.executable, "-m", "gear.cli", *args, "--params", str(ROOT / "params.yaml")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.fixture(scope="module")
def ablation_dag(tmp_path_factory):
    """The params and (rule, wildcards, inputs) of every job of the `ablations` target, forced."""
    d = copy_workflow(tmp_path_factory.mktemp("abl_dag"))
    jobs = smk_jobs(d, "params.yaml", target="ablations")["params.yaml"]
    return load_params(d / "params.yaml"), [(j["rule"], j["wildcards"], j["input"]) for j in jobs]


def test_snakemake_target_shares_the_warmup_and_teacher(ablation_dag):
    p, jobs = ablation_dag
    by_rule = {}
    for rule, wc, inputs in jobs:
        by_rule.setdefault(rule, []).append((wc, inputs))
    runnable = {r.name for r in ablations.runnable(p)}
    tuned = {wc["row"]: inputs for wc, inputs in by_rule["ablation_tune"]}
    assert set(tuned) == runnable - {"training-ste"}
    # every row below tune shares shards and teacher; only quantizer rows train their own warm-up
    assert {wc["row"] for wc, _ in by_rule["ablation_tokenizer_init"]} == {"quantizer-lfq", "quantizer-ibq"}
    assert len(by_rule["tokenizer_init"]) == len(by_rule["teacher"]) == len(by_rule["shard"]) == 1
    assert "ablation_teacher" not in by_rule
    for row in ("tau-0.5", "align_weight-0.25", "init-scratch", "training-no_gan"):
        assert str(paths.tokenizer_init_dir()) in tuned[row] and str(paths.teacher_dir()) in tuned[row], row
    assert "ablations/quantizer-lfq/models/tokenizer_init" in tuned["quantizer-lfq"]
    # training-ste is the main DAG's tune --variant ste, copied, not trained twice
    [(wc, inputs)] = by_rule["ablation_tune_copy_ste"]
    assert wc["row"] == "training-ste" and inputs == [str(paths.tune_dir("ste", 0))]
    assert {wc["variant"] for wc, _ in by_rule["tune"]} == {"gear", "ste"}
    # one fresh eval AR per row and seed; hub teachers are not in the DAG while ablations.hub_teachers is false
    assert {wc["row"] for wc, _ in by_rule["ablation_train_ar_gear"]} == runnable
    assert not any(r.startswith("teacher-") for r in runnable)
    assert {"dinov2_vitb14", "vjepa2_vitl16"} <= set(p.ablations.teacher)


def test_queue_commands_one_experiment_per_row():
    from gear.stages.ablation_queue import commands

    p = load_params(ROOT / "params.yaml")
    cmds, skipped = commands(p)
    names = [c[c.index("-n") + 1] for c in cmds]
    assert names[0] == "abl-default" and len(cmds[0]) == 6  # params as they are
    assert names == ["abl-" + r.name for r in ablations.grid(p) if not ablations.skip_reason(p, r)]
    ste = cmds[names.index("abl-training-ste")]
    assert ste[-4:] == ["-S", "e2e_mode=ste", "-S", "tune.gan=true"]
    assert cmds[names.index("abl-tau-0.5")][-2:] == ["-S", "tau=0.5"]
    assert {r for r, _ in skipped} == {f"teacher-{t}" for t in p.ablations.teacher if t != p.teacher}
    assert all(why for _, why in skipped)
    r = subprocess.run([sys.executable, "-m", "gear.cli", "ablation-queue", "--dry", "--params",
                        str(ROOT / "params.yaml")], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("dvc exp run --queue") == len(cmds) and "# skipped teacher-dinov2_vitb14:" in r.stdout


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n")[1].split("\n## ")[0]


def test_report_from_a_partial_grid(tmp_path, monkeypatch):
    from gear.report import ablations as ablation_report

    p = load_params(ROOT / "params.yaml", ["study.seeds=[0,1,2]"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "index.md").write_text("main report\n")
    base, tau = [30.0, 34.0, 31.0], [25.0, 30.5, 26.0]
    for s in range(3):
        write_ablation_row(p, ablations.DEFAULT, s, base[s], 5.0, 6.0, tmp_path)
        write_ablation_row(p, ablations.find(p, "tau-0.5"), s, tau[s], 5.5 + s, 6.1, tmp_path)
    write_ablation_row(p, ablations.find(p, "tau-0.05"), 0, 40.0, 5.0, 6.0, tmp_path)  # one seed of three
    ablation_report.run(p)
    md = (tmp_path / "reports" / "ablations.md").read_text()
    assert (tmp_path / "reports" / "index.md").read_text() == "main report\n"  # the main report untouched
    tau_md = _section(md, "Soft temperature tau")
    line = next(l for l in tau_md.splitlines() if "| tau-0.5 |" in l)
    assert fmt_interval(paired_interval(base, tau)) in line
    assert "| holds |" in line  # the paper: tau 0.5 gFID 9.15 below its default's 10.63; here below too
    assert "| 0.5 | tau-0.5 | ok | 3 |" in line and "| 9.15 | 1.698 |" in line
    assert "| 0.1* | default | ok | 3 |" in tau_md
    assert "partial: 1 of 3 seeds" in next(l for l in tau_md.splitlines() if "| tau-0.05 |" in l)
    assert "| tau-0.01 | missing: ablations/tau-0.01/" in tau_md
    teacher_md = _section(md, "Teacher encoder")
    assert "| teacher-dinov2_vitb14 | skipped: " in teacher_md and "ablations.hub_teachers" in teacher_md
    saved = json.loads((tmp_path / "reports" / "ablations.json").read_text())
    assert saved["values"]["tau-0.5"]["1"]["fid"] == 30.5 and "tau-0.01" in saved["problems"]
    assert (tmp_path / "reports" / "ablations.html").read_text().startswith("<!DOCTYPE html>")


def test_report_refuses_an_empty_grid_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gear.cli", "ablation-report", "--params", str(ROOT / "params.yaml")],
                       capture_output=True, text=True, cwd=tmp_path, env=dict(ENV, PYTHONPATH=str(ROOT)), timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no ablation row has outputs" in r.stderr and not (tmp_path / "reports").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc")  # pygtrie's step.value inside DVC's index
def test_the_files_an_experiment_is_read_from_are_outs_of_the_real_dvc_yaml():
    """What from_experiments reads at each experiment's commit: stage outs of the main dvc.yaml."""
    p = load_params(ROOT / "params.yaml")
    outs = {o for stage in dvc_stages("dvc.yaml").values() for o in stage["outs"]}
    for seed in p.study.seeds:
        assert {f.as_posix() for f in ablations.outputs(p, ablations.DEFAULT, seed).values()} <= outs


# The stand-in for the main DAG's eval stages: per seed, the default row's three eval files
# (ablations.outputs) as plain cached outs, as dvc.yaml declares them, with values from the params.
WRITE_EVAL = """import json, sys, yaml
from pathlib import Path
seed, p = int(sys.argv[1]), yaml.safe_load(open("params.yaml"))
for kind, path in json.load(open("files.json"))[str(seed)].items():
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    value = {"samples": {"fid": 100 * p["tau"] + seed},
             "tokenizer": {"rfid": 2.0 + seed, "effective_size": 9.0, "entropy": 2.0}, "train_ar": {"ntp": 5.0}}[kind]
    Path(path).write_text(json.dumps(value))
"""


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    """A git + DVC repo at two seeds, the DAG reproduced and committed, then real experiments off HEAD
    (--temp, like the queue: the workspace keeps its params):
    abl-default; abl-tau-0.5 with its seed-1 samples file gone from the cache; abl-tau-0.05 at
    one seed (no seed-1 files); abl-align_weight-0.25 mislabelled; abl-tau-0.01 queued, not run."""
    d = tmp_path_factory.mktemp("abl_dvc")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["seeds"] = [0, 1]
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = load_params(d / "params.yaml")
    files = {s: {k: v.as_posix() for k, v in ablations.outputs(p, ablations.DEFAULT, s).items()} for s in (0, 1)}
    assert all("seed0/" in f for f in files[0].values())
    (d / "files.json").write_text(json.dumps(files))
    (d / "write.py").write_text(WRITE_EVAL)
    outs = "".join(f"      - {f.replace('seed0/', 'seed${item}/')}\n" for f in files[0].values())
    (d / "dvc.yaml").write_text("stages:\n  evaluate:\n    foreach: ${study.seeds}\n    do:\n"
                                f"      cmd: {sys.executable} write.py ${{item}}\n      deps: [write.py, files.json]\n"
                                f"      params: [tau]\n      outs:\n{outs}")

    def sh(*cmd):
        r = subprocess.run(cmd, cwd=d, env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
        return r.stdout

    sh("git", "init", "-q")
    sh("git", "config", "user.name", "t")
    sh("git", "config", "user.email", "t@t")
    sh("dvc", "init", "-q")
    sh("dvc", "repro", "-q")  # the main DAG, committed: HEAD's dvc.lock names the default row's files
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "repro")
    sh("dvc", "exp", "run", "-q", "--temp", "-n", "abl-default")
    sh("dvc", "exp", "run", "-q", "--temp", "-n", "abl-tau-0.5", "-S", "tau=0.5")
    sh("dvc", "exp", "run", "-q", "--temp", "-n", "abl-tau-0.05", "-S", "tau=0.05", "-S", "study.seeds=[0]")
    sh("dvc", "exp", "run", "-q", "--temp", "-n", "abl-align_weight-0.25", "-S", "align_weight=0.5")
    sh("dvc", "exp", "run", "-q", "--queue", "-n", "abl-tau-0.01", "-S", "tau=0.01")
    show = json.loads(sh("dvc", "exp", "show", "--json"))
    from gear.report.ablations import dvc_experiments

    lock = yaml.safe_load(sh("git", "show", dvc_experiments(show)["abl-tau-0.5"]["rev"] + ":dvc.lock"))
    gone = files[1]["samples"]
    md5 = next(o["md5"] for st in lock["stages"].values() for o in st["outs"] if o["path"] == gone)
    (d / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink()
    (d / "show.json").write_text(json.dumps(show))
    return d, p, files


def _expected(p, files: dict) -> tuple[dict, dict]:
    def seed(tau, s):
        return {"fid": pytest.approx(100 * tau + s), "rfid": 2.0 + s, "effective_size": 9.0, "entropy": 2.0, "ntp": 5.0}

    values = {"default": {0: seed(p.tau, 0), 1: seed(p.tau, 1)}, "tau-0.5": {0: seed(0.5, 0)},
              "tau-0.05": {0: seed(0.05, 0)}}
    problems = {
        "tau-0.5": f"missing: {files[1]['samples']} in abl-tau-0.5 (in its dvc.lock, not in this repo's DVC cache: dvc pull)",
        "tau-0.05": f"missing: {files[1]['tokenizer']} in abl-tau-0.05 (+2)",
        "tau-0.01": "missing: experiment abl-tau-0.01 is queued",
        "align_weight-0.25": "stale: experiment abl-align_weight-0.25 has align_weight = 0.5, the row 0.25",
        "init-scratch": "missing: no experiment abl-init-scratch"}
    return values, problems


def test_report_reads_each_dvc_experiment_at_its_commit(dvc_repo, monkeypatch):
    """Per-seed values read from each experiment's own files; a file it lacks (not run, not in the
    cache), a queued or mislabelled experiment reads as such, never as another run's numbers. The
    saved `dvc exp show --json` (--from-dvc F) gives the commits; the files come from the repo."""
    from gear.report import ablations as ablation_report

    d, p, files = dvc_repo
    monkeypatch.chdir(d)
    values, problems, sources = ablation_report.from_experiments(p, json.loads((d / "show.json").read_text()))
    want_values, want_problems = _expected(p, files)
    assert values == want_values
    assert {r: problems[r] for r in want_problems} == want_problems
    others = {r.name for r in ablations.runnable(p)} - set(values) - set(want_problems)
    assert others and all(problems[r] == f"missing: no experiment abl-{r}" for r in others)
    assert sources["default"][0].as_posix().startswith("abl-default@")
    ablation_report.run(p, from_dvc="show.json")
    saved = json.loads((d / "reports" / "ablations.json").read_text())
    assert saved["values"] == {row: {str(s): v for s, v in seeds.items()} for row, seeds in want_values.items()}
    assert saved["problems"] == problems


def test_ablation_report_cli_from_dvc_runs_dvc_exp_show(dvc_repo):
    """The README's `gear ablation-report --from-dvc`, in the repo: the partial row and the queued one."""
    d, p, files = dvc_repo
    r = subprocess.run([sys.executable, "-m", "gear.cli", "ablation-report", "--from-dvc", "--params", "params.yaml"],
                       capture_output=True, text=True, cwd=d, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = json.loads((d / "reports" / "ablations.json").read_text())
    assert saved["values"]["default"]["1"]["fid"] == pytest.approx(100 * p.tau + 1)
    md = (d / "reports" / "ablations.md").read_text()
    assert f"| tau-0.05 | partial: 1 of 2 seeds (missing: {files[1]['tokenizer']} in abl-tau-0.05 (+2)) | 1 |" in md
    assert "| tau-0.01 | missing: experiment abl-tau-0.01 is queued | 0 |" in md


def test_report_from_dvc_elsewhere_says_so_in_one_line(dvc_repo, tmp_path, monkeypatch):
    """A saved show read outside the repo refuses up front; a commit this git lacks (a show saved in
    another clone) leaves its row missing with the reason."""
    from gear.io import ArtifactError
    from gear.report import ablations as ablation_report

    d, p, _ = dvc_repo
    text = (d / "show.json").read_text()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match=r"run it at its root \(no \.dvc/ here\)"):
        ablation_report.from_experiments(p, json.loads(text))
    monkeypatch.chdir(d)
    rev = ablation_report.dvc_experiments(json.loads(text))["abl-default"]["rev"]
    values, problems, _ = ablation_report.from_experiments(p, json.loads(text.replace(rev, "0" * 40)))
    assert "default" not in values and "tau-0.5" in values
    assert problems["default"] == ("missing: abl-default at 0000000 cannot be read here: "
                                   f"unknown Git revision '{'0' * 40}'")
