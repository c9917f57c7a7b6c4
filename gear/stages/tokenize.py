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

import numpy as np
import torch
from tqdm import tqdm

from gear import paths
from gear.artifacts import TOKENS_MANIFEST, check_arm, frozen_tokenizer, load_tokenizer, source_digest
from gear.data.loader import decode_image, decode_label, eval_batches, read_manifest, to_tensor
from gear.data.shard import TarShards
from gear.io import ArtifactError, atomic_dir, write_json
from gear.metrics.codebook import histogram_stats
from gear.npz import npy_bytes
from gear.runtime import setup, teardown
from gear.study import resolve_seed

BATCH = 64


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
                    writer.add({fmt: blob, "tokens.npy": npy_bytes(tokens), "cls": str(label).encode()})
                bar.update(len(labels))
        shards = writer.close()
        if writer.count == 0:
            raise ArtifactError(f"tokenize[{arm}]: no readable train samples in {paths.shard_dir(params)}")
        stats = histogram_stats(hist)
        write_json(out / TOKENS_MANIFEST, {
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
