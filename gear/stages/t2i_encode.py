"""`gear t2i-encode`: the caption embedding of every image-caption pair and held-out prompt, once.

Input: the pairs of `gear t2i-shard` in gear.t2i.paths.SHARD_DIR (manifest.json, {train,val}-*.tar,
prompts.jsonl). Output, atomically in gear.t2i.paths.CAPTIONS_DIR (t2i/data/captions):
  train-000000.tar, ...  val-...   the pairs' samples in the same order, t2i.data.samples_per_shard
      per tar; per sample the image bytes (png / jpg, copied unchanged), `txt` and `json` (if
      present) copied, and `emb.npy` = np.save of the caption's features, float16 (n, D) with
      1 <= n <= t2i.text.max_len: the valid positions only (readers left-pad, gear/t2i/data.py)
  prompts.npz     `emb` float16 (N, max_len, D) and `mask` bool (N, max_len) of the held-out
      prompts, left-padded by text_encoders.pad_left (valid positions at the end); fixed zip
      timestamps (gear.npz.save_npz)
  prompts.jsonl   copied from the pairs, row i = prompts.npz row i
  manifest.json   {"format": "gear-t2i-captions", "encoder": fingerprint, "dim", "max_len",
      "splits": {split: {"count", "shards": [{name, count, sha256, bytes}]}},
      "truncated": {"train", "val", "prompts"} (captions cut to max_len), "prompts": N,
      "pairs_sha256": gear.t2i.data.shards_digest of the pairs manifest, "prompts_sha256",
      "resolution", "image_format", "attributes" (both copied from the pairs manifest)}

Downstream stages call read_captions_manifest, which refuses embeddings made from other pairs,
prompts, encoder weights or max_len. One process encodes, in batches of t2i.text.batch_size; same
inputs -> byte-identical outputs (fixed tar headers, fixed order, no timestamps).
"""
from __future__ import annotations

import json
import sys

import numpy as np
from tqdm import tqdm

from gear.data.loader import eval_batches, split_size
from gear.data.shard import DataError, TarShards
from gear.io import ArtifactError, atomic_dir, sha256_file, write_json
from gear.runtime import setup, teardown
from gear.npz import npy_bytes, save_npz
from gear.t2i import paths
from gear.t2i.data import CAPTIONS_FORMAT, CAPTIONS_MANIFEST, pattern, read_pairs_manifest, shards_digest
from gear.t2i.text_encoders import load_text_encoder, pad_left



# ----------------------------------------------------------------------------------------------
# the inputs, checked before the encoder is loaded


def _prompts() -> list[str]:
    path = paths.prompts_file()
    if not path.is_file():
        raise DataError(f"held-out prompts {path} not found; run `gear t2i-shard` first")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
            caption = rec["caption"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} line {n}: expected {{\"caption\": ..., \"attributes\": ...}}; "
                            f"run `gear t2i-shard` again") from None
        if not isinstance(caption, str):
            raise DataError(f"{path} line {n}: caption is not a string; run `gear t2i-shard` again")
        out.append(caption)
    return out


def _check_pairs(params, man: dict) -> None:
    """The shards on disk are the ones the manifest lists, every sample readable (headers only)."""
    for split, info in man["splits"].items():
        names = sorted(p.name for p in paths.SHARD_DIR.glob(f"{split}-*.tar"))
        if names != [s["name"] for s in info["shards"]]:
            raise DataError(f"the {split} shards in {paths.SHARD_DIR} are not those its manifest lists; "
                            f"run `gear t2i-shard` again")
        n = split_size(params, split, pattern(paths.SHARD_DIR))
        if n != info["count"]:
            raise DataError(f"{n} of the {info['count']} {split} pairs in {paths.SHARD_DIR} are readable; "
                            f"run `gear t2i-shard` again")


class _Pair:
    """(members to copy, in their shard order, and the caption) of a pair sample."""

    def __init__(self, image_format: str):
        self.ext = image_format

    def __call__(self, sample: dict, rng) -> tuple[dict, str]:
        members = {k: sample[k] for k in (self.ext, "txt", "json") if k in sample}
        return members, sample["txt"].decode("utf-8")


def _half(emb: np.ndarray, what: str) -> np.ndarray:
    out = emb.astype(np.float16)
    if not np.isfinite(out).all():
        raise ArtifactError(f"t2i-encode: the features of {what} are not finite in float16 (|x| > 65504 or NaN)")
    return out


# ----------------------------------------------------------------------------------------------
# the stage


def run(params) -> None:
    t = params.t2i.text
    pairs = read_pairs_manifest()
    prompts = _prompts()
    _check_pairs(params, pairs)
    rt = setup(params)
    if not rt.is_main:  # light stage: rank 0 does all of it
        teardown(rt)
        return
    enc = load_text_encoder(params, rt.device)  # unavailable weights: one line, at once
    fmt, truncated, splits = pairs["image_format"], {}, {}
    total = sum(s["count"] for s in pairs["splits"].values()) + len(prompts)

    with atomic_dir(paths.CAPTIONS_DIR) as out, tqdm(total=total, desc=f"t2i-encode[{enc.name}]", unit="cap") as bar:
        for split, info in pairs["splits"].items():
            writer, cut = TarShards(out, split, params.t2i.data.samples_per_shard), 0
            for members, captions in eval_batches(params, split, t.batch_size, pattern=pattern(paths.SHARD_DIR),
                                                  decode=_Pair(fmt)):
                for i, (emb, trunc) in enumerate(enc.encode(list(captions))):
                    sample = {k: v[i] for k, v in members.items()}
                    sample["emb.npy"] = npy_bytes(_half(emb, f"{split} caption {captions[i]!r}"))
                    writer.add(sample)
                    cut += trunc
                bar.update(len(captions))
            splits[split] = {"count": writer.count, "shards": writer.close()}
            truncated[split] = int(cut)
            if writer.count != info["count"]:  # a sample failed to decode (warned above)
                raise DataError(f"t2i-encode: {writer.count} of the {info['count']} {split} pairs decoded; "
                                f"run `gear t2i-shard` again")

        embs, cut = [], 0
        for s in range(0, len(prompts), t.batch_size):
            for emb, trunc in enc.encode(prompts[s:s + t.batch_size]):
                embs.append(emb)
                cut += trunc
            bar.update(min(t.batch_size, len(prompts) - s))
        truncated["prompts"] = int(cut)
        if embs:
            x, mask = pad_left(embs, enc.max_len)
        else:
            x, mask = np.zeros((0, enc.max_len, enc.dim), np.float32), np.zeros((0, enc.max_len), bool)
        save_npz(out / "prompts.npz", emb=_half(x, "the held-out prompts"), mask=mask)
        (out / "prompts.jsonl").write_bytes(paths.prompts_file().read_bytes())

        write_json(out / CAPTIONS_MANIFEST, {
            "format": CAPTIONS_FORMAT, "encoder": enc.fingerprint, "dim": enc.dim, "max_len": enc.max_len,
            "splits": splits, "truncated": truncated, "prompts": len(prompts),
            "pairs_sha256": shards_digest(pairs), "prompts_sha256": sha256_file(paths.prompts_file()),
            "resolution": pairs["resolution"], "image_format": fmt, "attributes": pairs.get("attributes")})
    teardown(rt)
    n_cut = sum(truncated.values())
    if n_cut:
        print(f"warning: {n_cut} captions are longer than t2i.text.max_len = {t.max_len} positions and were cut "
              f"({truncated})", file=sys.stderr)
    counts = " / ".join(f"{s['count']} {name}" for name, s in splits.items())
    print(f"t2i-encode: {counts} captions and {len(prompts)} prompts, {enc.name} {enc.dim}-d, <= {enc.max_len} "
          f"positions -> {paths.CAPTIONS_DIR}")
