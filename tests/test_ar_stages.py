"""`gear tokenize`, `gear train-ar`, `gear sample` on a tiny workspace: 16 px embedded shards, a
random tiny frozen tokenizer (4x4 tokens, K = 32), a random tiny demo teacher, a 2-layer AR."""
from __future__ import annotations

import io
import math
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gear import artifacts, cli, paths
from gear.artifacts import load_tokenizer, write_tokenizer
from gear.config import ParamsError, params_from_dict
from gear.data.loader import decode_image, read_manifest, to_tensor
from gear.io import ArtifactError
from gear.models.tokenizer import Tokenizer, TokenizerConfig
from gear.stages import sample, tokenize, train_ar
from gear.train import loop as train_loop
from gear.train.recon_check import to_uint8
from tiny import ar_world, build_ar_world, history, interrupt, tree_bytes

K, GRID, ARM, SIZE, SEED = 32, 4, "baseline", "custom", 0  # AR_WORLD's (tests/tiny.py); SEED: the one study seed


def make_params(*overrides: str):
    return params_from_dict(ar_world(*overrides))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Shards, a frozen tokenizer, a demo teacher and the token shards, built once."""
    root = tmp_path_factory.mktemp("ar_stages")
    build_ar_world(root, ar_world(), ARM)
    return root


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


# ---------------------------------------------------------------------------------------------
# tokenize


def test_tokenize_shards_are_consistent_and_byte_identical(ws):
    params = make_params()
    first = tree_bytes(paths.tokens_dir(ARM))
    first.pop("provenance.json")  # the runner's record (gear/cli.py); this calls the stage itself
    tokenize.run(params, ARM)
    assert tree_bytes(paths.tokens_dir(ARM)) == first
    man = artifacts.read_tokens_manifest(params, ARM, SEED)
    data_man = read_manifest(params)
    assert man["count"] == data_man["splits"]["train"]["count"] == 20 * len(data_man["classes"])
    assert (man["grid"], man["codebook_size"], man["views"], man["dtype"]) == (GRID, K, 2, "int16")
    assert 0 < man["unigram_entropy"] <= math.log(K)

    source = tar_samples(paths.shard_dir(params) / "train-000000.tar")
    tokens = tar_samples(paths.tokens_dir(ARM) / "train-000000.tar")
    assert list(tokens) == list(source)[:len(tokens)]
    for key, s in tokens.items():
        assert s["png"] == source[key]["png"] and s["cls"] == source[key]["cls"]
    # the first 64 samples are one encode batch [images; mirrored images]: redo it
    keys = list(tokens)[:64]
    x = torch.stack([to_tensor(decode_image(tokens[k])) for k in keys])
    tok = load_tokenizer(paths.frozen_dir(ARM))
    with torch.no_grad():
        _, q = tok.encode(torch.cat([x, x.flip(-1)]))
    want = q.indices.view(2, 64, GRID, GRID).transpose(0, 1)
    got = torch.stack([torch.from_numpy(np.load(io.BytesIO(tokens[k]["tokens.npy"]))).long() for k in keys])
    assert got.shape == (64, 2, GRID, GRID) and torch.equal(got, want)


def test_stale_tokens_are_an_error(ws):
    params = make_params()
    tok = Tokenizer(TokenizerConfig.from_params(params))  # new weights in the frozen folder
    write_tokenizer(paths.frozen_dir(ARM), tok, {"arm": ARM})
    with pytest.raises(ArtifactError, match="stale"):
        artifacts.read_tokens_manifest(params, ARM, SEED)
    tokenize.run(params, ARM)
    artifacts.read_tokens_manifest(params, ARM, SEED)
    with pytest.raises(ArtifactError, match="hflip"):
        artifacts.read_tokens_manifest(make_params("data.hflip=false"), ARM, SEED)


@pytest.mark.parametrize("stage, missing, message", [
    (["tokenize", "--arm", ARM], "models/frozen/baseline", "gear freeze --arm baseline"),
    (["train-ar", "--arm", ARM, "--size", SIZE], "data/tokens/baseline", "gear tokenize --arm baseline"),
    (["sample", "--arm", ARM, "--size", SIZE], None, "input models/ar/seed0/baseline/custom not found; make it: "
                                                     "`gear train-ar --arm baseline --size custom --seed 0`"),
    # a tuned arm is per seed: its hints name the seed
    (["tokenize", "--arm", "gear"], None, "input models/frozen/seed0/gear not found; "
                                          "make it: `gear freeze --arm gear --seed 0`"),
    (["train-ar", "--arm", "gear", "--size", SIZE], None, "input data/tokens/seed0/gear not found; "
                                                          "make it: `gear tokenize --arm gear --seed 0`"),
    (["tokenize", "--arm", "ste"], None, "--arm 'ste': must be one of baseline, gear"),
    (["train-ar", "--arm", ARM, "--size", "B"], None, "--size 'B': not in ar.sizes"),
])
def test_missing_inputs_are_one_line_errors(ws, capsys, stage, missing, message):
    if missing:
        shutil.rmtree(missing)
    assert cli.main([*stage, "--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


# ---------------------------------------------------------------------------------------------
# train-ar


def test_train_ar_learns_and_writes_its_outputs(ws):
    params = make_params()
    train_ar.run(params, ARM, SIZE)
    rows = history(paths.train_ar_metrics_dir(ARM, SIZE, SEED))
    ntp = [float(v) for _, v in rows["ntp"]]
    assert abs(ntp[0] - math.log(K)) < 1e-3           # zero-init head: uniform logits at step 0
    assert ntp[-1] < ntp[0] - 0.3
    val = [float(v) for _, v in rows["val_ntp"]]
    assert val[-1] < val[0] - 0.2
    assert {"align", "lr", "grad_norm", "unigram_entropy", "val_ntp_raw"} <= set(rows)
    assert [s for s, _ in rows["lr"]][:2] == ["0", "5"] and float(rows["lr"][1][1]) == pytest.approx(3e-3)

    model, cfg = artifacts.load_ar(paths.ar_dir(ARM, SIZE, SEED))
    raw, _ = artifacts.load_ar(paths.ar_dir(ARM, SIZE, SEED), name="ar_raw")
    assert not model.training and cfg["gpt"]["vocab_size"] == K and cfg["gpt"]["grid"] == GRID
    assert cfg["align_layer"] == 1 and cfg["teacher"] == "demo" and cfg["teacher_dim"] == 16
    assert cfg["final"]["val_ntp"] == pytest.approx(val[-1])
    assert cfg["final"]["val_ntp"] < math.log(K)
    assert not torch.equal(model.head.weight, raw.head.weight)  # EMA differs from the raw weights
    assert (paths.ar_dir(ARM, SIZE, SEED) / "projector.safetensors").is_file()
    assert not paths.state_dir(params, "train_ar", paths.seed_part(SEED), ARM, SIZE).joinpath("state.pt").exists()


def test_decoder_flips_image_and_tokens_together(ws):
    params = make_params()
    decode = train_ar.TokenDecoder(hflip=True)
    s = tar_samples(paths.tokens_dir(ARM) / "train-000000.tar")
    key = next(iter(s))
    sample_dict = {"__key__": key, **s[key]}
    views = np.load(io.BytesIO(s[key]["tokens.npy"]))
    original = to_tensor(decode_image(s[key]))
    seen = set()
    for i in range(16):
        img, toks, label = decode(sample_dict, random.Random(i))
        flip = not torch.equal(img, original)
        assert torch.equal(img, original.flip(-1) if flip else original)
        assert torch.equal(toks, torch.from_numpy(views[int(flip)].reshape(-1).astype(np.int64)))
        seen.add(flip)
    assert seen == {False, True} and params.data.hflip


@pytest.mark.parametrize("kill", ["sigterm", "crash"])
def test_train_ar_resumes_exactly(base, tmp_path, monkeypatch, kill):
    over = ("ar.steps=20", "compute.save_every=7")
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    monkeypatch.chdir(ref)
    train_ar.run(make_params(*over), ARM, SIZE)
    want_weights = tree_bytes(paths.ar_dir(ARM, SIZE, SEED))
    want_hist = history(paths.train_ar_metrics_dir(ARM, SIZE, SEED))

    run = tmp_path / "run"
    shutil.copytree(base, run)
    monkeypatch.chdir(run)
    # sigterm: preemption during step 9, state saved after it; crash: right after the save at step 7
    interrupt(train_loop, lambda: train_ar.run(make_params(*over), ARM, SIZE), kill, 9, monkeypatch)
    saved_step = 10 if kill == "sigterm" else 7
    state = torch.load(paths.state_dir(make_params(), "train_ar", paths.seed_part(SEED), ARM, SIZE) / "state.pt",
                       weights_only=True)
    assert state["step"] == saved_step and not paths.ar_dir(ARM, SIZE, SEED).exists()
    train_ar.run(make_params(*over), ARM, SIZE)
    assert tree_bytes(paths.ar_dir(ARM, SIZE, SEED)) == want_weights
    assert history(paths.train_ar_metrics_dir(ARM, SIZE, SEED)) == want_hist


def test_val_every_thins_validation_and_changes_no_weight(base, tmp_path, monkeypatch):
    """compute.val_every (FREE): the log rows stay at log_every, the validation rides only on the rows
    at its multiples (and the final one), and the weights equal those of validating on every row."""
    over = ("ar.steps=10", "compute.log_every=2")
    runs = {}
    for val_every in (0, 4):
        shutil.copytree(base, tmp_path / str(val_every))
        monkeypatch.chdir(tmp_path / str(val_every))
        train_ar.run(make_params(*over, f"compute.val_every={val_every}"), ARM, SIZE)
        runs[val_every] = tree_bytes(paths.ar_dir(ARM, SIZE, SEED)), history(paths.train_ar_metrics_dir(ARM, SIZE, SEED))
    (every_w, every), (thin_w, thin) = runs[0], runs[4]
    assert thin_w == every_w and thin["ntp"] == every["ntp"]  # rows at 0, 2, 4, 6, 8 and the last step, 9
    assert [s for s, _ in every["val_ntp"]] == ["0", "2", "4", "6", "8", "9", "10"]
    assert thin["val_ntp"] == [row for row in every["val_ntp"] if row[0] in ("0", "4", "8", "10")]
    with pytest.raises(ParamsError, match=r"compute.val_every = 3: must be a multiple of compute.log_every \(2\)"):
        make_params(*over, "compute.val_every=3")


# ---------------------------------------------------------------------------------------------
# sample


def test_sample_writes_deterministic_npz_and_grids(ws):
    params = make_params("ar.steps=10")
    train_ar.run(params, ARM, SIZE)
    sample.run(params, ARM, SIZE)
    out = paths.samples_dir(ARM, SIZE, SEED)
    first = tree_bytes(out)
    C = len(read_manifest(params)["classes"])
    with np.load(out / "samples.npz") as z:
        images, labels, indices = z["arr_0"], z["arr_1"], z["indices"]  # ADM's sample-batch keys
    N = 2 * C
    assert images.shape == (N, 16, 16, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, np.repeat(np.arange(C), 2))
    assert indices.shape == (N, GRID * GRID) and 0 <= indices.min() and indices.max() < K
    assert (out / "grid.png").is_file() and all((out / f"class_{c}.png").is_file() for c in range(C))
    # images are the frozen tokenizer's decode of the sampled tokens (first batch of 8)
    tok = load_tokenizer(paths.frozen_dir(ARM))
    with torch.no_grad():
        again = to_uint8(tok.decode_indices(torch.from_numpy(indices[:8]), GRID))
    assert np.array_equal(again, images[:8])

    sample.run(params, ARM, SIZE)
    assert tree_bytes(out) == first                          # same seed: same bytes
    # another study seed (it replaces compute.seed): other samples from the same AR
    shutil.copytree(paths.ar_dir(ARM, SIZE, SEED), paths.ar_dir(ARM, SIZE, 1))
    sample.run(make_params("ar.steps=10", "study.seeds=[0,1]"), ARM, SIZE, seed=1)
    with np.load(paths.samples_dir(ARM, SIZE, 1) / "samples.npz") as z:
        assert not np.array_equal(z["indices"], indices)


def test_sample_refuses_an_ar_of_another_tokenizer(ws):
    params = make_params("ar.steps=2")
    train_ar.run(params, ARM, SIZE)
    write_tokenizer(paths.frozen_dir(ARM), Tokenizer(TokenizerConfig.from_params(params)), {"arm": ARM})
    with pytest.raises(ArtifactError, match="another tokenizer"):
        sample.run(params, ARM, SIZE)
