"""The ablation grid as params (gear/ablations.py): the seed's rows, one-line errors, row params and paths.

The grid's DAG rules and report land with the rest of issue 14; these check the parts that exist.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from gear import ablations, paths
from gear.config import ParamsError, load_params
from tiny import ROOT


def test_imagenet_preset_grid_is_the_seeds_tables():
    p = load_params(ROOT / "presets" / "imagenet256.yaml")
    rows = ablations.grid(p)
    assert len(rows) == sum(len(t) for t in ablations.SEED_TABLES.values()) - len(ablations.SEED_TABLES) + 1
    for axis, seed_rows in ablations.SEED_TABLES.items():
        ours = ablations.table(p, axis)
        assert len(ours) == len(seed_rows) and sum(r.default for r in ours) == 1, axis
        if axis not in ("align_layer", "tune_ar_size"):  # matched by position at other depths/sizes
            theirs = {str(v) for v, label, *_ in seed_rows if not label.endswith("*")}
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
