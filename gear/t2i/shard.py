"""The library of `gear t2i-shard` (gear/stages/t2i_shard.py, whose docstring describes the sources
and the outputs): listing each source (the embedded scenes, a captioned folder, a JSONL manifest)
into the jobs of each split, the val hold-out by a fixed hash of an image's path, and processing one
job in a pool worker (decoding and encoding as `gear shard` does: gear/data/shard.py)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from gear.guard import as_dict
from gear.data.shard import ORDER_SEED, DataError, _not_a_file, encode, encode_image
from gear.t2i import scenes

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


def list_jobs(params) -> tuple[dict[str, list[tuple]], list[dict]]:
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


def process(job: tuple, resolution: int, image_format: str) -> tuple[bytes | None, str, str, dict | None]:
    """(image bytes or None, skip reason, caption, attributes or None) of one job."""
    kind, a, b = job
    if kind == "scene":
        img, caption, attrs = scenes.scene(a, b, resolution)
        return encode_image(img, image_format), "", caption, attrs
    data, reason, *_ = encode(("file", a, 0), resolution, image_format)
    return data, reason, b, None
