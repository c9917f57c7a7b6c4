"""The prompt-following judge (gear t2i-judge): training outputs and metrics, determinism, the
scoring API against the recorded val accuracy, no judge without attributes, stale / missing judges."""
from __future__ import annotations

import contextlib
import glob
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gear.io import ArtifactError
from gear.models.judge import predict_indices, prompt_accuracy
from gear.stages.t2i_judge import METRICS_DIR
from gear.t2i import paths
from gear.t2i.data import load_judge, shards_digest
from tiny import gear_cli

STEPS = 30  # the trained fixture: enough for the heads to beat chance on the tiny pairs


def _in(folder: Path, *args: str) -> int:
    with contextlib.chdir(folder):
        return gear_cli(*args)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    assert _in(root, ["t2i-shard"]) == 0
    return root / paths.SHARD_DIR


@pytest.fixture(scope="module")
def trained(pairs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(pairs, root / paths.SHARD_DIR)
    assert _in(root, ["t2i-judge"], f"t2i.judge.steps={STEPS}") == 0
    return root


@pytest.fixture
def room(pairs, tmp_path, monkeypatch) -> Path:
    """A scratch folder holding the tiny pairs, as cwd."""
    shutil.copytree(pairs, tmp_path / paths.SHARD_DIR)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def val_pairs() -> tuple[np.ndarray, list[dict]]:
    """The val images (uint8) and attributes, read straight from the tars (not through the loader)."""
    images, attrs = [], []
    for f in sorted(glob.glob(str(paths.SHARD_DIR / "val-*.tar"))):
        members: dict[str, dict] = {}
        with tarfile.open(f) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key in sorted(members):
            images.append(np.asarray(Image.open(io.BytesIO(members[key]["png"])).convert("RGB")))
            attrs.append(json.loads(members[key]["json"]))
    return np.stack(images), attrs


def config() -> dict:
    return json.loads((paths.JUDGE_DIR / "config.json").read_text())


def tsv(name: str) -> list[float]:
    lines = (METRICS_DIR / "plots" / "metrics" / f"{name}.tsv").read_text().split("\n")[1:]
    return [float(line.split("\t")[1]) for line in lines if line]


# ---- the stage ----------------------------------------------------------------------------------

def test_stage_writes_judge_config_and_metrics(trained, monkeypatch):
    monkeypatch.chdir(trained)
    assert sorted(p.name for p in paths.JUDGE_DIR.iterdir()) == ["config.json", "judge.safetensors", "provenance.json"]
    cfg = config()
    manifest = json.loads(paths.manifest().read_text())
    assert cfg["available"] is True and cfg["steps"] == STEPS
    assert cfg["attributes"] == manifest["attributes"]
    assert cfg["pairs_sha256"] == shards_digest(manifest)
    assert cfg["arch"]["image_size"] == manifest["resolution"]
    assert set(cfg["val_accuracy"]) == {"shape", "colour", "position", "all"}
    assert cfg["val_count"] == manifest["splits"]["val"]["count"]
    assert all(0 <= v <= 1 for v in cfg["val_accuracy"].values())
    loss = tsv("train_loss")  # log_every = 1: one row per step
    assert len(loss) == STEPS and loss[-1] < 0.8 * loss[0], loss
    assert tsv("val_acc_all") == [cfg["val_accuracy"]["all"]]


def test_stage_is_deterministic(room):
    assert gear_cli(["t2i-judge"]) == 0
    first = (paths.JUDGE_DIR / "judge.safetensors").read_bytes()
    first_cfg = config()
    assert gear_cli(["t2i-judge"]) == 0
    assert (paths.JUDGE_DIR / "judge.safetensors").read_bytes() == first
    assert config() == first_cfg


def test_a_crashed_run_resumes_to_the_same_judge(trained, room, monkeypatch):
    """The judge trains in the one training loop: a run that dies after a periodic save resumes
    from it and ends with the uninterrupted run's weights and curve."""
    from gear.train import loop as train_loop

    real_save = train_loop.Checkpointer.save

    def save_then_die(self, state):
        real_save(self, state)
        raise RuntimeError("node lost")

    with monkeypatch.context() as m:
        m.setattr(train_loop.Checkpointer, "save", save_then_die)
        with pytest.raises(RuntimeError, match="node lost"):
            gear_cli(["t2i-judge"], f"t2i.judge.steps={STEPS}", "compute.save_every=7")
    assert not paths.JUDGE_DIR.exists()
    assert gear_cli(["t2i-judge"], f"t2i.judge.steps={STEPS}", "compute.save_every=7") == 0
    got, loss = (paths.JUDGE_DIR / "judge.safetensors").read_bytes(), tsv("train_loss")
    monkeypatch.chdir(trained)
    assert got == (paths.JUDGE_DIR / "judge.safetensors").read_bytes() and loss == tsv("train_loss")


# ---- the scoring API ------------------------------------------------------------------------------

def test_prompt_accuracy_reproduces_val_accuracy(trained, monkeypatch):
    monkeypatch.chdir(trained)
    judge = load_judge("cpu")
    assert judge is not None and not judge.training
    assert not any(p.requires_grad for p in judge.parameters())
    images, attrs = val_pairs()
    got = prompt_accuracy(judge, images, attrs)
    assert got == {**config()["val_accuracy"], "n": len(attrs)}
    # the predicted value names give the same shares prompt_accuracy counts
    idx = predict_indices(judge, images)
    for i, a in enumerate(("shape", "colour", "position")):
        names = np.asarray(judge.vocab[a], dtype=str)[idx[:, i]]
        assert names.shape == (len(attrs),)
        assert np.mean(names == np.array([x[a] for x in attrs])) == got[a]
    # the prompts of other images: far fewer matches (the trained heads see what is drawn)
    shuffled = [attrs[i] for i in np.random.default_rng(0).permutation(len(attrs))]
    wrong = prompt_accuracy(judge, images, shuffled)
    assert wrong["all"] < got["all"] and wrong["colour"] + wrong["position"] < got["colour"] + got["position"]


def test_prompt_accuracy_rejects_bad_input(trained, monkeypatch):
    monkeypatch.chdir(trained)
    judge = load_judge()
    images, attrs = val_pairs()
    with pytest.raises(ValueError, match="uint8"):
        prompt_accuracy(judge, images.astype(np.float32), attrs)
    with pytest.raises(ValueError, match="must be uint8"):
        predict_indices(judge, images[:, :8])
    with pytest.raises(ValueError, match="not one of"):
        prompt_accuracy(judge, images[:1], [{**attrs[0], "shape": "hexagon"}])
    with pytest.raises(ValueError, match="2 images but 1"):
        prompt_accuracy(judge, images[:2], attrs[:1])


# ---- no judge, stale judge ------------------------------------------------------------------------

def test_pairs_without_attributes_have_no_judge(room):
    manifest = json.loads(paths.manifest().read_text())
    paths.manifest().write_text(json.dumps({**manifest, "source": "folder", "attributes": None}))
    assert gear_cli(["t2i-judge"]) == 0
    assert sorted(p.name for p in paths.JUDGE_DIR.iterdir()) == ["config.json", "provenance.json"]
    cfg = config()
    assert cfg["available"] is False and "attributes" in cfg["reason"]
    assert load_judge() is None
    assert METRICS_DIR.is_dir()  # declared output, present either way


def test_missing_stale_or_corrupt_judge_is_one_line_error(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert gear_cli(["t2i-judge"]) == 2  # no pairs: refused before any compute
    assert "input t2i/data/shards not found; make it: `gear t2i-shard" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="not found"):
        load_judge()
    shutil.copytree(trained / "t2i", tmp_path / "t2i")
    assert load_judge() is not None
    # other pairs than the judge was trained on
    manifest = json.loads(paths.manifest().read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    paths.manifest().write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="pairs_sha256 differs") as e:
        load_judge()
    assert "\n" not in str(e.value)
    shutil.copy(trained / paths.manifest(), paths.manifest())
    weights = paths.JUDGE_DIR / "judge.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="corrupt") as e:
        load_judge()
    assert "\n" not in str(e.value)
