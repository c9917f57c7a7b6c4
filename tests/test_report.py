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
from PIL import Image
from scipy import stats

from gear import paths
from gear.cli import main
from gear.config import load_params
from gear.io import ArtifactError, write_json
from gear.report import main as report
from gear.report.figures import smooth, speedup
from gear.report.inputs import CODEBOOK
from gear.report.readers import tsv
from gear.report.verdicts import (fmt_interval, log_ratio_interval, mean_interval, paired_interval,
                                  reading)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


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


# ---- synthetic pipeline outputs -----------------------------------------------------------------

def _tsv(path: Path, name: str, steps, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{name}\n" + "".join(f"{s}\t{v}\n" for s, v in zip(steps, values)))


def write_training_metrics(p, seeds) -> None:
    """dvclive folders of every training stage and seed: GEAR's NTP reaches the baseline's final
    value at step 60 of 100 (smoothed over 5 points), its alignment loss never does."""
    steps = list(range(0, 101, 10))
    for k, seed in enumerate(seeds):
        jitter = 0.01 * k
        curves = {"baseline": {"ntp": [3.0 + jitter] * 11, "align": [-0.5] * 11},
                  "gear": {"ntp": [4.0] * 4 + [2.0 + jitter] * 7, "align": [-0.2 - jitter] * 11}}
        for arm, named in curves.items():
            d = paths.train_ar_metrics_dir(arm, "tiny", seed)
            for name, values in named.items():
                _tsv(tsv(d, name), name, steps, values)
            write_json(d / "metrics.json", {"step": 100, "ntp": named["ntp"][-1], "align": named["align"][-1],
                                            "val_ntp": 3.5 + jitter, "lr": 1e-3})
        for v in paths.tune_variants(p):
            d = paths.tune_metrics_dir(v, seed)
            for name in CODEBOOK:
                _tsv(tsv(d, name), name, steps, np.linspace(1, 0.5, 11) + jitter)
            write_json(d / "metrics.json", {"step": 100, "val_psnr": 20.0, "usage": 0.5})
    write_json(paths.metrics_dir("tokenizer_init") / "metrics.json", {"step": 100, "val_psnr": 21.0})
    write_json(paths.metrics_dir("teacher") / "metrics.json", {"step": 10, "val_acc": 0.25})


TOK = {"rfid": 1.72, "rfid_val": 1.25, "val_fid": 0.5, "psnr": 25.0, "ssim": 0.875, "usage": 1.0, "entropy": 6.0,
       "effective_size": math.exp(6.0), "cka_pre": 0.173, "cknna_pre": 0.25, "cka_post": 0.125, "cknna_post": None,
       "feature_space": "demo", "num_images": 80, "real_split": "train", "num_real": 200, "cknna_k": 10,
       "teacher": "demo", "num_patches": 256}


def write_evals(p, seeds) -> None:
    """Eval JSONs with clear effects (seed-to-seed jitter much smaller than them): GEAR's gFID
    lower, entropy lower but far above collapse, PSNR within the margin, tokenizer CKA lower, AR
    CKA higher; STE collapsed."""
    write_json(paths.real_stats_dir() / "summary.json", {"feature_space": "demo", "extractor": "x", "num_real": 200,
                                                          "real_split": "train", "resolution": 32})
    write_json(paths.eval_tokenizer_json("baseline"), TOK)
    write_json(paths.freeze_stats_json("baseline"), {"arm": "baseline"})
    for k, seed in enumerate(seeds):
        j = 0.01 * (k - 1)
        gear = dict(TOK, rfid=1.64 + j, psnr=24.9 + j, entropy=5.5 + j, effective_size=math.exp(5.5 + j),
                    cka_pre=0.107 + j)
        ste = dict(TOK, rfid=59.7 + j, psnr=20.0, entropy=2.0 + j, effective_size=math.exp(2.0 + j), usage=0.05)
        for arm, e in (("gear", gear), ("ste", ste)):
            write_json(paths.eval_tokenizer_json(arm, seed), {"arm": arm, "seed": seed, **e})
            write_json(paths.freeze_stats_json(arm, seed), {"arm": arm})
        for i, arm in enumerate(paths.AR_ARMS):
            write_json(paths.eval_samples_json(arm, "tiny", seed), {
                "fid": 20.16 - 3.2 * i + j * (1 + 2 * i), "is_mean": 5.5, "precision": 0.75, "recall": 0.5, "feature_space": "demo",
                "num_samples": 256, "num_real": 200, "real_split": "train", "ar_layers": [1, 2],
                "ar_cka": {"1": 0.1 + i / 10 + j, "2": 0.2 + i / 10}, "ar_cknna": {"1": None, "2": 0.3},
                "ar_num_patches": 256})
            grid = paths.samples_dir(arm, "tiny", seed) / "grid.png"
            grid.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(grid)


def _world(tmp_path, monkeypatch, seeds):
    monkeypatch.chdir(tmp_path)
    p = load_params(PARAMS, [f"study.seeds={seeds}"])
    write_evals(p, seeds)
    write_training_metrics(p, seeds)
    return p


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_report_with_one_seed_concludes_nothing(tmp_path, monkeypatch):
    p = _world(tmp_path, monkeypatch, [0])
    report.run(p)
    md = (paths.REPORTS_DIR / "index.md").read_text()
    assert "One seed: nothing can be concluded from the differences below." in md
    claims = json.loads((paths.REPORTS_DIR / "claims.json").read_text())
    verdicts = {k: v["verdict"] for k, v in claims.items() if isinstance(v, dict)}
    assert set(verdicts.values()) == {"not concluded (1 seed)"}, verdicts  # no interval, no verdict either way
    assert all(v["lo"] is None and v["n_seeds"] == 1 for k, v in claims.items() if isinstance(v, dict))
    gfid = next(line for line in md.splitlines() if line.startswith("| gFID |"))
    assert "(n=1, no interval)" in gfid and gfid.endswith("| not concluded (1 seed) |")


def test_report_with_three_seeds_intervals_and_claims(tmp_path, monkeypatch):
    seeds = [0, 1, 2]
    p = _world(tmp_path, monkeypatch, seeds)
    assert main(["report", f"--params={PARAMS}", f"--set=study.seeds={seeds}"]) == 0
    md, page = (paths.REPORTS_DIR / "index.md").read_text(), (paths.REPORTS_DIR / "index.html").read_text()
    assert "One seed" not in md
    claims = json.loads((paths.REPORTS_DIR / "claims.json").read_text())
    assert claims["seeds"] == seeds and claims["confidence"] == 0.95
    want = {"C1": "holds", "C2 ntp (tiny)": "holds", "C2 align (tiny)": "contradicted", "C3": "holds", "C4": "holds",
            "C5 tokenizer": "holds", "C5 AR (tiny)": "holds", "C6 (tiny)": "holds"}
    assert {k: claims[k]["verdict"] for k in want} == want
    # the gFID row: per-seed values of both arms, mean ± std, and scipy's paired t interval
    base = [20.16 + 0.01 * (k - 1) for k in range(3)]
    gear = [16.96 + 0.03 * (k - 1) for k in range(3)]
    d = np.array(gear) - np.array(base)
    row = next(line for line in md.splitlines() if line.startswith("| gFID |")).split(" | ")
    assert row[1] == " / ".join(report.fmt(v) for v in base) and row[2] == " / ".join(report.fmt(v) for v in gear)
    assert row[5] == fmt_interval(paired_interval(base, gear)) and row[6] == "GEAR better |"
    assert claims["C6 (tiny)"]["mean"] == pytest.approx(d.mean())
    # every figure is inline; the tables name their seeded sources
    assert all(x.startswith("data:image/png;base64,") for x in re.findall(r'src="([^"]*)"', page))
    for needle in ("eval/samples/seed2/gear/tiny.json", "metrics/tune/seed1/ste/plots/metrics/usage.tsv",
                   "Study seeds: 0, 1, 2", "speed-up, geometric mean", "| C1: STE collapses the codebook"):
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
