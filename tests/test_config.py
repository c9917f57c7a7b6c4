"""params.yaml validation: every bad value is named in one line before any compute."""
import json
import shutil
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
    p = load_params(ROOT / "params.yaml", ["tokenizer={steps: 5, lr: 0.5}"])  # a section merges, as in a file
    assert (p.tokenizer.steps, p.tokenizer.lr, p.tokenizer.ch) == (5, 0.5, load_params().tokenizer.ch)


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


# ---------------------------------------------------------------------------------------------
# params.yaml is the one source of defaults; presets are overlays


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def walk_fields(cls=None, prefix=""):
    """(dotted key, dataclasses.Field, annotation) of every params key."""
    import dataclasses
    import typing

    from gear.config import Params
    cls = cls or Params
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from walk_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def test_the_schema_holds_no_defaults_and_every_number_has_a_range():
    import dataclasses
    import typing
    keys = list(walk_fields())
    assert len(keys) > 150
    assert [k for k, f, _ in keys if f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING] == []
    numeric = [k for k, _, tp in keys if typing.Optional[tp] in (typing.Optional[int], typing.Optional[float])
               or tp in (list[int], list[float])]
    # an ablation axis is checked row by row, with the range of the key the row sets
    unranged = [k for k, f, tp in keys if k in numeric and "range" not in f.metadata]
    assert unranged == ["ablations.tau", "ablations.align_weight", "ablations.align_layer"]
    assert set(flat(yaml.safe_load((ROOT / "params.yaml").read_text()))) == {k for k, _, _ in keys}


# What each preset resolved to before it became an overlay (the old loader: its full file, the code's
# defaults for keys it lacked), as the keys where that differs from params.yaml.
BEFORE = json.loads((Path(__file__).parent / "presets_before.json").read_text())
# imagenet256.yaml lacked these, so the code's second set of defaults filled them; they now take
# params.yaml's (unused there: its teacher is dinov2_vitb14). cpu-study.yaml had lost its t2i section,
# but the code's t2i defaults equalled params.yaml's, so nothing changes there.
LOST = {"imagenet256": {"teachers.demo_depth": (4, 3), "teachers.demo_steps": (600, 300)}}
# Set on purpose since the snapshot: the release's stage-2 optimizer and GPT dropouts (issue 29),
# ADM's reference batch (issue 32), hub teachers available on the cluster (ablation rows), the
# release's default stage-2 mode (issue 29 part 2).
CHANGED = {"imagenet256": {"stage2": "ar-init", "ar.resid_dropout": 0.1, "ar.ffn_dropout": 0.1, "ar.betas": [0.9, 0.999],
                           "ar.weight_decay": 0.0, "t2i.ar.resid_dropout": 0.1, "t2i.ar.ffn_dropout": 0.1,
                           "t2i.ar.betas": [0.9, 0.999], "t2i.ar.weight_decay": 0.0,
                           "metrics.reference": "data/VIRTUAL_imagenet256_labeled.npz", "ablations.hub_teachers": True}}


@pytest.mark.parametrize("name", ["cpu-study", "imagenet256"])
def test_preset_overlays_resolve_as_their_full_files_did(name):
    defaults = flat(load_params().to_dict())
    expected = {**defaults, **BEFORE[name]}
    for key, (old, new) in LOST.get(name, {}).items():
        assert (expected[key], defaults[key]) == (old, new)
        expected[key] = new
    expected.update(CHANGED.get(name, {}))
    assert flat(load_params(ROOT / "presets" / f"{name}.yaml").to_dict()) == expected


def test_a_key_a_file_leaves_out_takes_params_yaml_value(tmp_path):
    (tmp_path / "mine.yaml").write_text("tau: 0.5\ntokenizer:\n  steps: 7\n")
    p, d = load_params(tmp_path / "mine.yaml"), load_params()
    assert (p.tau, p.tokenizer.steps) == (0.5, 7)
    assert p.tokenizer.lr == d.tokenizer.lr and p.compute.precision == d.compute.precision == "fp32"
    assert params_from_dict({}).to_dict() == d.to_dict() == load_params(ROOT / "params.yaml").to_dict()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A scratch repository root (params.yaml + presets/) that gear.config takes as the defaults."""
    import gear.config
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    monkeypatch.setattr(gear.config, "DEFAULTS", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_params_yaml_must_list_every_key(repo, capsys):
    from gear import cli
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("  ema_decay: 0.99\n\nar:", "\nar:"))  # tokenizer's
    with pytest.raises(ParamsError, match=r"params.yaml: key tokenizer.ema_decay is missing"):
        load_params()
    assert cli.main(["params", "--params", "presets/cpu-study.yaml"]) == 2
    assert "key tokenizer.ema_decay is missing" in capsys.readouterr().err.strip()


def test_params_out_writes_the_merged_preset_for_dvc(repo, capsys):
    from gear import cli
    merged = load_params("presets/cpu-study.yaml", ["tau=0.2"])
    assert cli.main(["params", "--params", "presets/cpu-study.yaml", "--set", "tau=0.2", "--out", "params.yaml"]) == 0
    text = (repo / "params.yaml").read_text()
    assert "presets/cpu-study.yaml --set tau=0.2 --out params.yaml" in text.splitlines()[0]
    assert "# merged-from: presets/cpu-study.yaml\n" in text
    assert sorted(p.name for p in repo.iterdir()) == ["params.yaml", "presets"]  # no temp file left
    assert load_params().to_dict() == merged.to_dict() and load_params().digest() == merged.digest()
    # the same overlay again resolves the same; another one would inherit cpu-study's values: refused
    assert load_params("presets/cpu-study.yaml").align_weight == 2.0
    with pytest.raises(ParamsError, match=r"written by `gear params --out` from presets/cpu-study.yaml"):
        load_params("presets/imagenet256.yaml")
    full = repo / "full.yaml"
    full.write_text(yaml.safe_dump(load_params().to_dict()))
    assert load_params(full).align_weight == 2.0  # a complete file inherits nothing: allowed
    # a failing command leaves the file as it was
    before = (repo / "params.yaml").read_bytes()
    assert cli.main(["params", "--params", "presets/cpu-study.yaml", "--set", "tau=-1", "--out", "params.yaml"]) == 2
    assert (repo / "params.yaml").read_bytes() == before
