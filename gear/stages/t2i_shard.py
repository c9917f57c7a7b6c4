"""`gear t2i-shard`: image-caption pairs -> webdataset tar shards and the held-out prompts.

Output, in gear.t2i.paths.SHARD_DIR (t2i/data/shards), replaced as a whole:
  train-000000.tar, ...  val-000000.tar, ...   t2i.data.samples_per_shard samples per tar; per
      sample the members <key>.png (or .jpg, per data.image_format; data.resolution square RGB),
      <key>.txt (the caption, UTF-8, whitespace collapsed) and, for the embedded set only,
      <key>.json (its attributes, compact JSON with sorted keys); key = index within the split
  manifest.json   {"format": "gear-t2i-pairs", "source", "resolution", "image_format",
      "splits": {split: {"count", "shards": [{name, count, sha256, bytes}]}},
      "skipped": [{"split", "path", "reason"}], "attributes": {name: [values]} or null,
      "params_digest": params_digest(params)}
  prompts.jsonl   the held-out prompts, one {"caption": str, "attributes": dict | null} a line:
      embedded: scenes.prompts() (every attribute combination once); folder / jsonl: the val
      captions in val-shard order

Sources (t2i.data.source):
  embedded  gear/t2i/scenes.py, t2i.data.embedded_train / embedded_val scenes, in index order
  folder    every jpg / jpeg / png / webp under t2i.data.root (any depth) with a same-stem .txt
            caption beside it; an image without a caption, or with an empty one, is skipped
  jsonl     t2i.data.manifest, one {"image": path, "caption": text} a line, paths relative to the
            file's folder (absolute allowed); a malformed line is an error before any image is read
For folder / jsonl an image is held out for val when a fixed hash of its path (relative to the
root / manifest folder) falls below t2i.data.val_fraction: adding images never moves others
between splits, and every caption of one image lands in the same split. Images are decoded,
converted and center-cropped exactly as `gear shard` does (gear.data.shard.encode); unreadable,
truncated or oversized files are skipped and listed with the reason. Sample order within a split
is a fixed-seed shuffle, so any prefix of the val prompts is a varied one.

Listing the sources into jobs, the val hold-out and processing one job are gear/t2i/shard.py's.

Same input and params -> byte-identical outputs; everything is written to a temporary folder
next to SHARD_DIR and renamed into place, so a crash never leaves half a set.
"""
from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path

from tqdm import tqdm

from gear.data.shard import DataError, TarShards, pool_map, shown
from gear.io import atomic_dir
from gear.t2i import paths, scenes
from gear.t2i.shard import list_jobs, params_digest, process


def _write_split(split: str, jobs: list[tuple], results, folder: Path, params) -> tuple[dict, list[dict], list[dict]]:
    """Stream one split into its tars: (manifest entry, skips, prompts of its samples)."""
    fmt = params.data.image_format
    writer = TarShards(folder, split, params.t2i.data.samples_per_shard)
    skipped, seen = [], []
    for job, (data, reason, caption, attrs) in tqdm(zip(jobs, results), total=len(jobs), desc=f"t2i-shard {split}",
                                                    unit="img"):
        if data is None:
            skipped.append({"split": split, "path": str(job[1]), "reason": reason})
            tqdm.write(f"warning: skipped {shown(str(job[1]))}: {reason}", file=sys.stderr)
            continue
        members = {fmt: data, "txt": caption.encode("utf-8")}
        if attrs is not None:
            members["json"] = json.dumps(attrs, sort_keys=True, separators=(",", ":")).encode()
        writer.add(members)
        seen.append({"caption": caption, "attributes": attrs})
    shards = writer.close()
    if not shards:
        raise DataError(f"zero readable images in t2i split {split} ({len(skipped)} files skipped, e.g. "
                        f"{skipped[0]['path'] if skipped else 'none'})")
    return {"count": writer.count, "shards": shards}, skipped, seen


def run(params) -> None:
    """Build the pairs, manifest and prompts of params.t2i.data into paths.SHARD_DIR, atomically."""
    d, t = params.data, params.t2i.data
    out = paths.SHARD_DIR
    splits, skipped = list_jobs(params)  # all input checks happen here, before any image is decoded
    for entry in skipped:
        print(f"warning: skipped {shown(entry['path'])}: {shown(entry['reason'])}", file=sys.stderr)

    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        with atomic_dir(out) as tmp:  # stale shards of an older run go with the old folder
            work = functools.partial(process, resolution=d.resolution, image_format=d.image_format)
            manifest = {
                "format": "gear-t2i-pairs",
                "source": t.source,
                "resolution": d.resolution,
                "image_format": d.image_format,
                "splits": {},
                "skipped": list(skipped),
                "attributes": {k: list(v) for k, v in scenes.ATTRIBUTES.items()} if t.source == "embedded" else None,
                "params_digest": params_digest(params),
            }
            val_prompts = []
            for split, jobs in splits.items():
                # closed even when _write_split raises, so the pool never outlives the stage
                with contextlib.closing(pool_map(work, jobs, params.compute.workers)) as results:
                    info, more, seen = _write_split(split, jobs, results, tmp, params)
                manifest["splits"][split] = info
                manifest["skipped"] += more
                if split == "val":
                    val_prompts = seen
            prompts = scenes.prompts() if t.source == "embedded" else val_prompts
            (tmp / "prompts.jsonl").write_text("".join(json.dumps(p, sort_keys=True) + "\n" for p in prompts),
                                               encoding="utf-8")
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    except BaseException:
        for p in made:  # a failed run leaves the tree as it found it (deepest first)
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    n_skip = len(manifest["skipped"])
    print(f"t2i-shard: {manifest['splits']['train']['count']} train / {manifest['splits']['val']['count']} val "
          f"pairs ({t.source}), {len(prompts)} held-out prompts -> {out}"
          + (f" ({n_skip} files skipped, listed in manifest.json)" if n_skip else ""))
