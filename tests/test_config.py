"""params.yaml validation: every bad value is named in one line before any compute."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gear.config import ParamsError, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_and_preset_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.quantizer == "vq" and p.tau > 0
    preset = load_params(ROOT / "presets" / "imagenet256.yaml")
    assert preset.data.resolution == 256 and preset.tokenizer.codebook_size == 16384
    assert preset.ar.sizes == ["B", "L", "XL"] and preset.teacher == "dinov2_vitb14"


@pytest.mark.parametrize("override, needle", [
    ("tau=-1", "tau = -1"),
    ("tau=0", "tau = 0"),
    ("align_weight=-0.5", "align_weight"),
    ("align_layer=99", "align_layer = 99: must be within 1..4"),
    ("quantizer=fsq", "quantizer = 'fsq': must be one of vq, lfq, ibq"),
    ("teacher=resnet", "teacher = 'resnet'"),
    ("e2e_mode=magic", "e2e_mode"),
    ("ar.lr=fast", "ar.lr = 'fast': must be a number"),
    ("tokenizer.ch_mult=[1,2,2,2,2,2,2]", "tokenizer.ch_mult"),
    ("compute.precision=fp16", "compute.precision = 'fp16': must be one of bf16, fp32"),
    ("sample.cfg_scale=0.5", "sample.cfg_scale"),
    ("data.source=imagefolder", "data.train_root"),
])
def test_bad_values_are_named(override, needle):
    with pytest.raises(ParamsError) as e:
        load_params(ROOT / "params.yaml", [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_keys_rejected_by_name_with_suggestion():
    with pytest.raises(ParamsError, match=r"unknown key taau \(did you mean tau\?\)"):
        params_from_dict({"taau": 0.5})
    with pytest.raises(ParamsError, match=r"unknown key ar\.learning_rate"):
        params_from_dict({"ar": {"learning_rate": 1e-3}})


def test_lfq_needs_power_of_two_codebook():
    with pytest.raises(ParamsError, match="power of two"):
        params_from_dict({"quantizer": "lfq", "tokenizer": {"codebook_size": 1000}})


def test_overrides_reach_nested_keys(tmp_path):
    p = load_params(ROOT / "params.yaml", ["tau=0.5", "ar.lr=3e-4", "ar.sizes=[tiny,small]"])
    assert p.tau == 0.5 and p.ar.lr == 3e-4 and p.ar.sizes == ["tiny", "small"]


def test_digest_changes_with_params():
    a = params_from_dict({})
    b = params_from_dict({"tau": 0.5})
    assert a.digest() != b.digest() and a.digest("data") == b.digest("data")


def test_cli_rejects_bad_params_before_compute(tmp_path):
    bad = yaml.safe_load((ROOT / "params.yaml").read_text())
    bad["taau"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    for args in (["shard", "--params", str(ROOT / "params.yaml"), "--set", "tau=-1"],
                 ["shard", "--params", str(tmp_path / "params.yaml")]):
        r = subprocess.run([sys.executable, "-m", "gear.cli", *args], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and ("tau" in lines[0])
    assert not (tmp_path / "data").exists()  # nothing was written


def test_cli_help_lists_every_stage():
    r = subprocess.run([sys.executable, "-m", "gear.cli", "--help"], capture_output=True, text=True, timeout=60)
    for stage in ("shard", "teacher", "tokenizer-init", "tune", "freeze", "tokenize", "train-ar",
                  "sample", "evaluate", "report"):
        assert stage in r.stdout


def test_on_off_values_survive_yaml():
    assert load_params(ROOT / "params.yaml", ["teachers.zscore=on"]).teachers.zscore == "on"
    assert load_params(ROOT / "params.yaml", ["teachers.zscore=off"]).teachers.zscore == "off"
