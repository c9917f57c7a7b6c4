"""The report's statistics: intervals against scipy on known data, the symmetric speed-up, and the
report rendered from synthetic pipeline outputs with one seed and with three (claims verdicts,
per-seed values, intervals, a missing input refused in one line)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from gear import paths
from gear.cli import main
from gear.config import load_params
from gear.io import ArtifactError
from gear.report import main as report
from gear.report.document import fmt
from gear.report.figures import smooth, speedup
from gear.report.verdicts import (fmt_interval, log_ratio_interval, mean_interval, paired_interval,
                                  reading)
from report_worlds import main_world
from tiny import PARAMS


# ---- intervals ----------------------------------------------------------------------------------

def test_paired_t_interval_matches_scipy():
    base, gear = np.array([10.0, 12.0, 11.0, 13.0]), np.array([9.0, 10.5, 10.0, 11.5])
    d = gear - base
    iv = paired_interval(base, gear, 0.95)
    lo, hi = stats.t.interval(0.95, df=len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert iv.mean == pytest.approx(d.mean()) and iv.lo == pytest.approx(lo) and iv.hi == pytest.approx(hi)
    assert iv.std == pytest.approx(d.std(ddof=1)) and iv.n == 4
    lo90, hi90 = stats.t.interval(0.90, df=3, loc=d.mean(), scale=stats.sem(d))
    assert paired_interval(base, gear, 0.90).lo == pytest.approx(lo90) and lo < lo90 < hi90 < hi
    assert hi < 0 and reading(iv, lower_is_better=True) == "GEAR better"
    assert reading(iv, lower_is_better=False) == "GEAR worse"


def test_interval_edge_cases():
    one = paired_interval([1.0], [3.0])
    assert one.mean == 2.0 and math.isnan(one.lo) and not one.defined
    assert reading(one, True) == "not concluded (1 seed)" and "no interval" in fmt_interval(one)
    same = mean_interval([2.0, 2.0, 2.0])
    assert (same.lo, same.hi) == (2.0, 2.0)
    noisy = paired_interval([1.0, 2.0, 3.0], [1.5, 1.0, 3.4])  # differences +0.5, -1, +0.4: straddle 0
    assert noisy.lo < 0 < noisy.hi and reading(noisy, True) == "within noise"
    with pytest.raises(ValueError, match="one per seed"):
        paired_interval([1.0, 2.0], [1.0])


def test_log_ratio_interval_is_a_t_interval_on_logs():
    r = np.array([2.0, 2.5, 1.6])
    iv = log_ratio_interval(r)
    lo, hi = stats.t.interval(0.95, df=2, loc=np.log(r).mean(), scale=stats.sem(np.log(r)))
    assert iv.mean == pytest.approx(stats.gmean(r)) and iv.lo == pytest.approx(math.exp(lo))
    assert iv.hi == pytest.approx(math.exp(hi))
    with pytest.raises(ValueError, match="> 0"):
        log_ratio_interval([1.0, 0.0])


def test_speedup_is_symmetric_around_one():
    s = np.arange(0, 101, 10)
    fast = speedup((s, np.full(11, 3.0)), (s, np.array([4.0] * 4 + [2.0] * 7)))
    # smoothed GEAR: 3.6 at 40, 3.2 at 50, 2.8 at 60 <= 3
    assert fast["gear_reach_step"] == 60 and fast["ratio"] == pytest.approx(100 / 60)
    slow = speedup((s, np.array([4.0] * 4 + [2.0] * 7)), (s, np.full(11, 3.0)))
    assert slow["gear_reach_step"] is None and slow["baseline_reach_step"] == 60 and slow["ratio"] == pytest.approx(0.6)
    assert np.allclose(smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])


# ---- the report on synthetic pipeline outputs (report_worlds.py) --------------------------------

def _tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_report_with_one_seed_concludes_nothing(tmp_path, monkeypatch):
    p = main_world(tmp_path, monkeypatch, [0])
    report.run(p)
    md = (paths.REPORTS_DIR / "index.md").read_text()
    assert "One seed: nothing can be concluded from the differences below." in md
    claims = json.loads((paths.REPORTS_DIR / "claims.json").read_text())
    verdicts = {k: v["verdict"] for k, v in claims.items() if isinstance(v, dict)}
    assert set(verdicts.values()) == {"not concluded (1 seed)"}, verdicts  # no interval, no verdict either way
    assert all(v["lo"] is None and v["n_seeds"] == 1 for k, v in claims.items() if isinstance(v, dict))
    gfid = next(line for line in md.splitlines() if line.startswith("| gFID |"))
    assert "(n=1, no interval)" in gfid and gfid.endswith("| not concluded (1 seed) |")
    head = json.loads((paths.REPORTS_DIR / "headline.json").read_text(), parse_constant=pytest.fail)
    assert set(head["claims"].values()) == {"not concluded (1 seed)"} and head["baseline"]["tiny"]["gfid"] == 20.15


def test_report_with_three_seeds_intervals_and_claims(tmp_path, monkeypatch):
    seeds = [0, 1, 2]
    p = main_world(tmp_path, monkeypatch, seeds)
    assert main(["report", f"--params={PARAMS}", f"--set=study.seeds={seeds}"]) == 0
    md, page = (paths.REPORTS_DIR / "index.md").read_text(), (paths.REPORTS_DIR / "index.html").read_text()
    assert "One seed" not in md
    claims = json.loads((paths.REPORTS_DIR / "claims.json").read_text())
    assert claims["seeds"] == seeds and claims["confidence"] == 0.95
    want = {"C1": "holds", "C2 ntp (tiny)": "holds", "C2 align (tiny)": "contradicted", "C3": "holds", "C4": "holds",
            "C5 tokenizer": "holds", "C5 AR (tiny)": "holds", "C6 (tiny)": "holds"}
    assert {k: claims[k]["verdict"] for k in want} == want
    # headline.json: seed means per compared arm (its tokenizer, its AR per size), each claim's
    # verdict, strict JSON
    head = json.loads((paths.REPORTS_DIR / "headline.json").read_text(), parse_constant=pytest.fail)
    assert set(head) == {"baseline", "gear", "claims"} and set(head["gear"]) == {"tiny", "rfid", "psnr", "ent", "eff"}
    assert head["gear"]["tiny"] == pytest.approx({"gfid": 16.96, "is": 5.5, "prec": 0.75, "rec": 0.5})
    assert head["baseline"]["rfid"] == 1.72
    assert {k: head["gear"][k] for k in ("rfid", "psnr", "ent", "eff")} == pytest.approx(
        {"rfid": 1.64, "psnr": 24.9, "ent": 5.5, "eff": np.mean([math.exp(5.5 + 0.01 * (k - 1)) for k in range(3)])})
    assert head["claims"] == {"C1": "holds", "C2_ntp_tiny": "holds", "C2_align_tiny": "contradicted", "C3": "holds",
                              "C4": "holds", "C5_tokenizer": "holds", "C5_AR_tiny": "holds", "C6_tiny": "holds"}
    # the gFID row: per-seed values of both arms, mean ± std, and scipy's paired t interval
    base = [20.16 + 0.01 * (k - 1) for k in range(3)]
    gear = [16.96 + 0.03 * (k - 1) for k in range(3)]
    d = np.array(gear) - np.array(base)
    row = next(line for line in md.splitlines() if line.startswith("| gFID |")).split(" | ")
    assert row[1] == " / ".join(fmt(v) for v in base) and row[2] == " / ".join(fmt(v) for v in gear)
    assert row[5] == fmt_interval(paired_interval(base, gear)) and row[6] == "GEAR better |"
    assert claims["C6 (tiny)"]["mean"] == pytest.approx(d.mean())
    # every figure is inline; the tables name their seeded sources
    assert all(x.startswith("data:image/png;base64,") for x in re.findall(r'src="([^"]*)"', page))
    for needle in ("eval/samples/seed2/gear/tiny.json", "metrics/tune/seed1/ste/plots/metrics/usage.tsv",
                   "Study seeds: 0, 1, 2", "speed-up, geometric mean", "| C1: STE collapses the codebook",
                   # a speed-up's resolution: rows every 10 of 100 steps, so 100 / 90 next to 1
                   "x (a log row every 10 steps: a seed's ratio moves by 1.11x near 1)"):
        assert needle in md, needle

    # a missing input of one seed: one line naming it, exit 2, reports/ unchanged
    before = _tree(paths.REPORTS_DIR)
    paths.eval_samples_json("gear", "tiny", 1).unlink()
    with pytest.raises(ArtifactError, match=r"eval/samples/seed1/gear/tiny.json not found \(1 missing"):
        report.run(p)
    assert _tree(paths.REPORTS_DIR) == before


def test_report_files_replace_only_their_own_entries(tmp_path):
    """gear report and gear ablation-report share reports/: each replaces only its own files."""
    from gear.io import atomic_entries

    d = tmp_path / "reports"
    d.mkdir()
    (d / "ablations.md").write_text("kept\n")
    (d / "figures").mkdir()
    (d / "figures" / "old.png").write_text("old")
    with atomic_entries(d, ["figures", "index.md"]) as out:
        (out / "figures").mkdir()
        (out / "figures" / "new.png").write_text("new")
        (out / "index.md").write_text("new report\n")
    assert sorted(p.name for p in d.iterdir()) == ["ablations.md", "figures", "index.md"]
    assert [p.name for p in (d / "figures").iterdir()] == ["new.png"]
    with pytest.raises(RuntimeError), atomic_entries(d, ["index.md"]) as out:
        (out / "index.md").write_text("half")
        raise RuntimeError("stage failed")
    assert (d / "index.md").read_text() == "new report\n" and sorted(p.name for p in d.iterdir())[0] == "ablations.md"


def _verdict_cells(md: str) -> set[str]:
    """The cells of every markdown table column named verdict or "... direction"."""
    cells, cols = set(), None
    for line in md.splitlines():
        if not line.startswith("|"):
            cols = None
            continue
        row = [c.strip() for c in line.strip("|").split("|")]
        if cols is None:
            cols = [i for i, c in enumerate(row) if c.endswith(("verdict", "direction"))]
        elif not line.startswith("|---"):
            cells |= {row[i] for i in cols}
    return cells


def test_every_report_speaks_one_vocabulary(tmp_path, monkeypatch):
    """The three reports, each with one seed: the same opening note, the same words in every
    verdict column, from the one verdict function."""
    from gear import ablations
    from gear.report import ablations as ablation_report, claims, t2i, verdicts
    from report_worlds import t2i_world, write_ablation_row

    assert claims.verdict is t2i.verdict is ablation_report.verdict is verdicts.verdict
    (tmp_path / "main").mkdir(), (tmp_path / "t2i").mkdir(), (tmp_path / "abl").mkdir()
    report.run(main_world(tmp_path / "main", monkeypatch, [0]))
    t2i.run(t2i_world(tmp_path / "t2i", monkeypatch, [0], [-10.0]))
    monkeypatch.chdir(tmp_path / "abl")
    p = load_params(PARAMS, ["study.seeds=[0]"])
    write_ablation_row(p, ablations.DEFAULT, 0, 30.0, 5.0, 6.0, tmp_path / "abl")
    write_ablation_row(p, ablations.find(p, "tau-0.5"), 0, 25.0, 5.5, 6.1, tmp_path / "abl")
    ablation_report.run(p)
    pages = {name: (tmp_path / name / "reports" / file).read_text()
             for name, file in (("main", "index.md"), ("t2i", "t2i.md"), ("abl", "ablations.md"))}
    for name, md in pages.items():
        assert verdicts.one_seed_note() in md or verdicts.one_seed_note("(e.g. `presets/cpu-study.yaml`)") in md, name
        assert "**One seed: nothing can be concluded from the differences below.**" in md, name
        assert verdicts.LEGEND in md, name
        cells = _verdict_cells(md)
        assert verdicts.ONE_SEED in cells, name
        assert cells <= {verdicts.ONE_SEED, verdicts.NOT_MEASURED}, (name, cells)  # no other word with one seed
