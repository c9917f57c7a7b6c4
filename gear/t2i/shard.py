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

Same input and params -> byte-identical outputs; everything is written to a temporary folder
next to SHARD_DIR and renamed into place, so a crash never leaves half a set.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gear.guard import as_dict
from gear.io import atomic_dir
from gear.data.shard import ORDER_SEED, DataError, TarShards, _not_a_file, encode, encode_image, pool_map, shown
from gear.t2i import paths, scenes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "val")

# A job is ("scene", split, index) for the embedded set, ("file", path, caption) otherwise;
# `relpath` (for the val hash) is resolved while listing and not needed after.


def params_digest(params) -> str:
    """sha256 (16 hex) of what the shards depend on: t2i.data, data.resolution, data.image_format."""
    key = {"t2i.data": as_dict(params.t2i.data), "data.resolution": params.data.resolution,
           "data.image_format": params.data.image_format}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def clean_caption(text: str) -> str:
    return " ".join(text.split())


def in_val(relpath: str, fraction: float) -> bool:
    """Fixed split of a folder / jsonl image by the hash of its relative path (POSIX form)."""
    return int(hashlib.sha256(os.fsencode(relpath)).hexdigest()[:8], 16) / 2**32 < fraction  # raw bytes: any name


# ----------------------------------------------------------------------------------------------
# sources: every check and every caption read happens here, before any image is decoded


def _folder_pairs(root: Path) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(path, relpath, caption) of every captioned image under root, sorted, and (path, relpath,
    reason) of every image skipped."""
    if not root.is_dir():
        raise DataError(f"t2i.data.root {root}: folder not found")
    pairs, skipped = [], []
    images = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    for p in images:
        reason = _not_a_file(p)
        if reason is None and not p.is_file():
            continue  # a folder named like an image
        caption_file = p.with_suffix(".txt")
        if reason is None:
            try:
                caption = clean_caption(caption_file.read_text(encoding="utf-8"))
                reason = None if caption else f"empty caption {caption_file.name}"
            except FileNotFoundError:
                reason = f"no caption: {caption_file.name} not found beside it"
            except (OSError, UnicodeDecodeError) as e:
                reason = f"caption {caption_file.name} unreadable ({type(e).__name__}: {e})"
        rel = p.relative_to(root).as_posix()
        if reason:
            skipped.append((str(p), rel, reason))
        else:
            pairs.append((str(p), rel, caption))
    if not images:
        raise DataError(f"t2i.data.root {root}: no image files ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
    return pairs, skipped


def _jsonl_pairs(manifest: Path) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(path, relpath, caption) of every line of the manifest, in file order, and (path, relpath,
    reason) of every line skipped. A malformed line is an error."""
    if not manifest.is_file():
        raise DataError(f"t2i.data.manifest {manifest}: file not found")
    base, pairs, skipped = manifest.parent, [], []
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"t2i.data.manifest {manifest}: not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"t2i.data.manifest {manifest} line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "image" not in rec or "caption" not in rec:
            raise DataError(f'{where}: expected an object {{"image": path, "caption": text}}')
        if not isinstance(rec["image"], str) or not rec["image"]:
            raise DataError(f"{where}: image must be a non-empty string path, got {rec['image']!r}")
        if not isinstance(rec["caption"], str):
            raise DataError(f"{where}: caption must be a string, got {type(rec['caption']).__name__}")
        path = Path(rec["image"])
        full = path if path.is_absolute() else base / path
        try:
            rel = full.relative_to(base).as_posix()
        except ValueError:  # absolute and outside the manifest's folder: hash the path itself
            rel = path.as_posix()
        caption = clean_caption(rec["caption"])
        if caption:
            pairs.append((str(full), rel, caption))
        else:
            skipped.append((str(full), rel, f"empty caption (manifest line {n})"))
    if not pairs:
        raise DataError(f"t2i.data.manifest {manifest}: no captioned images listed")
    return pairs, skipped


def _jobs(params) -> tuple[dict[str, list[tuple]], list[dict]]:
    """The jobs of each split, in their final order, and the entries skipped while listing
    ({split, path, reason}; the split an image would have gone to)."""
    t = params.t2i.data
    if t.source == "embedded":
        counts = {"train": t.embedded_train, "val": t.embedded_val}
        return {s: [("scene", s, i) for i in range(counts[s])] for s in SPLITS}, []
    if t.source == "folder":
        key, (pairs, listed) = "t2i.data.root", _folder_pairs(Path(t.root))
    else:
        key, (pairs, listed) = "t2i.data.manifest", _jsonl_pairs(Path(t.manifest))

    def split_of(rel: str) -> str:
        return "val" if in_val(rel, t.val_fraction) else "train"

    splits = {"train": [], "val": []}
    for path, rel, caption in pairs:
        splits[split_of(rel)].append(("file", path, caption))
    for i, s in enumerate(SPLITS):
        if not splits[s]:
            raise DataError(f"{key}: split {s} is empty ({len(pairs)} captioned images, "
                            f"t2i.data.val_fraction = {t.val_fraction}); add images or change val_fraction")
        order = np.random.default_rng([ORDER_SEED, i]).permutation(len(splits[s]))
        splits[s] = [splits[s][j] for j in order]
    return splits, [{"split": split_of(rel), "path": path, "reason": reason} for path, rel, reason in listed]


# ----------------------------------------------------------------------------------------------
# processing (runs in the pool workers)


def _process(job: tuple, resolution: int, image_format: str) -> tuple[bytes | None, str, str, dict | None]:
    """(image bytes or None, skip reason, caption, attributes or None) of one job."""
    kind, a, b = job
    if kind == "scene":
        img, caption, attrs = scenes.scene(a, b, resolution)
        return encode_image(img, image_format), "", caption, attrs
    data, reason, *_ = encode(("file", a, 0), resolution, image_format)
    return data, reason, b, None


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
    splits, skipped = _jobs(params)  # all input checks happen here, before any image is decoded
    for entry in skipped:
        print(f"warning: skipped {shown(entry['path'])}: {shown(entry['reason'])}", file=sys.stderr)

    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        with atomic_dir(out) as tmp:  # stale shards of an older run go with the old folder
            process = functools.partial(_process, resolution=d.resolution, image_format=d.image_format)
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
                with contextlib.closing(pool_map(process, jobs, params.compute.workers)) as results:
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
