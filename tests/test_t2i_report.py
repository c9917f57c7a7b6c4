"""`gear t2i-report` on fabricated T2I outputs (eval JSONs, dvclive curves, sample grids, the judge's
config) for one seed and for three: the paper's verdicts read on clear, reversed and noisy FDD
differences, the speed-up of a faster-falling curve, a missing or stale input refused in one line
before anything is written, and reports/ untouched beyond the T2I report's own entries."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gear.cli import main
from gear.io import ArtifactError, write_json
from gear.paths import REPORTS_DIR
from gear.report import t2i as report
from gear.report.readers import tsv
from gear.t2i import paths
from report_worlds import t2i_world, write_t2i
from tiny import PARAMS, sets


def _out() -> tuple[str, str, dict]:
    return ((REPORTS_DIR / "t2i.md").read_text(), (REPORTS_DIR / "t2i.html").read_text(),
            json.loads((REPORTS_DIR / "t2i.json").read_text()))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_three_seeds_gear_lower_holds(tmp_path, monkeypatch):
    t2i_world(tmp_path, monkeypatch, [0, 1, 2], [-10.0, -9.0, -11.0])
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
    p = t2i_world(tmp_path, monkeypatch, [0, 1, 2], delta)
    report.run(p)
    v = _out()[2]["verdicts"]
    assert v["fdd_without_cfg"] == {"overall": want, "per_step": {"3": want, "6": want}}
    assert v["fdd_with_cfg"]["overall"] == want


def test_one_seed_concludes_nothing_without_judge_or_repa(tmp_path, monkeypatch):
    p = t2i_world(tmp_path, monkeypatch, [0], [-10.0], "t2i.ar.align_weight=0")
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
    p = t2i_world(tmp_path, monkeypatch, [0, 1, 2], [-10.0, -9.0, -11.0])
    paths.eval_json("gear", 1).unlink()
    with pytest.raises(ArtifactError) as e:
        report.run(p)
    msg = str(e.value)
    assert "\n" not in msg and "t2i/eval/seed1/gear.json not found" in msg
    assert "`gear t2i-evaluate samples --arm gear --seed 1`" in msg
    assert sorted(x.name for x in REPORTS_DIR.iterdir()) == ["index.md"]
    # stale: a snapshot of t2i.ar.eval_steps is missing
    write_t2i(p, [-10.0, -9.0, -11.0])
    e1 = json.loads(paths.eval_json("baseline", 2).read_text())
    e1["snapshots"] = [s for s in e1["snapshots"] if s["step"] != 3]
    write_json(paths.eval_json("baseline", 2), e1)
    with pytest.raises(ArtifactError, match=r"seed2/baseline.json: no snapshot at step 3 .*rerun `gear t2i-evaluate "
                                            r"samples --arm baseline --seed 2`"):
        report.run(p)
    assert sorted(x.name for x in REPORTS_DIR.iterdir()) == ["index.md"]
    # corrupt: the judge's config is not JSON
    write_t2i(p, [-10.0, -9.0, -11.0])
    (paths.JUDGE_DIR / "config.json").write_text("{oops")
    with pytest.raises(ArtifactError, match=r"judge/config.json: not valid JSON .*; rerun `gear t2i-judge`$"):
        report.run(p)
    assert sorted(x.name for x in REPORTS_DIR.iterdir()) == ["index.md"]


def test_a_second_run_replaces_only_its_own_entries(tmp_path, monkeypatch):
    p = t2i_world(tmp_path, monkeypatch, [0, 1, 2], [-10.0, -9.0, -11.0])
    report.run(p)
    before = _tree(REPORTS_DIR)
    (REPORTS_DIR / "t2i_figures" / "stale.png").write_bytes(b"x")
    report.run(p)
    assert _tree(REPORTS_DIR) == before  # deterministic, and the stale figure is gone
