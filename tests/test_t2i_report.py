"""`gear t2i-report` on fabricated T2I outputs (eval JSONs, dvclive curves, sample grids, the judge's
config) for one seed and for three: the paper's verdicts read on clear, reversed and noisy FDD
differences, the speed-up of a faster-falling curve, a missing or stale input refused in one line
before anything is written, and reports/ untouched beyond the T2I report's own entries."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from gear.cli import main
from gear.config import load_params
from gear.io import ArtifactError, write_json
from gear.paths import REPORTS_DIR
from gear.report import t2i as report
from gear.report.readers import tsv
from gear.t2i import paths
from tiny import PARAMS, TINY, sets

ACC = {"shape": 0.5, "colour": 0.6, "position": 0.7, "all": 0.3}


def _tsv(path: Path, name: str, steps, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{name}\n" + "".join(f"{s}\t{v}\n" for s, v in zip(steps, values)))


def write_world(p, fdd_delta) -> None:
    """Every input of the report. fdd_delta[k]: GEAR's FDD - the baseline's at seed index k (both
    CFG settings, every step); GEAR's NTP and REPA curves reach the baseline's final value first."""
    cfg = p.t2i.sample.cfg_scale
    write_json(paths.JUDGE_DIR / "config.json", {"available": True, "val_accuracy": {**ACC, "all": 0.9}})
    steps = list(range(0, 101, 10))
    for k, seed in enumerate(p.study.seeds):
        j = 0.1 * k  # seed-to-seed jitter of both arms
        for i, arm in enumerate(paths.ARMS):
            snaps = [{"step": step, "cfg_scale": c, "num_samples": 12,
                      "fdd": 100.0 - 5 * t - 20 * (c > 1) + j + i * fdd_delta[k], "precision": 0.5 + 0.01 * i + j / 10,
                      "recall": 0.4 + 0.02 * i + j / 20, "prompt_accuracy": {a: v + 0.1 * i + j / 10 for a, v in ACC.items()}}
                     for t, step in enumerate(p.t2i.ar.eval_steps) for c in (1.0, cfg)]
            write_json(paths.eval_json(arm, seed), {
                "arm": arm, "seed": seed, "feature_space": "demo", "num_real": 32, "prompts": 6, "per_prompt": 2,
                "text_encoder": "demo", "ar_size": "custom", "judge": {"available": True, "val_accuracy": ACC},
                "snapshots": snaps})
            d = paths.train_metrics_dir(arm, seed)
            curves = {"ntp": [3.0 + j] * 11 if arm == "baseline" else [4.0] * 4 + [2.0 + j] * 7,
                      "align": [-0.5] * 11 if arm == "baseline" else [-0.2] * 3 + [-0.8 - j] * 8,
                      "val_ntp": [3.5 - 0.01 * n - 0.3 * i for n in range(11)]}
            for name, values in curves.items():
                _tsv(tsv(d, name), name, steps, values)
            write_json(d / "metrics.json", {"step": 100, "ntp": curves["ntp"][-1]})
            s = paths.samples_dir(arm, seed)
            s.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200 * i, 0, 0)).save(s / "grid.png")
            write_json(s / "config.json", {"prompts": ["a red circle at the top", "a blue square on the left"]})


def _world(tmp_path, monkeypatch, seeds, fdd_delta, *extra):
    monkeypatch.chdir(tmp_path)
    p = load_params(PARAMS, [*TINY, f"study.seeds={seeds}", *extra])
    write_world(p, fdd_delta)
    REPORTS_DIR.mkdir()
    (REPORTS_DIR / "index.md").write_text("the main report\n")
    return p


def _out() -> tuple[str, str, dict]:
    return ((REPORTS_DIR / "t2i.md").read_text(), (REPORTS_DIR / "t2i.html").read_text(),
            json.loads((REPORTS_DIR / "t2i.json").read_text()))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_three_seeds_gear_lower_holds(tmp_path, monkeypatch):
    p = _world(tmp_path, monkeypatch, [0, 1, 2], [-10.0, -9.0, -11.0])
    assert main(["t2i-report", "--params", str(PARAMS), *sets("study.seeds=[0,1,2]")]) == 0
    md, page, out = _out()
    assert sorted(x.name for x in REPORTS_DIR.iterdir()) == ["index.md", "t2i.html", "t2i.json", "t2i.md", "t2i_figures"]
    assert (REPORTS_DIR / "index.md").read_text() == "the main report\n"
    assert sorted(x.name for x in (REPORTS_DIR / "t2i_figures").iterdir()) == [
        "curves.png", "fdd.png", "samples_baseline.png", "samples_gear.png"]
    # verdicts vs the paper's direction, and the numbers behind them
    assert out["seeds"] == [0, 1, 2] and out["confidence"] == 0.95
    v = out["verdicts"]
    assert v["fdd_without_cfg"] == {"overall": "holds", "per_step": {"3": "holds", "6": "holds"}}
    assert v["fdd_with_cfg"]["overall"] == "holds" and v["ntp_speedup"] == "holds" and v["align_speedup"] == "holds"
    row = next(r for r in out["fdd"] if r["step"] == 6 and r["metric"] == "fdd_without_cfg")
    assert row["difference"]["mean"] == pytest.approx(-10.0) and row["difference"]["hi"] < 0
    assert row["gear"] == pytest.approx([95.0 - 10, 95.1 - 9, 95.2 - 11])
    ntp = out["speedups"]["ntp"]
    assert ntp["geometric_mean"]["mean"] > 1 and ntp["paper_figure"] == 2.5
    assert [s["ratio"] for s in ntp["per_seed"]] == pytest.approx([100 / 60] * 3)
    assert out["speedups"]["align"]["geometric_mean"]["lo"] > 1
    acc = next(r for r in out["prompt_accuracy"] if r["attribute"] == "all" and r["cfg"] and r["step"] == 6)
    assert acc["difference"]["mean"] == pytest.approx(0.1) and acc["reading"] == "GEAR better"
    # the page: the paper's layout and numbers beside ours, sources named, images inline
    for needle in ("## The paper's T2I claims", "## FDD and precision / recall",
                   "LlamaGen-REPA-1.0B", "| 390k | GEAR-1.0B | 200.9 | 115.3 | 0.92 | 0.8 |", "JiT-GPIC-1.1B",
                   "2.5x", "11.1x", "not comparable to the paper's DINOv2 FDD", "`t2i/eval/seed{0,1,2}/{baseline,gear}.json`",
                   "`t2i/metrics/train/seed{0,1,2}/{baseline,gear}/plots/metrics/{ntp,align}.tsv`", "a blue square on the left",
                   "## Prompt following", "Study seeds: 0, 1, 2"):
        assert needle in md, needle
    assert "One seed" not in md
    imgs = re.findall(r'src="([^"]*)"', page)
    assert len(imgs) == 4 and all(x.startswith("data:image/png;base64,") for x in imgs)


@pytest.mark.parametrize("delta, want", [([10.0, 9.0, 11.0], "contradicted"), ([2.0, -3.0, 1.0], "within noise")])
def test_three_seeds_reversed_or_noisy_fdd(tmp_path, monkeypatch, delta, want):
    p = _world(tmp_path, monkeypatch, [0, 1, 2], delta)
    report.run(p)
    v = _out()[2]["verdicts"]
    assert v["fdd_without_cfg"] == {"overall": want, "per_step": {"3": want, "6": want}}
    assert v["fdd_with_cfg"]["overall"] == want


def test_one_seed_concludes_nothing_without_judge_or_repa(tmp_path, monkeypatch):
    p = _world(tmp_path, monkeypatch, [0], [-10.0], "t2i.ar.align_weight=0")
    write_json(paths.JUDGE_DIR / "config.json", {"available": False, "reason": "captions carry no attributes"})
    for arm in paths.ARMS:  # no REPA loss is logged without alignment
        tsv(paths.train_metrics_dir(arm, 0), "align").unlink()
    report.run(p)
    md, _, out = _out()
    assert "One seed: nothing can be concluded from the differences below." in md
    assert out["verdicts"]["fdd_without_cfg"]["overall"] == "not concluded (1 seed)"
    assert out["verdicts"]["ntp_speedup"] == "not concluded (1 seed)" and out["speedups"]["align"] is None
    assert out["speedups"]["ntp"]["per_seed"][0]["ratio"] > 1 and out["prompt_accuracy"] == []
    assert "No prompt-following judge: captions carry no attributes" in md
    assert "(n=1, no interval)" in md and "NaN" not in (REPORTS_DIR / "t2i.json").read_text()


def test_missing_or_stale_input_fails_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    p = _world(tmp_path, monkeypatch, [0, 1, 2], [-10.0, -9.0, -11.0])
    paths.eval_json("gear", 1).unlink()
    with pytest.raises(ArtifactError) as e:
        report.run(p)
    msg = str(e.value)
    assert "\n" not in msg and "t2i/eval/seed1/gear.json not found" in msg
    assert "`gear t2i-evaluate samples --arm gear --seed 1`" in msg
    assert sorted(x.name for x in REPORTS_DIR.iterdir()) == ["index.md"]
    # stale: a snapshot of t2i.ar.eval_steps is missing
    write_world(p, [-10.0, -9.0, -11.0])
    e1 = json.loads(paths.eval_json("baseline", 2).read_text())
    e1["snapshots"] = [s for s in e1["snapshots"] if s["step"] != 3]
    write_json(paths.eval_json("baseline", 2), e1)
    with pytest.raises(ArtifactError, match=r"seed2/baseline.json: no snapshot at step 3 .*rerun `gear t2i-evaluate "
                                            r"samples --arm baseline --seed 2`"):
        report.run(p)
    assert sorted(x.name for x in REPORTS_DIR.iterdir()) == ["index.md"]
    # corrupt: the judge's config is not JSON
    write_world(p, [-10.0, -9.0, -11.0])
    (paths.JUDGE_DIR / "config.json").write_text("{oops")
    with pytest.raises(ArtifactError, match=r"judge/config.json: not valid JSON .*; rerun `gear t2i-judge`$"):
        report.run(p)
    assert sorted(x.name for x in REPORTS_DIR.iterdir()) == ["index.md"]
    assert set(report.inputs(p)) >= {paths.eval_json("gear", 1), paths.JUDGE_DIR / "config.json",
                                     paths.samples_dir("gear", 0) / "grid.png",
                                     tsv(paths.train_metrics_dir("baseline", 2), "align")}
    declared = report.producer_outputs(p)  # what the t2i rules declare: folders for files inside directory() outputs
    assert paths.JUDGE_DIR in declared and paths.samples_dir("gear", 0) in declared and paths.eval_json("gear", 1) in declared
    assert tsv(paths.train_metrics_dir("baseline", 2), "align").parent in declared and len(declared) == len(set(declared))


def test_a_second_run_replaces_only_its_own_entries(tmp_path, monkeypatch):
    p = _world(tmp_path, monkeypatch, [0, 1, 2], [-10.0, -9.0, -11.0])
    report.run(p)
    before = _tree(REPORTS_DIR)
    (REPORTS_DIR / "t2i_figures" / "stale.png").write_bytes(b"x")
    report.run(p)
    assert _tree(REPORTS_DIR) == before  # deterministic, and the stale figure is gone
