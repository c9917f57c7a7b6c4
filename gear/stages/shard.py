"""`gear shard`: turn the embedded set or an ImageFolder into webdataset tar shards.

Output, in params.data.shard_dir:
  train-000000.tar, ...  val-000000.tar, ...   samples_per_shard samples per tar; per sample the
      members <key>.png (or .jpg; resolution x resolution RGB) and <key>.cls (class index as
      text), key = zero-padded index of the sample within its split
  manifest.json   classes, resolution, counts per split and class, sha256 and bytes per shard, skipped
      files with the reason (unreadable, truncated, not an image, dangling or looping symlink,
      decompression bomb, smaller than data.min_size), `upscaled`: the images whose short side
      was below data.resolution (kept, resized up), for an ImageFolder `decoded`: how many
      images were rotated (EXIF orientation) and colour-converted (ICC profile to sRGB), and
      the params.data digest

Listing, decoding and the tar format are gear/data/shard.py's. Images are processed by a
multiprocessing pool (imap keeps the order) and streamed into the tars, so memory stays constant.
Everything is written into a temporary folder of this run's own next to shard_dir and renamed
into place at the end, so a crash never leaves half a set; a second `gear shard` on the same
shard_dir while one runs is refused in one line naming the running one's pid (io.exclusive).
"""
from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from gear import paths
from gear.data import embedded
from gear.data.shard import DataError, Job, TarShards, encode, list_jobs, pool_map, shown
from gear.guard import as_dict
from gear.io import atomic_dir, exclusive, reraise_disk_full


def _write_split(split: str, jobs: list[Job], encoded: Iterator, folder: Path, params,
                 classes: list[str]) -> tuple[dict, list[dict], list[dict]]:
    d = params.data
    writer = TarShards(folder, split, d.samples_per_shard)
    per_class, skipped, upscaled = {c: 0 for c in classes}, [], []
    decoded = {"rotated": 0, "colour_converted": 0}
    for job, (data, reason, size, (rotated, converted)) in tqdm(zip(jobs, encoded), total=len(jobs),
                                                                desc=f"shard {split}", unit="img"):
        if data is None:
            skipped.append({"split": split, "path": str(job[1]), "reason": reason})
            tqdm.write(f"warning: skipped {shown(str(job[1]))}: {reason}", file=sys.stderr)
            continue
        decoded["rotated"] += rotated
        decoded["colour_converted"] += converted
        if size is not None and min(size) < d.resolution:
            upscaled.append({"split": split, "path": str(job[1]), "size": list(size)})
        writer.add({d.image_format: data, "cls": str(job[2]).encode()})
        per_class[classes[job[2]]] += 1
    shards = writer.close()
    if not shards:
        raise DataError(f"zero readable images in split {split} ({len(skipped)} files skipped, e.g. "
                        f"{shown(skipped[0]['path']) if skipped else 'none'})")
    if split == "train" and d.source == "imagefolder":
        empty = [c for c, n in per_class.items() if n == 0]
        if empty:  # every file of the class was skipped: same problem as an empty folder
            raise DataError(f"class {empty[0]!r} has no readable train image ({len(skipped)} files skipped); "
                            f"fix or remove its folder")
    if upscaled:
        tqdm.write(f"warning: {len(upscaled)} {split} images are smaller than data.resolution = {d.resolution} "
                   f"and were upscaled (listed under 'upscaled' in manifest.json)", file=sys.stderr)
    return {"count": writer.count, "per_class": per_class, "shards": shards}, skipped, upscaled, decoded


def run(params) -> None:
    """Build the shards and manifest of params.data into paths.shard_dir(params), atomically."""
    d = params.data
    out = paths.shard_dir(params)
    classes, splits, listed = list_jobs(params)  # all input checks happen here, before any heavy work
    for entry in listed:
        print(f"warning: skipped {shown(entry['path'])}: {entry['reason']}", file=sys.stderr)
    if d.source == "embedded":
        embedded.photos()  # load once in the parent; forked workers inherit the cache

    new_parent = not out.parent.exists()
    try:
        with exclusive(out, "gear shard"), reraise_disk_full(out):
            manifest = _write(params, out, classes, splits, listed)
    except BaseException:
        if new_parent:  # a failed run leaves the tree as it found it (unless another run uses it)
            with contextlib.suppress(OSError):
                out.parent.rmdir()
        raise
    n_skip = len(manifest["skipped"])
    print(f"shard: {manifest['splits']['train']['count']} train / {manifest['splits']['val']['count']} val "
          f"samples, {len(classes)} classes -> {out}" + (f" ({n_skip} files skipped, listed in manifest.json)" if n_skip else ""))


def _write(params, out: Path, classes: list[str], splits: dict[str, list[Job]], listed: list[dict]) -> dict:
    """Encode every split into a temporary folder of this run's own, then swap it in for `out`."""
    d = params.data
    with atomic_dir(out) as tmp:  # stale shards of an older run go away with the old folder
        encode_job = functools.partial(encode, resolution=d.resolution, image_format=d.image_format,
                                   min_size=d.min_size)
        manifest = {
            "format": "webdataset",
            "source": d.source,
            "resolution": d.resolution,
            "image_format": d.image_format,
            "classes": classes,
            "splits": {},
            "skipped": list(listed),
            "upscaled": [],
            "params_data_digest": params.digest("data"),
            "params_data": as_dict(params.data),
        }
        decoded = {"rotated": 0, "colour_converted": 0}
        for split, jobs in splits.items():
            # closed here even when _write_split raises: a pool torn down later by the garbage
            # collector, at an arbitrary point of the program, can deadlock in its join
            with contextlib.closing(pool_map(encode_job, jobs, params.compute.workers)) as encoded:
                info, skipped, upscaled, counts = _write_split(split, jobs, encoded, tmp, params, classes)
            manifest["splits"][split] = info
            manifest["skipped"] += skipped
            manifest["upscaled"] += upscaled
            decoded = {k: decoded[k] + counts[k] for k in decoded}
        if d.source == "imagefolder":  # the embedded set has neither (and its manifest stays as it was)
            manifest["decoded"] = decoded
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
