"""Issue 31's study machinery (gear/scaling.py): the equal-compute control trains the tokenizer on
its own losses alone, the ladder's rows, the `scaling` target in both tools, and its report from
a fabricated world."""
from __future__ import annotations

import json

import pytest

from gear import ablations, paths, scaling
from gear.config import ParamsError, load_params
from gear.report import scaling as scaling_report
from report_worlds import scaling_world
from tiny import PARAMS


def test_ladder_rows_grow_and_tap_the_middle_block():
    p = load_params(PARAMS)
    rungs = scaling.ladder(p)
    assert [s for s, _ in rungs] == ["nano", "micro", "tiny", "mini"]
    params = [scaling.guide_params(s) for s, _ in rungs]
    assert params == sorted(params) and len(set(params)) == 4
    by = dict(rungs)
    assert by["tiny"].default  # the params' own guide and tap: the main DAG's GEAR arm
    assert dict(by["mini"].overrides) == {"tune.ar_size": "mini"}  # 5 blocks: tapped at 2, as tiny
    # a tap other than the params' pins the fresh ARs' own taps (they are not trained by a rung)
    assert dict(by["nano"].overrides) == {"tune.ar_size": "nano", "align_layer": 1, "ar.align_layers": [2]}
    rp = ablations.row_params(p, by["nano"])
    assert (rp.tune.ar_size, rp.align_layer, rp.align_weight) == ("nano", 1, p.align_weight)
    # lambda at the largest guide: its own weight is the ladder's top rung, the others new rows
    (w0, r0), (w1, r1) = scaling.lambdas(p)
    assert (w0, r0) == (p.align_weight, by["mini"]) and w1 == 2.0 and r1.name == "guide-mini-lambda-2"
    assert ablations.find(p, "guide-mini-lambda-2") == r1  # the CLI's --ablation finds ladder rows
    lay = ablations.layout(p, r1)  # a rung shares the teacher and the warm-up, owns its tune
    assert str(lay.tuned) == "ablations/guide-mini-lambda-2" and str(lay.warmup) == "." == str(lay.teacher)
    with paths.using(lay):  # the report's shortcut to a rung's evaluation is the row's own layout
        assert scaling.row_tokenizer_json(p, r1, 3) == paths.eval_tokenizer_json("gear", 3)


def test_ladder_seeds_pick_the_seeds_the_rows_run():
    from gear import dag

    p = dag.load_params(PARAMS, ["study.seeds=[0, 1, 2]", "scaling.ladder_seeds=[0, 2]",
                                 "tune.ablations=[ste, continue]"])
    jobs = scaling.jobs(p)
    rows = {r.name for r in scaling.rows(p)}
    assert {(j.row, j.wildcards["seed"]) for j in jobs if j.stage == "tune"} == {(r, s) for r in rows for s in (0, 2)}
    assert {j.wildcards["seed"] for j in jobs if j.stage == "train_ar_continue"} == {0, 1, 2}  # the control: all
    with pytest.raises(ParamsError, match="ladder_seeds"):
        dag.load_params(PARAMS, ["scaling.ladder_seeds=[7]"])


@pytest.mark.parametrize("override, words", [
    ("scaling.guides=[tiny, tiny]", "lists a size twice"),
    ("scaling.guides=[custom]", "no registry shape"),
    ("scaling.guides=[huge]", "scaling.guides"),
    ("scaling.lambdas=[-1]", "scaling.lambdas"),
])
def test_bad_scaling_params_are_one_line_errors(override, words):
    from gear.dag import load_params as dag_load

    with pytest.raises(ParamsError, match=words) as e:
        dag_load(PARAMS, [override])
    assert "\n" not in str(e.value)


def test_scaling_report_from_a_tiny_world(tmp_path, monkeypatch):
    seeds = [0, 1, 2]
    p = scaling_world(tmp_path, monkeypatch, seeds)
    scaling_report.run(p)
    md = (paths.REPORTS_DIR / "scaling.md").read_text()
    js = json.loads((paths.REPORTS_DIR / "scaling.json").read_text())
    assert js["seeds"] == seeds
    # every claim against the baseline and against the control
    assert js["claims"]["baseline"]["C5 tokenizer"]["verdict"] == "holds"
    assert {k: js["claims"]["control"][k]["verdict"] for k in ("C3", "C5 tokenizer", "C6 (tiny)", "C2 ntp (tiny)")} \
        == {"C3": "holds", "C5 tokenizer": "holds", "C6 (tiny)": "holds", "C2 ntp (tiny)": "holds"}
    assert "C1" not in js["claims"]["control"]  # STE vs GEAR: no reference arm
    # the ladder: C5 tokenizer contradicted at nano, within noise at micro, holds from tiny on
    lad = js["ladder"]
    assert [lad[s]["C5 tokenizer"]["verdict"] for s in ("nano", "micro", "tiny", "mini")] == \
        ["contradicted", "within noise", "holds", "holds"]
    assert lad["mini"]["C5 tokenizer"]["mean"] == pytest.approx(0.09 - 0.173)
    assert lad["nano"]["block_params"] < lad["micro"]["block_params"] < lad["mini"]["block_params"]
    assert js["lambda"]["2.0"]["row"] == "guide-mini-lambda-2"
    assert ("C5 tokenizer reads contradicted / within noise / holds / holds: its reading changes at micro, tiny"
            in md)
    assert "GEAR vs control" in md and "scaling_figures/ladder.png" in md
    assert (paths.REPORTS_DIR / "scaling_figures" / "ladder.png").stat().st_size > 0
    assert "Not run (study.reseed_upstream false)." in md and js["variance_split"]["run"] is False
    assert "data:image/png;base64," in (paths.REPORTS_DIR / "scaling.html").read_text()


def test_scaling_report_through_the_cli_reads_only_its_declared_keys(tmp_path, monkeypatch):
    """`gear scaling-report` as the DAG runs it: its inputs checked against their records, the stage
    given a params view that refuses any key its declaration does not list."""
    from gear.cli import main

    scaling_world(tmp_path, monkeypatch, [0, 1, 2])
    argv = [f"--params={PARAMS}", "--set=study.seeds=[0, 1, 2]", "--set=tune.ablations=[ste, continue]"]
    assert main(["scaling-report", *argv]) == 0
    assert json.loads((paths.REPORTS_DIR / "scaling.json").read_text())["mode"] == "fresh"


def test_scaling_report_shows_the_other_stage2_modes_claims(tmp_path, monkeypatch):
    """A fresh run's report puts the ar-init run's claims (its snapshot) beside its own, and leaves
    its own snapshot for the other mode."""
    from gear.io import write_json

    p = scaling_world(tmp_path, monkeypatch, [0, 1, 2])
    ours = {"C3": {"verdict": "contradicted", "ours": "val entropy GEAR - baseline +0.1 [+0.05, +0.15] nats"}}
    write_json(scaling_report.snapshot("ar-init"), {"mode": "ar-init", "seeds": [0, 1, 2, 3],
                                                    "claims": {"baseline": ours}})
    scaling_report.run(p)
    md = (paths.REPORTS_DIR / "scaling.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| C3 |"))
    assert "| holds |" in row and "+0.1 [+0.05, +0.15] nats | contradicted |" in row
    assert "ar-init: seeds [0, 1, 2, 3]" in md and "fresh: GEAR vs baseline" in md
    own = json.loads(scaling_report.snapshot("fresh").read_text())
    assert own["mode"] == "fresh" and own["claims"]["control"]["C3"]["verdict"] == "holds"


def test_scaling_report_refuses_a_missing_rung_in_one_line(tmp_path, monkeypatch):
    from gear.io import ArtifactError

    p = scaling_world(tmp_path, monkeypatch, [0, 1])
    row = ablations.find(p, "guide-nano")
    scaling.row_tokenizer_json(p, row, 1).unlink()
    with pytest.raises(ArtifactError, match="--ablation guide-nano") as e:
        scaling_report.run(p)
    assert "\n" not in str(e.value) and not (paths.REPORTS_DIR / "scaling.md").exists()


# ---- the equal-compute control --------------------------------------------------------------------

def test_control_step_is_a_reconstruction_only_step():
    """Mode `continue`: the tokenizer's update equals one on its own losses (L_VQ + GAN), and no
    gradient reaches the AR or the projector (tests/test_gear_step.py's tiny models)."""
    import copy

    import torch

    from gear.train.gear_step import tokenizer_step
    from gear.train.tokenizer_objective import clip_and_step
    from test_gear_step import RT, all_zero, grads, make

    _, m, k, x, labels, y = make(mode="continue")
    k.mode = "continue"
    ref = copy.deepcopy(m)
    opt = torch.optim.AdamW(m.tokenizer.parameters(), lr=1e-2)
    opt_ref = torch.optim.AdamW(ref.tokenizer.parameters(), lr=1e-2)
    _, logs = tokenizer_step(m, k, opt, x, labels, y, step=0, rt=RT)
    assert "align_soft" not in logs
    assert all_zero(grads(m.ar)) and all_zero(grads(m.projector))
    ref.tokenizer.train()
    loss, _ = ref.objective.generator_loss(x, ref.tokenizer(x), 0)  # reconstruction + VQ + GAN, nothing else
    clip_and_step(loss, opt_ref, k.grad_clip)
    for (n, a), (_, b) in zip(m.tokenizer.named_parameters(), ref.tokenizer.named_parameters()):
        assert torch.equal(a, b), n
    # and GEAR's step differs: the alignment term moves the tokenizer elsewhere
    _, g, kg, *_ = make(mode="gear")
    tokenizer_step(g, kg, torch.optim.AdamW(g.tokenizer.parameters(), lr=1e-2), x, labels, y, step=0, rt=RT)
    assert any(not torch.equal(a, b) for a, b in zip(g.tokenizer.parameters(), m.tokenizer.parameters()))


def test_tune_continue_trains_no_ar(tmp_path):
    """`gear tune --variant continue` runs the tune stage with no AR step: no NTP or alignment in its
    metrics, its AR the untrained init; the GEAR variant on the same warm-up logs both."""
    from safetensors.torch import load_file

    from tiny import gear_proc

    extra = ("tokenizer.steps=2", "tune.steps=3", "tune.ablations=[continue]")
    for stage in (["shard"], ["teacher"], ["tokenizer-init"], ["tune", "--variant", "continue"],
                  ["tune", "--variant", "gear"]):
        gear_proc(tmp_path, stage, *extra)
    plots = lambda v: {f.stem for f in (tmp_path / f"metrics/tune/seed0/{v}/plots/metrics").glob("*.tsv")}  # noqa: E731
    assert {"ntp", "align_hard", "align_soft"} & plots("continue") == set()
    assert {"ntp", "align_soft"} <= plots("gear") and {"commit", "codebook", "gan_d"} <= plots("continue"), plots("continue")
    ar_c = load_file(tmp_path / "models/tune/seed0/continue/ar.safetensors")
    ar_g = load_file(tmp_path / "models/tune/seed0/gear/ar.safetensors")
    assert any(not torch_equal(ar_c[n], ar_g[n]) for n in ar_c)  # the guide trained only under GEAR


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


# ---- the `scaling` target in both tools ---------------------------------------------------------

STUDY = ["study.seeds=[0, 1]", "scaling.ladder_seeds=[1]", "tune.ablations=[ste, continue]"]


def _scratch(tmp_path):
    """A workflow copy whose params.yaml is params.yaml with STUDY set (the DVC files generated from it)."""
    from gear.config import params_yaml
    from tiny import copy_workflow

    d = copy_workflow(tmp_path)
    text = params_yaml(load_params(d / "params.yaml", STUDY), d / "params.yaml", STUDY, d / "params.yaml")
    (d / "params.yaml").write_text(text)
    return d


def test_snakemake_scaling_target(tmp_path):
    from dags import smk_jobs

    d = _scratch(tmp_path)
    jobs = smk_jobs(d, "params.yaml", target="scaling")["params.yaml"]
    by = {}
    for j in jobs:
        by.setdefault(j["rule"], []).append(j)
    p = load_params(d / "params.yaml")
    rows = {r.name for r in scaling.rows(p)}
    assert rows == {"guide-nano", "guide-micro", "guide-mini", "guide-mini-lambda-2"}
    # the ladder: tune, freeze, evaluate tokenizer per row, on ladder seed 1 only, reading the main
    # shards, teacher and warm-up; no fresh AR of its own
    for rule in ("ablation_tune", "ablation_freeze", "ablation_evaluate_tokenizer"):
        assert {(j["wildcards"]["row"], j["wildcards"]["seed"]) for j in by[rule]} == {(r, "1") for r in rows}
    assert not any(r.startswith("ablation_") and r not in ("ablation_tune", "ablation_freeze",
                                                           "ablation_evaluate_tokenizer") for r in by)
    nano = next(j for j in by["ablation_tune"] if j["wildcards"]["row"] == "guide-nano")
    assert {"models/teacher", "models/tokenizer_init"} <= set(nano["input"])
    assert nano["shell"].startswith("gear tune --variant gear --seed 1 --params params.yaml --ablation guide-nano >")
    assert "params.yaml" not in str(nano["params"])  # the file's name: a resource, not a param (stages.smk)
    assert len(by["tokenizer_init"]) == len(by["teacher"]) == 1
    # the control: its tune in the main rules (every seed), its own tokens and fresh AR
    assert {j["wildcards"]["variant"] for j in by["tune"]} == {"gear", "ste", "continue"}
    assert {j["wildcards"]["seed"] for j in by["train_ar_continue"]} == {"0", "1"}
    tok = by["tokenize_continue"][0]
    assert "models/frozen/seed0/continue" in tok["input"] or "models/frozen/seed1/continue" in tok["input"]
    assert {j["wildcards"]["variant"] for j in by["tokenize"]} == {"gear"}  # the gear rule is not the control's
    # the report reads everything: the main report's jobs too
    assert len(by["scaling_report"]) == 1 and "report" not in by and len(by["evaluate_samples_gear"]) == 2


def test_dvc_scaling_file(tmp_path):
    """scaling/dvc.yaml as DVC reads it: the ladder's matrix, the control's stages wired to
    ./dvc.yaml's freeze, the report last."""
    import subprocess

    from gear import dvcfile
    from dags import ENV

    d = _scratch(tmp_path)
    (d / "scaling").mkdir(exist_ok=True)
    with __import__("contextlib").chdir(d):
        dvcfile.write_dvc_files(load_params("params.yaml"))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=d, env=ENV, check=True)
    from dvc.repo import Repo

    with Repo(str(d)) as repo:
        stages = {s.addressing.split(":")[-1]: s for s in repo.index.stages if s.dvcfile.relpath.endswith("scaling/dvc.yaml")}
        edges = {(a.addressing.split(":")[-1], b.addressing.split(":")[-1]) for a, b in repo.index.graph.edges}
    assert set(stages) >= {"ladder_tune@guide-nano-1-gear", "ladder_evaluate_tokenizer@guide-mini-lambda-2-1-gear",
                           "tokenize_continue@0", "train_ar_continue@1-tiny", "evaluate_samples_continue@0-tiny",
                           "scaling_report"}
    assert not any(k.startswith("ladder_tune@") and "-0-" in k for k in stages)  # ladder seed 1 only
    assert stages["ladder_tune@guide-nano-1-gear"].cmd == \
        "gear tune --variant gear --seed 1 --params params.yaml --ablation guide-nano"
    assert ("tokenize_continue@0", "freeze@0-continue") in edges
    assert ("ladder_freeze@guide-nano-1-gear", "ladder_tune@guide-nano-1-gear") in edges
    assert ("ladder_tune@guide-nano-1-gear", "tokenizer_init") in edges


def test_the_preset_is_the_measured_study():
    """presets/scaling.yaml: >= 4 guide sizes growing in depth and width, >= 3 ladder seeds, >= 4 claim
    seeds, the control listed, the same tune budget for every arm (the header's cost measurement)."""
    from gear import dag
    from gear.models.registry import ar_shape
    from tiny import ROOT

    p = dag.load_params(ROOT / "presets/scaling.yaml")
    shapes = [ar_shape(s)[:2] for s, _ in scaling.ladder(p)]
    assert len(shapes) >= 4 and all(a[0] < b[0] and a[1] < b[1] for a, b in zip(shapes, shapes[1:]))
    assert len(scaling.ladder_seeds(p)) >= 3 and len(p.study.seeds) >= 4 and scaling.control(p)
    assert {j.stage for j in scaling.jobs(p)} >= {"tune", "train_ar_continue", "evaluate_tokenizer"}


# ---- seeds that cover the whole pipeline (study.reseed_upstream) -----------------------------------

RESEED = ["study.seeds=[0, 1, 2]", "study.reseed_upstream=true"]


def test_an_upstream_row_owns_its_teacher_warmup_and_baseline():
    """upstream-<seed> sets compute.seed: its teacher, warm-up, baseline tokenizer and (demo feature
    space) real statistics are its own; the default layout's and every other row's baseline paths
    are the main DAG's."""
    from pathlib import Path

    from gear.cli import check_ablation

    p = load_params(PARAMS, RESEED)
    ups = dict(scaling.upstream(p))
    assert ups[0].default  # compute.seed 0: the main DAG's own teacher and warm-up
    row = ups[1]
    assert row.name == "upstream-1" and dict(row.overrides) == {"compute.seed": 1}
    assert ablations.find(p, "upstream-1") == row and row in scaling.rows(p)
    root = Path("ablations/upstream-1")
    assert ablations.layout(p, row) == paths.Layout(teacher=root, warmup=root, tuned=root, real=root)
    with paths.using(ablations.layout(p, row)):
        assert paths.teacher_dir() == root / "models/teacher"
        assert paths.tokenizer_init_dir() == paths.freeze_source_dir("baseline") == root / "models/tokenizer_init"
        assert paths.frozen_dir("baseline") == root / "models/frozen/baseline"
        assert paths.eval_tokenizer_json("baseline") == root / "eval/tokenizer/baseline.json"
        assert paths.real_stats_dir() == root / "eval/real"
        assert scaling.upstream_tokenizer_jsons(p, 1) == {"gear": paths.eval_tokenizer_json("gear", 1),
                                                          "baseline": paths.eval_tokenizer_json("baseline")}
    main = {"frozen": Path("models/frozen/baseline"), "tokens": Path("data/tokens/baseline"),
            "eval": Path("eval/tokenizer/baseline.json"), "stats": Path("metrics/freeze/baseline.json"),
            "real": Path("eval/real")}
    here = lambda: {"frozen": paths.frozen_dir("baseline"), "tokens": paths.tokens_dir("baseline"),  # noqa: E731
                    "eval": paths.eval_tokenizer_json("baseline"), "stats": paths.freeze_stats_json("baseline"),
                    "real": paths.real_stats_dir()}
    assert here() == main and scaling.upstream_tokenizer_jsons(p, 0)["baseline"] == main["eval"]
    for name in ("tau-0.5", "guide-nano"):  # a row sharing the warm-up reads the main baseline and statistics
        with paths.using(ablations.layout(p, ablations.find(p, name))):
            assert here() == main
    with pytest.raises(ParamsError, match="--arm must be gear"):  # only a row with its own warm-up has a baseline
        check_ablation(p, "tau-0.5", {"arm": "baseline"})
    check_ablation(p, "upstream-1", {"arm": "baseline"})
    # off (the default): no upstream rows, the ladder alone
    off = load_params(PARAMS, ["study.seeds=[0, 1, 2]"])
    assert scaling.upstream(off) == [] and not any(r.name.startswith("upstream") for r in scaling.rows(off))


def test_variance_split_of_hand_made_spreads():
    """V_reseeded / V_shared = 4 with its F interval (2 and 2 degrees of freedom: F(0.975) = 39), and the
    upstream's share 1 - 1/4; a reseeded spread below the shared one carries no share."""
    v = scaling_report.variance_split([0.0, 1.0, 2.0], [0.0, 2.0, 4.0], 0.95)
    assert (v["shared"]["sd"], v["reseeded"]["sd"], v["reseeded"]["mean"], v["reseeded"]["n"]) == (1.0, 2.0, 2.0, 3)
    assert v["ratio"] == pytest.approx(4.0) and v["share"] == pytest.approx(0.75)
    assert v["lo"] == pytest.approx(4.0 / 39.0) and v["hi"] == pytest.approx(4.0 * 39.0)
    assert scaling_report.variance_split([0.0, 2.0, 4.0], [0.0, 1.0, 2.0])["share"] == 0.0
    one = scaling_report.variance_split([0.0, 1.0], [3.0])
    assert one["share"] is None and one["ratio"] is None and one["reseeded"]["sd"] is None


def test_scaling_report_splits_the_variance(tmp_path, monkeypatch):
    """The report's variance split from a world whose reseeded PSNR effect spreads far wider than the
    shared one (UPSTREAM_PSNR_EFFECT) and whose entropy effect does not; through the CLI (its inputs
    checked against their records, the stage reading only its declared keys)."""
    import numpy as np

    from gear.cli import main
    from report_worlds import UPSTREAM_PSNR_EFFECT

    scaling_world(tmp_path, monkeypatch, [0, 1, 2], reseed=True)
    assert main(["scaling-report", f"--params={PARAMS}", "--set=study.seeds=[0, 1, 2]",
                 "--set=tune.ablations=[ste, continue]", "--set=study.reseed_upstream=true"]) == 0
    md = (paths.REPORTS_DIR / "scaling.md").read_text()
    js = json.loads((paths.REPORTS_DIR / "scaling.json").read_text())["variance_split"]
    assert js["run"] and js["seeds"] == [0, 1, 2]
    shared = [24.9 + 0.01 * (k - 1) - 25.0 for k in range(3)]  # report_worlds.write_evals: GEAR - baseline
    reseeded = [shared[0], *UPSTREAM_PSNR_EFFECT.values()]  # seed 0's upstream is the main DAG's
    c4 = js["claims"]["C4"]
    assert c4["share"] == pytest.approx(1 - np.var(shared, ddof=1) / np.var(reseeded, ddof=1))
    assert c4["lo"] > 1 and c4["reseeded"]["n"] == 3
    assert js["claims"]["C3"]["share"] == 0.0 and js["claims"]["C3"]["lo"] < 1 < js["claims"]["C3"]["hi"]
    assert js["baseline"]["psnr"]["min"] == pytest.approx(25.0) and js["baseline"]["psnr"]["max"] == pytest.approx(25.2)
    assert "effective_size" in js["baseline"]
    assert "## Variance split (teacher and warm-up reseeded)" in md
    line = next(x for x in md.splitlines() if x.startswith("- C4:"))
    assert f"about {c4['share']:.0%} of the spread" in line and "the shared intervals understate the spread" in line
    assert "a ratio of 1 (no upstream share) cannot be excluded" in next(x for x in md.splitlines()
                                                                         if x.startswith("- C3:"))
    # upstream rows on the ladder seeds only (presets/scaling.yaml: 3 of 4): the shared spread keeps
    # every study seed, the reseeded one takes the rows there are
    assert main(["scaling-report", f"--params={PARAMS}", "--set=study.seeds=[0, 1, 2]", "--set=scaling.ladder_seeds=[0, 1]",
                 "--set=tune.ablations=[ste, continue]", "--set=study.reseed_upstream=true"]) == 0
    js = json.loads((paths.REPORTS_DIR / "scaling.json").read_text())["variance_split"]
    c4 = js["claims"]["C4"]
    assert js["reseeded_seeds"] == [0, 1] and (c4["shared"]["n"], c4["reseeded"]["n"]) == (3, 2)
    assert c4["reseeded"]["mean"] == pytest.approx(np.mean(reseeded[:2])) and js["baseline"]["psnr"]["n"] == 2


def _reseed_scratch(tmp_path, extra: list[str]):
    """A workflow copy whose params.yaml is the tiny world's (one ladder rung on every seed), reseeding
    (or not) the ladder seeds, whose upstream rows are upstream-1 and upstream-2 (seed 0 is compute.seed:
    the main DAG's own)."""
    from gear.config import params_yaml
    from tiny import TINY, copy_workflow

    tmp_path.mkdir()
    d = copy_workflow(tmp_path)
    sets = [*TINY, "study.seeds=[0, 1, 2]", "tune.ablations=[]", "scaling.guides=[nano]", "scaling.lambdas=[]",
            "scaling.ladder_seeds=[0, 1, 2]", *extra]
    (d / "params.yaml").write_text(params_yaml(load_params(d / "params.yaml", sets), d / "params.yaml", sets,
                                               d / "params.yaml"))
    return d


UPSTREAM = ("teacher", "tokenizer_init", "evaluate_real", "freeze_baseline", "evaluate_tokenizer_baseline", "tune",
            "freeze", "evaluate_tokenizer")


def test_reseeded_upstream_in_both_tools(tmp_path):
    """`snakemake scaling` with study.reseed_upstream runs, for ladder seeds 1 and 2 (0 is compute.seed:
    the main DAG's), the row's own teacher, warm-up, real statistics, baseline freeze and evaluation, then
    its GEAR tune, freeze and evaluation, each on the row's own inputs; off, none of them. The
    scaling/dvc.yaml that `gear dag` writes declares the same jobs, wired the same way."""
    import contextlib
    import subprocess

    from dags import ENV, smk_jobs
    from gear import dvcfile

    upstream = lambda jobs: [j for j in jobs if j["wildcards"].get("row", "").startswith("upstream")]  # noqa: E731
    off = _reseed_scratch(tmp_path / "off", [])
    assert upstream(smk_jobs(off, "params.yaml", target="scaling")["params.yaml"]) == []
    d = _reseed_scratch(tmp_path / "on", ["study.reseed_upstream=true"])
    jobs = upstream(smk_jobs(d, "params.yaml", target="scaling")["params.yaml"])
    got = {(j["rule"][len("ablation_"):], j["wildcards"]["row"]) for j in jobs}
    assert got == {(s, f"upstream-{seed}") for s in UPSTREAM for seed in (1, 2)}
    by = {(j["rule"], j["wildcards"]["row"]): j for j in jobs}
    base = by[("ablation_evaluate_tokenizer_baseline", "upstream-2")]
    assert base["output"] == ["ablations/upstream-2/eval/tokenizer/baseline.json"]
    assert {"ablations/upstream-2/models/frozen/baseline", "ablations/upstream-2/models/teacher",
            "ablations/upstream-2/eval/real"} <= set(base["input"])
    tune = by[("ablation_tune", "upstream-1")]
    assert {"ablations/upstream-1/models/teacher", "ablations/upstream-1/models/tokenizer_init"} <= set(tune["input"])
    assert tune["shell"].startswith("gear tune --variant gear --seed 1 --params params.yaml --ablation upstream-1 >")
    assert by[("ablation_freeze_baseline", "upstream-1")]["shell"].startswith(
        "gear freeze --arm baseline --params params.yaml --ablation upstream-1 >")

    (d / "scaling").mkdir(exist_ok=True)
    with contextlib.chdir(d):
        dvcfile.write_dvc_files(load_params("params.yaml"))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=d, env=ENV, check=True)
    from dvc.repo import Repo

    with Repo(str(d)) as repo:
        stages = {s.addressing.split(":")[-1]: s for s in repo.index.stages
                  if s.dvcfile.relpath.endswith("scaling/dvc.yaml")}
        edges = {(a.addressing.split(":")[-1], b.addressing.split(":")[-1]) for a, b in repo.index.graph.edges}
    dvc_jobs = {(k.split("@")[0][len("upstream_"):], "upstream-" + k.split("@")[1].split("-")[0])
                for k in stages if k.startswith("upstream_")}
    assert dvc_jobs == got
    assert tune["shell"].startswith(stages["upstream_tune@1-gear"].cmd + " >")
    assert {("upstream_tune@2-gear", "upstream_tokenizer_init@2"), ("upstream_tokenizer_init@1", "upstream_teacher@1"),
            ("upstream_evaluate_tokenizer_baseline@1", "upstream_freeze_baseline@1"),
            ("upstream_evaluate_tokenizer@2-gear", "upstream_evaluate_real@2"),
            ("upstream_teacher@1", "shard")} <= edges


def test_an_upstream_row_trains_and_measures_its_own_baseline(tmp_path, monkeypatch):
    """The row's half that no other row runs, through the CLI: its teacher and warm-up under its seed,
    its real statistics in its own teacher's space, its baseline frozen and evaluated, all under
    ablations/upstream-1/ and each on the row's own inputs; the main folders stay empty."""
    from tiny import gear_cli

    monkeypatch.chdir(tmp_path)
    extra = (*RESEED, "tune.ablations=[]", "tokenizer.steps=2")
    row = ["--ablation", "upstream-1"]
    for stage in (["shard"], ["teacher", *row], ["tokenizer-init", *row], ["evaluate", "real", *row],
                  ["freeze", "--arm", "baseline", *row], ["evaluate", "tokenizer", "--arm", "baseline", *row]):
        assert gear_cli(stage, *extra) == 0, stage
    root = tmp_path / "ablations/upstream-1"
    teacher = json.loads((root / "models/teacher/provenance.json").read_text())
    assert (teacher["row"], teacher["params"]["compute.seed"]) == ("upstream-1", 1)
    ev = json.loads((root / "eval/tokenizer/baseline.json").read_text())
    assert ev["tokenizer"] == "ablations/upstream-1/models/frozen/baseline"
    assert set(ev["provenance"]["deps"]) == {"data/shards", "ablations/upstream-1/models/frozen/baseline",
                                             "ablations/upstream-1/models/teacher", "ablations/upstream-1/eval/real"}
    assert not any((tmp_path / d).exists() for d in ("models", "eval", "metrics"))
