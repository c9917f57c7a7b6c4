"""The text-to-image room is one DAG in both tools: workflow/rules/t2i.smk (target `t2i`) and
t2i/dvc.yaml run the same `gear t2i-*` commands at gear.t2i.paths' paths, with the same params,
upstream of the class-conditional freeze stages; neither is part of the main job."""
from __future__ import annotations

import pytest

from dags import dvc_stages, gear_argv, node, smk_jobs
from gear.cli import build_parser
from gear.config import load_params
from gear.t2i import paths as t2i_paths
from tiny import ROOT, copy_workflow

P = load_params(ROOT / "params.yaml")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc")


@pytest.fixture(scope="module")
def smk(tmp_path_factory) -> dict[str, dict]:
    d = copy_workflow(tmp_path_factory.mktemp("wf"))
    jobs = smk_jobs(d, "params.yaml", target="t2i")["params.yaml"]
    return {node(j["rule"], j["wildcards"]): j for j in jobs if j["rule"] != "t2i"}


@pytest.fixture(scope="module")
def dvc() -> dict:
    return dvc_stages("t2i/dvc.yaml")


def expected(p) -> set[str]:
    out = {"t2i_shard", "t2i_encode", "t2i_judge", "t2i_tokenize_baseline", "t2i_evaluate_real", "t2i_report"}
    for seed in p.study.seeds:
        out |= {f"t2i_tokenize@{seed}"}
        out |= {f"t2i_{s}_{a}@{seed}" for s in ("train", "sample", "evaluate") for a in t2i_paths.ARMS}
    return out


def test_same_stages_edges_and_outputs(smk, dvc):
    room = {n: j for n, j in smk.items() if j["rule"].startswith("t2i_")}
    assert set(room) == set(dvc) == expected(P)
    for name, job in room.items():
        assert {node(r, w) for r, w in job["upstream"]} == dvc[name]["upstream"], name
        declared = dvc[name]["outs"] + dvc[name]["metrics"] + dvc[name]["plots"]
        assert sorted(job["output"]) == sorted(declared), name
    # the transfer: the frozen class-conditional tokenizers feed the room
    assert "freeze_baseline" in dvc["t2i_tokenize_baseline"]["upstream"]
    assert {f"freeze@{s}-gear" for s in P.study.seeds} == {
        u for s in P.study.seeds for u in dvc[f"t2i_tokenize@{s}"]["upstream"] if u.startswith("freeze")}


def test_same_params_per_stage(smk, dvc):
    """Both from the stage's declaration (gear/dag.py): the rule's params hold the values of the keys DVC lists."""
    for name, stage in dvc.items():
        assert sorted(smk[name]["params"]["digest"]) == sorted(stage["params"]), name


def test_commands_are_gear_stages(smk, dvc):
    for name, stage in dvc.items():
        _, argv = gear_argv(stage["cmd"])
        ns = build_parser().parse_args(argv)
        rule, _, seed = name.partition("@")
        arm = next((a for a in t2i_paths.ARMS if rule.endswith(f"_{a}")), None)
        base = rule[: -len(arm) - 1] if arm else rule
        assert ns.stage == base.replace("_", "-").replace("t2i-evaluate-real", "t2i-evaluate"), name
        assert ns.params == "params.yaml" and ns.overrides == []
        if base == "t2i_tokenize" and arm is None:
            arm = "gear"
        assert getattr(ns, "arm", None) == arm and ("" if getattr(ns, "seed", None) is None else str(ns.seed)) == seed, name
        if base.startswith("t2i_evaluate"):
            assert ns.what == ("real" if base == "t2i_evaluate_real" else "samples")
        smk_prefix, smk_argv = gear_argv(smk[name]["shell"])
        assert smk_argv == argv and smk_prefix == [], smk[name]["shell"]


def test_dvc_paths_match_t2i_paths(dvc):
    """Every declared output at t2i/paths.py's path, the dvclive folders' curves among them as plain
    outputs: no DVC plots or metrics, so a room that has not run makes neither `dvc plots diff` nor
    `dvc metrics show` warn (README, "What DVC shows")."""
    want = {"t2i_shard": [t2i_paths.SHARD_DIR], "t2i_encode": [t2i_paths.CAPTIONS_DIR],
            "t2i_tokenize_baseline": [t2i_paths.tokens_dir("baseline")], "t2i_evaluate_real": [t2i_paths.REAL_DIR],
            "t2i_report": [t2i_paths.report_files()[n] for n in ("t2i.json", "t2i_figures", "t2i.md", "t2i.html")]}
    live = t2i_paths.judge_metrics_dir()
    want["t2i_judge"] = [t2i_paths.JUDGE_DIR, live / "metrics.json", live / "plots" / "metrics"]
    for seed in P.study.seeds:
        want[f"t2i_tokenize@{seed}"] = [t2i_paths.tokens_dir("gear", seed)]
        for a in t2i_paths.ARMS:
            live = t2i_paths.train_metrics_dir(a, seed)
            want[f"t2i_train_{a}@{seed}"] = [t2i_paths.ar_dir(a, seed), live / "metrics.json", live / "plots" / "metrics"]
            want[f"t2i_sample_{a}@{seed}"] = [t2i_paths.samples_dir(a, seed)]
            want[f"t2i_evaluate_{a}@{seed}"] = [t2i_paths.eval_json(a, seed)]
    assert not any(s["metrics"] or s["plots"] for s in dvc.values())
    for name, outs in want.items():
        assert dvc[name]["outs"] == [str(p) for p in outs], name


def test_main_job_leaves_the_room_alone():
    """`dvc repro` and `snakemake all` never run a t2i stage: the main job keeps its wall time."""
    main = dvc_stages("dvc.yaml")
    assert not any(n.startswith("t2i") for n in main)
    smk_text = (ROOT / "Snakefile").read_text()
    assert "t2i" not in smk_text.split("rule all:")[1]
