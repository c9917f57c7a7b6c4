"""`gear t2i-tokenize --arm A [--seed N]`: token grids of every image-caption pair under the frozen
class-conditional tokenizer of arm A: the seed's transfer (tuned on one data set, frozen, used
on another).

Output, atomically in t2i/data/tokens/A/ (baseline) or t2i/data/tokens/seed<N>/A/:
  {train,val}-*.tar   the caption shards' samples (same order, members copied byte for byte)
                      plus `tokens.npy`: int16 (int32 when K > 32767) (h, w) token grid of the
                      image as stored (no flip: captions say left and right)
  manifest.json       counts, grid, codebook size, text width and positions, the sha256 of the
                      tokenizer weights and the caption shards' digest (stale tokens are an
                      error downstream), unigram entropy of the train tokens
Same inputs -> byte-identical output. One process.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from gear import paths as main_paths
from gear.artifacts import frozen_tokenizer, load_tokenizer
from gear.data.loader import decode_image, eval_batches, to_tensor
from gear.data.shard import TarShards
from gear.io import ArtifactError, atomic_dir, write_json
from gear.metrics.codebook import histogram_stats
from gear.npz import npy_bytes
from gear.runtime import setup, teardown
from gear.t2i import paths
from gear.t2i.data import TOKENS_MANIFEST, arm_seed, check_arm, pattern, read_captions_manifest, shards_digest

BATCH = 64
COPIED = ("txt", "json", "emb.npy")


class _Source:
    """(image in [-1, 1], the members to copy) of a caption-shard sample."""

    def __init__(self, image_format: str):
        self.ext = image_format

    def __call__(self, sample: dict, rng) -> tuple:
        members = {self.ext: sample[self.ext], **{k: sample[k] for k in COPIED if k in sample}}
        return to_tensor(decode_image(sample)), members


def run(params, arm: str, seed: int | None = None) -> None:
    check_arm(arm)
    seed = arm_seed(params, arm, seed)
    cap = read_captions_manifest(params)  # missing or stale captions: one line, before any compute
    if cap["resolution"] != params.data.resolution:
        raise ArtifactError(f"caption shards in {paths.CAPTIONS_DIR} are {cap['resolution']} px but the tokenizer "
                            f"reads data.resolution = {params.data.resolution}; rerun `gear t2i-shard`")
    tok_cfg, sha = frozen_tokenizer(params, arm, seed)
    rt = setup(params)
    if not rt.is_main:
        teardown(rt)
        return
    tok = load_tokenizer(main_paths.frozen_dir(arm, seed), device=rt.device)
    K, grid = tok.codebook_size, tok.grid_size(params.data.resolution)
    dtype = np.int16 if K <= np.iinfo(np.int16).max + 1 else np.int32
    hist = torch.zeros(K, dtype=torch.long)
    counts, shards = {}, {}
    with atomic_dir(paths.tokens_dir(arm, seed)) as out:
        for split in ("train", "val"):
            writer = TarShards(out, split, params.t2i.data.samples_per_shard)
            total = cap["splits"][split]["count"]
            batches = eval_batches(params, split, BATCH, pattern=pattern(paths.CAPTIONS_DIR),
                                   decode=_Source(cap["image_format"]))
            for x, members in tqdm(batches, total=-(-total // BATCH), desc=f"t2i-tokenize[{arm}/{split}]"):
                with torch.no_grad(), rt.autocast():
                    _, q = tok.encode(x.to(rt.device))
                idx = q.indices.cpu().view(-1, grid, grid)
                if split == "train":
                    hist += torch.bincount(idx.flatten(), minlength=K)
                for i, grid_tokens in enumerate(idx.numpy().astype(dtype)):
                    writer.add({**{k: v[i] for k, v in members.items()}, "tokens.npy": npy_bytes(grid_tokens)})
            shards[split] = writer.close()
            counts[split] = writer.count
            if writer.count == 0:
                raise ArtifactError(f"t2i-tokenize[{arm}]: no readable {split} samples in {paths.CAPTIONS_DIR}")
        stats = histogram_stats(hist)
        write_json(out / TOKENS_MANIFEST, {
            "format": "gear-t2i-tokens", "arm": arm, "seed": seed, "grid": grid, "codebook_size": K,
            "dtype": np.dtype(dtype).name, "resolution": params.data.resolution, "image_format": cap["image_format"],
            "text_dim": cap["dim"], "text_len": cap["max_len"], "encoder": cap["encoder"],
            "splits": {s: {"count": counts[s], "shards": shards[s]} for s in counts},
            "tokenizer_dir": str(main_paths.frozen_dir(arm, seed)), "tokenizer_sha256": sha,
            "tokenizer_config": tok_cfg["tokenizer"], "captions_digest": shards_digest(cap),
            "unigram_entropy": stats["entropy"], "usage": stats["usage"]})
    print(f"t2i-tokenize[{arm}]: {counts['train']} train / {counts['val']} val pairs of {grid}x{grid} tokens, "
          f"usage {stats['usage']:.3f}, unigram entropy {stats['entropy']:.3f} nats -> {paths.tokens_dir(arm, seed)}")
    teardown(rt)
