"""T2I text encoders and `gear t2i-encode`: the demo encoder, left padding, fail-fast offline loading,
tiny local transformers / open_clip encoders, byte-identical caption shards and stale detection."""
from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from gear.config import load_params
from gear.data.shard import DataError
from gear.io import ArtifactError
from gear.t2i import paths
from gear.t2i.text_encoders import HUB_TEXT_ENCODERS, fingerprint, load_text_encoder, pad_left, unavailable
from tiny import PARAMS, TINY


def tiny_params(*overrides: str):
    return load_params(PARAMS, [*TINY, *overrides])


# ---- the demo encoder and padding --------------------------------------------------------------

def test_demo_encoder_deterministic_ordered_and_truncated():
    p = tiny_params("t2i.text.max_len=8")  # demo_dim 16
    enc = load_text_encoder(p)
    assert (enc.name, enc.dim, enc.max_len) == ("demo", 16, 8)
    assert enc.fingerprint == fingerprint(p) == {"name": "demo", "source": "demo", "dim": 16}
    caps = ["A red circle in the top left", "a red circle in the top right", "left top the in circle red a",
            "one two three four five six seven eight", "one two three four five six seven eight nine", "", "!!"]
    out = enc.encode(caps)
    again = load_text_encoder(p).encode(caps)
    assert all(np.array_equal(a, b) and ta == tb for (a, ta), (b, tb) in zip(out, again))
    (a, _), (b, _), (c, _) = out[:3]
    assert a.dtype == np.float32 and a.shape == (7, 16)
    assert np.array_equal(a[:6], b[:6]) and not np.allclose(a[6], b[6])  # one word differs: one row differs
    assert not np.allclose(a, c)  # same words, other order
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert out[3][0].shape == (8, 16) and out[3][1] is False
    assert out[4][0].shape == (8, 16) and out[4][1] is True and np.array_equal(out[4][0], out[3][0])
    assert out[5][0].shape == (1, 16) and out[6][0].shape == (1, 16) and not out[5][1]
    assert load_text_encoder(tiny_params("t2i.text.demo_dim=24")).encode(caps[:1])[0][0].shape == (7, 24)


def test_pad_left_puts_valid_rows_at_the_end():
    embs = [np.ones((3, 4), np.float32), 2 * np.ones((1, 4), np.float16), np.arange(20, dtype=np.float32).reshape(5, 4)]
    x, mask = pad_left(embs, 5)
    assert x.shape == (3, 5, 4) and x.dtype == np.float32 and mask.dtype == bool
    assert mask.tolist() == [[False, False, True, True, True], [False] * 4 + [True], [True] * 5]
    assert (x[0, :2] == 0).all() and (x[0, 2:] == 1).all() and (x[1, 4] == 2).all() and (x[1, :4] == 0).all()
    assert np.array_equal(x[2], embs[2])
    with pytest.raises(ValueError, match="need"):
        pad_left([np.ones((6, 4), np.float32)], 5)


# ---- hub encoders: fail fast offline ----------------------------------------------------------

@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read once, at import
    return tmp_path / "hf" / "hub"


@pytest.mark.parametrize("name", list(HUB_TEXT_ENCODERS))
def test_missing_weights_offline_fail_fast(name, empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = tiny_params(f"t2i.text.encoder={name}")
    before = set(sys.modules)
    start = time.perf_counter()
    with pytest.raises(ArtifactError) as err:
        load_text_encoder(p)
    assert time.perf_counter() - start < 5
    assert not {"transformers", "open_clip"} & (set(sys.modules) - before)  # refused before any library loads
    msg, hub_id = str(err.value), HUB_TEXT_ENCODERS[name].hub_id
    assert hub_id in msg and f"huggingface-cli download {hub_id}" in msg and "t2i.text.weights" in msg
    assert "\n" not in msg and unavailable(p) == msg
    assert fingerprint(p) == {"name": name, "source": hub_id}


def test_unreachable_hub_and_bad_local_weights_fail_fast(empty_hub_cache, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    (tmp_path / "no_tokenizer").mkdir()
    (tmp_path / "no_tokenizer" / "config.json").write_text("{}")
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match="unreachable"):
        load_text_encoder(tiny_params("t2i.text.encoder=qwen3_1.7b", "t2i.text.weights=Qwen/Qwen3-4B"))
    with pytest.raises(ArtifactError, match="no tokenizer_config.json"):
        load_text_encoder(tiny_params("t2i.text.encoder=flan_t5_xl", f"t2i.text.weights={tmp_path / 'no_tokenizer'}"))
    with pytest.raises(ArtifactError, match="not found"):
        load_text_encoder(tiny_params("t2i.text.encoder=clip_vitb16", f"t2i.text.weights={tmp_path / 'w.bin'}"))
    assert time.perf_counter() - start < 5


# ---- tiny local copies of the hub encoders ----------------------------------------------------

def test_transformers_encoder_from_a_local_folder(tmp_path):
    """A tiny random T5 encoder + word-level tokenizer written by save_pretrained: valid tokens only,
    </s> kept when truncating, the same features batched or alone."""
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "<pad> </s> <unk> a red blue circle square in the top left right".split()
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(tmp_path / "t5")
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=16, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2)
    transformers.T5EncoderModel(cfg).save_pretrained(tmp_path / "t5")
    p = tiny_params("t2i.text.encoder=flan_t5_xl", f"t2i.text.weights={tmp_path / 't5'}", "t2i.text.max_len=5")
    enc = load_text_encoder(p)
    assert enc.dim == 16 and enc.fingerprint == {"name": "flan_t5_xl", "source": str(tmp_path / "t5")}
    caps = ["a red circle", "a blue square in the top left", ""]
    out = enc.encode(caps)
    assert [(e.shape, t) for e, t in out] == [((4, 16), False), ((5, 16), True), ((1, 16), False)]
    assert enc._ids(caps[1])[0][-1] == 1  # truncation keeps </s>
    for (e, _), c in zip(out, caps):
        assert np.allclose(e, enc.encode([c])[0][0], atol=1e-5)


def test_open_clip_text_encoder_from_a_local_dir(tmp_path):
    """A tiny random CLIP in an open_clip local-dir: per-token ln_final features whose end-token row,
    projected, is open_clip's own text embedding; a cut caption still ends in the end token."""
    open_clip = pytest.importorskip("open_clip")
    import torch
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16, "quick_gelu": True,
           "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg).eval()
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp_path / "clip" / "open_clip_model.safetensors"))
    enc = load_text_encoder(tiny_params("t2i.text.encoder=clip_vitb16", f"t2i.text.weights={tmp_path / 'clip'}",
                                        "t2i.text.max_len=6"))
    caps = ["a red circle", "a blue square in the top left corner"]
    (short, cut_short), (long, cut_long) = enc.encode(caps)
    assert short.shape == (5, 16) and not cut_short and long.shape == (6, 16) and cut_long  # <sot> 3 words <eot>
    with torch.no_grad():
        ref = model.encode_text(open_clip.get_tokenizer("ViT-B-16")(caps[:1]))[0]
    assert torch.allclose(torch.from_numpy(short[-1]) @ model.text_projection, ref, atol=1e-5)
    assert enc._ids(caps[1])[0][-1] == enc.tokenizer.eot_token_id


# ---- the stage --------------------------------------------------------------------------------

def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def _members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def test_encode_stage_byte_identical_and_stale_detection(tmp_path, monkeypatch):
    from gear.stages import t2i_encode, t2i_shard
    from gear.t2i import data

    monkeypatch.chdir(tmp_path)
    p = tiny_params()
    with pytest.raises(DataError, match="gear t2i-shard"):
        t2i_encode.run(p)
    t2i_shard.run(p)
    with pytest.raises(ArtifactError, match="run `gear t2i-encode` first"):
        data.read_captions_manifest(p)
    t2i_encode.run(p)
    first = _digests(paths.CAPTIONS_DIR)
    t2i_encode.run(p)
    assert _digests(paths.CAPTIONS_DIR) == first  # same inputs -> the same bytes, every file

    man = data.read_captions_manifest(p)
    pairs = json.loads(paths.manifest().read_text())
    assert man["format"] == "gear-t2i-captions" and man["encoder"] == fingerprint(p)
    assert (man["dim"], man["max_len"], man["resolution"]) == (16, 10, pairs["resolution"])
    assert man["attributes"] == pairs["attributes"] and set(man["truncated"]) == {"train", "val", "prompts"}
    assert {s: v["count"] for s, v in man["splits"].items()} == {s: v["count"] for s, v in pairs["splits"].items()}

    # every pair's members copied unchanged, in order, plus its caption's unpadded features
    enc = load_text_encoder(p)
    src, dst = _members(paths.SHARD_DIR / "val-000000.tar"), _members(paths.CAPTIONS_DIR / "val-000000.tar")
    assert [m for m in dst if not m[0].endswith(".emb.npy")] == src
    caption, emb = src[1][1].decode(), np.load(io.BytesIO(dst[3][1]))
    assert dst[3][0] == "000000000.emb.npy" and emb.dtype == np.float16
    assert np.array_equal(emb, enc.encode([caption])[0][0].astype(np.float16))

    with np.load(paths.CAPTIONS_DIR / "prompts.npz") as f:
        x, mask = f["emb"], f["mask"]
    n_prompts = len(paths.prompts_file().read_text().splitlines())
    assert x.shape == (n_prompts, 10, 16) and x.dtype == np.float16 and mask.shape == (n_prompts, 10)
    assert mask[:, -1].all() and (x[~mask] == 0).all()
    assert (paths.CAPTIONS_DIR / "prompts.jsonl").read_bytes() == paths.prompts_file().read_bytes()

    for changed in ("t2i.text.demo_dim=24", "t2i.text.max_len=12"):
        with pytest.raises(ArtifactError, match="stale .*rerun `gear t2i-encode`"):
            data.read_captions_manifest(tiny_params(changed))
    t2i_shard.run(tiny_params("t2i.data.embedded_train=80"))  # other pairs
    with pytest.raises(ArtifactError, match="pairs .* changed.*rerun `gear t2i-encode`"):
        data.read_captions_manifest(p)
