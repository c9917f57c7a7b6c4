"""`gear tokenize --arm A`: token shards of the train split under the frozen tokenizer of arm A.

Output, atomically in data/tokens/A/ (baseline) or data/tokens/seed<N>/A/ (--seed N):
  train-000000.tar, ...   per sample (same order and keys as the source shards): the center-crop
      image bytes copied from the source shard (no re-encode), `tokens.npy` = int16 (int32 when
      K > 32767) array (2, h, w): the token grid of the image and of its horizontal flip (shape
      (1, h, w) when data.hflip is false), and `cls`
  manifest.json   count, grid, codebook size, classes, hflip, the sha256 of the tokenizer weights
      and of every shard (source and written), and the unigram entropy of the train tokens

`gear train-ar` reads these shards and checks the manifest against the frozen tokenizer and the
source shards, so stale tokens are an error, not a silent mismatch. Same inputs -> byte-identical
output (fixed tar headers, fixed order, no timestamps). One process does the work; the encode is
batched under bf16 autocast (the quantizer itself runs in fp32).
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
from tqdm import tqdm

from gear import paths
from gear.artifacts import check_tokenizer_matches, load_tokenizer, read_config
from gear.config import ParamsError
from gear.data.loader import decode_image, decode_label, eval_batches, read_manifest, to_tensor
from gear.data.shard import TarShards
from gear.io import ArtifactError, atomic_dir, read_json, sha256_file, write_json
from gear.metrics.codebook import histogram_stats
from gear.runtime import setup, teardown
from gear.study import resolve_seed

BATCH = 64
MANIFEST = "manifest.json"


def _seed_flag(arm: str, seed: int | None, size: str | None = None) -> str:
    if not paths.tokenizer_seeded(arm):
        return ""
    return f" --seed {seed}" + (f" --size {size}" if paths.sized() and size else "")


def check_arm(arm: str) -> None:
    if arm not in paths.AR_ARMS:
        raise ParamsError(f"--arm {arm!r}: must be one of {', '.join(paths.AR_ARMS)}")


def frozen_tokenizer(params, arm: str, seed: int | None, size: str | None = None) -> tuple[dict, str]:
    """(config, sha256 of the weights) of the frozen tokenizer of `arm`, checked against params."""
    directory = paths.frozen_dir(arm, seed, size)
    if not (directory / "tokenizer.safetensors").is_file():
        raise ArtifactError(f"frozen tokenizer {directory}/tokenizer.safetensors not found; run `gear freeze --arm {arm}{_seed_flag(arm, seed, size)}` first")
    cfg = read_config(directory, "tokenizer")
    check_tokenizer_matches(cfg, params, directory)
    return cfg, sha256_file(directory / "tokenizer.safetensors")


def source_digest(data_manifest: dict) -> str:
    """sha256 over the train shards' sha256s: identifies the exact source images."""
    shas = [s["sha256"] for s in data_manifest["splits"]["train"]["shards"]]
    return hashlib.sha256("".join(shas).encode()).hexdigest()


def read_tokens_manifest(params, arm: str, seed: int | None, size: str | None = None) -> dict:
    """The token-shard manifest of `arm`, checked against the frozen tokenizer, the source shards
    and data.hflip (a clear error when the tokens are missing or stale)."""
    path = paths.tokens_dir(arm, seed, size) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"token shards {path} not found; run `gear tokenize --arm {arm}{_seed_flag(arm, seed, size)}` first")
    man = read_json(path, "token-shard manifest")
    _, sha = frozen_tokenizer(params, arm, seed, size)
    stale = None
    if man["tokenizer_sha256"] != sha:
        stale = f"the frozen tokenizer {paths.frozen_dir(arm, seed, size)} changed"
    elif man["source_digest"] != source_digest(read_manifest(params)):
        stale = f"the source shards in {paths.shard_dir(params)} changed"
    elif man["hflip"] != params.data.hflip:
        stale = f"they were written with data.hflip={man['hflip']}, params give {params.data.hflip}"
    if stale:
        raise ArtifactError(f"token shards {paths.tokens_dir(arm, seed, size)} are stale ({stale}); rerun "
                            f"`gear tokenize --arm {arm}{_seed_flag(arm, seed, size)}`")
    return man


class _SourceDecoder:
    """(image in [-1, 1], label, image bytes, key) of a source sample, unaugmented."""

    def __init__(self, image_format: str):
        self.ext = image_format

    def __call__(self, sample: dict, rng) -> tuple:
        return to_tensor(decode_image(sample)), decode_label(sample), sample[self.ext], sample["__key__"]


def run(params, arm: str, seed: int | None = None, size: str | None = None) -> None:
    check_arm(arm)
    seed = resolve_seed(params, seed) if paths.tokenizer_seeded(arm) else None
    data_man = read_manifest(params)
    cfg, sha = frozen_tokenizer(params, arm, seed, size)
    rt = setup(params)
    if not rt.is_main:  # light stage: rank 0 does all of it
        teardown(rt)
        return
    tok = load_tokenizer(paths.frozen_dir(arm, seed, size), device=rt.device)
    K, grid = tok.codebook_size, tok.grid_size(params.data.resolution)
    dtype = np.int16 if K <= np.iinfo(np.int16).max + 1 else np.int32
    fmt, hflip = data_man["image_format"], params.data.hflip
    hist = torch.zeros(K, dtype=torch.long)

    with atomic_dir(paths.tokens_dir(arm, seed, size)) as out:
        writer = TarShards(out, "train", params.data.samples_per_shard)
        batches = eval_batches(params, "train", BATCH, decode=_SourceDecoder(fmt))
        with tqdm(total=data_man["splits"]["train"]["count"], desc=f"tokenize[{arm}]", unit="img") as bar:
            for x, labels, blobs, _ in batches:
                x = x.to(rt.device)
                if hflip:
                    x = torch.cat([x, x.flip(-1)])
                with torch.no_grad(), rt.autocast():
                    _, q = tok.encode(x)
                idx = q.indices.cpu()
                hist += torch.bincount(idx.flatten(), minlength=K)
                views = idx.view(2, -1, grid, grid).transpose(0, 1) if hflip else idx[:, None]
                for tokens, label, blob in zip(views.numpy().astype(dtype), labels.tolist(), blobs):
                    buf = io.BytesIO()
                    np.save(buf, tokens)
                    writer.add({fmt: blob, "tokens.npy": buf.getvalue(), "cls": str(label).encode()})
                bar.update(len(labels))
        shards = writer.close()
        if writer.count == 0:
            raise ArtifactError(f"tokenize[{arm}]: no readable train samples in {paths.shard_dir(params)}")
        stats = histogram_stats(hist)
        write_json(out / MANIFEST, {
            "format": "gear-tokens", "arm": arm, "seed": seed, "count": writer.count, "grid": grid, "codebook_size": K,
            "dtype": np.dtype(dtype).name, "hflip": hflip, "views": 2 if hflip else 1,
            "image_format": fmt, "resolution": data_man["resolution"], "classes": data_man["classes"],
            "num_classes": len(data_man["classes"]), "tokenizer_dir": str(paths.frozen_dir(arm, seed, size)),
            "tokenizer_sha256": sha, "tokenizer_config": cfg["tokenizer"],
            "source_digest": source_digest(data_man), "shards": shards,
            "unigram_entropy": stats["entropy"], "usage": stats["usage"]})
    print(f"tokenize[{arm}]: {writer.count} samples x {2 if hflip else 1} views of {grid}x{grid} tokens, "
          f"usage {stats['usage']:.3f}, unigram entropy {stats['entropy']:.3f} nats -> {paths.tokens_dir(arm, seed, size)}")
    teardown(rt)
