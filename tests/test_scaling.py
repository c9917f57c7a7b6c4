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
    assert [s for s, _ in rungs] == ["nano", "tiny", "mini", "small"]
    params = [scaling.guide_params(s) for s, _ in rungs]
    assert params == sorted(params) and len(set(params)) == 4
    by = dict(rungs)
    assert by["tiny"].default  # the params' own guide and tap: the main DAG's GEAR arm
    assert dict(by["small"].overrides) == {"tune.ar_size": "small", "align_layer": 3}
    rp = ablations.row_params(p, by["nano"])
    assert (rp.tune.ar_size, rp.align_layer, rp.align_weight) == ("nano", 1, p.align_weight)
    # lambda at the largest guide: its own weight is the ladder's top rung, the others new rows
    (w0, r0), (w1, r1) = scaling.lambdas(p)
    assert (w0, r0) == (p.align_weight, by["small"]) and w1 == 2.0 and r1.name == "guide-small-lambda-2"
    assert ablations.find(p, "guide-small-lambda-2") == r1  # the CLI's --ablation finds ladder rows
    lay = ablations.layout(p, r1)  # a rung shares the teacher and the warm-up, owns its tune
    assert str(lay.tuned) == "ablations/guide-small-lambda-2" and str(lay.warmup) == "."


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
    # the ladder: C5 tokenizer contradicted at nano, holds from tiny on; its reading turns at tiny
    lad = js["ladder"]
    assert [lad[s]["C5 tokenizer"]["verdict"] for s in ("nano", "tiny", "mini", "small")] == \
        ["contradicted", "holds", "holds", "holds"]
    assert lad["small"]["C5 tokenizer"]["mean"] == pytest.approx(0.08 - 0.173)
    assert lad["nano"]["block_params"] < lad["small"]["block_params"]
    assert js["lambda"]["2.0"]["row"] == "guide-small-lambda-2"
    assert "C5 tokenizer reads contradicted / holds / holds / holds: its reading changes at tiny" in md
    assert "GEAR vs control" in md and "scaling_figures/ladder.png" in md
    assert (paths.REPORTS_DIR / "scaling_figures" / "ladder.png").stat().st_size > 0
    assert "data:image/png;base64," in (paths.REPORTS_DIR / "scaling.html").read_text()


def test_scaling_report_refuses_a_missing_rung_in_one_line(tmp_path, monkeypatch):
    from gear.io import ArtifactError

    p = scaling_world(tmp_path, monkeypatch, [0, 1])
    row = ablations.find(p, "guide-nano")
    scaling.row_tokenizer_json(p, row, 1).unlink()
    with pytest.raises(ArtifactError, match="--ablation guide-nano") as e:
        scaling_report.run(p)
    assert "\n" not in str(e.value) and not (paths.REPORTS_DIR / "scaling.md").exists()
