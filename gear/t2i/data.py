"""Reading the room's shards: decode hooks for gear/data/loader.py and the token-shard manifest.

Every T2I shard set is read by glob pattern (`<folder>/{split}-*.tar`): the loader's index, exact
resume and DDP lockstep are the class-conditional ones. A sample's caption embedding `emb.npy`
is stored unpadded (n, D) float16; decoding left-pads it to the model's text_len (valid
positions at the end) and returns its mask.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from gear.data.loader import decode_image, to_tensor
from gear.data.shard import DataError
from gear.io import ArtifactError, read_json

TOKENS_MANIFEST = "manifest.json"
PAIRS_FORMAT = "gear-t2i-pairs"


def pattern(folder: Path) -> str:
    return str(Path(folder) / "{split}-*.tar")


def shards_digest(manifest: dict) -> str:
    """sha256 over every shard's sha256, split by split: identifies a shard set's exact bytes."""
    shas = [s["sha256"] for split in sorted(manifest["splits"]) for s in manifest["splits"][split]["shards"]]
    return hashlib.sha256("".join(shas).encode()).hexdigest()


def read_pairs_manifest() -> dict:
    """The manifest `gear t2i-shard` writes (t2i/data/shards/manifest.json), checked to be one."""
    from gear.t2i import paths

    path = paths.manifest()
    if not path.is_file():
        raise DataError(f"no image-caption pairs: {path} not found; run `gear t2i-shard` first")
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON; run `gear t2i-shard` again") from None
    if not isinstance(man, dict) or man.get("format") != PAIRS_FORMAT or not isinstance(man.get("splits"), dict):
        raise DataError(f"{path} is not a {PAIRS_FORMAT} manifest; run `gear t2i-shard` again")
    return man


def caption(sample: dict, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding (text_len, D) float32 left-padded, mask (text_len,) bool) of a sample."""
    emb = np.load(io.BytesIO(sample["emb.npy"])).astype(np.float32)
    if emb.ndim != 2 or not 1 <= len(emb) <= text_len:
        raise ValueError(f"sample {sample.get('__key__')}: caption embedding of shape {emb.shape} does not fit "
                         f"{text_len} text positions")
    out = np.zeros((text_len, emb.shape[1]), dtype=np.float32)
    out[text_len - len(emb):] = emb
    mask = np.zeros(text_len, dtype=bool)
    mask[text_len - len(emb):] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


class TokenSample:
    """(image (3, H, W) in [-1, 1], tokens (L,) int64, caption (P, D), mask (P,)) of a token-shard
    sample. No augmentation: a flip would contradict captions that say left and right."""

    def __init__(self, text_len: int):
        self.text_len = text_len

    def __call__(self, sample: dict, rng) -> tuple:
        tokens = np.load(io.BytesIO(sample["tokens.npy"])).reshape(-1).astype(np.int64)
        return (to_tensor(decode_image(sample)), torch.from_numpy(tokens), *caption(sample, self.text_len))


def read_tokens_manifest(folder: Path, tokenizer_sha256: str, captions_digest: str, hint: str) -> dict:
    """The manifest of a token-shard folder, checked against the frozen tokenizer and the caption
    shards it was made from (stale tokens are an error naming the command that remakes them)."""
    path = Path(folder) / TOKENS_MANIFEST
    if not path.is_file():
        raise ArtifactError(f"T2I token shards {path} not found; run `{hint}` first")
    man = read_json(path, "T2I token-shard manifest")
    if man.get("tokenizer_sha256") != tokenizer_sha256:
        raise ArtifactError(f"T2I token shards {folder} are stale (the frozen tokenizer changed); rerun `{hint}`")
    if man.get("captions_digest") != captions_digest:
        raise ArtifactError(f"T2I token shards {folder} are stale (the caption shards changed); rerun `{hint}`")
    return man
