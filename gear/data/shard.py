"""The library of `gear shard` (gear/stages/shard.py) and `gear t2i-shard` (gear/t2i/shard.py):
listing an ImageFolder or the embedded set into jobs, encoding one job in a pool worker, and
appending samples to webdataset tar shards.

Every file is decoded by gear/data/images.py as a viewer shows it (EXIF orientation, ICC profile,
every transparency form over white, 16-bit rescaled; first frame of a multi-frame file).
Class folders are exactly what the tree holds: a folder with no files, or whose files are all
unreadable, a class symlink that is broken, loops, or points at the root, an ancestor or another
class, and a class name that is not UTF-8 are refused in one line (dropping or duplicating a class
would shift the class index of every later class; a class name becomes a label in every report).
File names that are not UTF-8 are kept by their bytes (Python's surrogateescape; the val hold-out
hashes the raw bytes), and every warning shows a name that holds a newline or undecodable bytes
escaped (repr), on one line.

Same input and params -> byte-identical shards: sample order is a fixed-seed shuffle (so any
prefix of a split is class-balanced), tar headers carry fixed mtime/owner, and PNG/JPEG encoding
is deterministic.
"""
from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing as mp
import os
import signal
import threading
import stat
import tarfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from gear.data import embedded
from gear.data.images import decode
from gear.io import sha256_file

ORDER_SEED = 7  # fixed shuffle of the sample order within each split


class DataError(RuntimeError):
    """Missing, empty or unreadable data; the message is one line a person can act on."""


def shown(text: str) -> str:
    """`text` as one printable line: unchanged when it is, else its repr (a newline or an
    undecodable byte in a file name must not split or break a warning)."""
    return text if text.isprintable() else repr(text)


# A job is (kind, source, label): ("crop", box, label) for the embedded set,
# ("file", path, label) for an ImageFolder.
Job = tuple[str, object, int]


# ----------------------------------------------------------------------------------------------
# image processing (runs in the pool workers)


def center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to `resolution` (box-halving first, then bicubic) and center crop."""
    while min(img.size) >= 2 * resolution:
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
    scale = resolution / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def encode(job: Job, resolution: int, image_format: str,
            min_size: int = 0) -> tuple[bytes | None, str, tuple[int, int] | None, tuple[bool, bool]]:
    """(encoded image bytes, "", source size, (rotated, colour-converted)) of one job, or (None,
    reason, size, ...) when the source cannot be read or is smaller than min_size. Size is None for
    embedded crops."""
    kind, src, label = job
    size, flags = None, (False, False)
    try:
        if kind == "crop":
            img = embedded.render(label, src, resolution)
        else:
            with warnings.catch_warnings():  # PIL only warns between 1x and 2x MAX_IMAGE_PIXELS
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(src) as im:
                    size = im.size
                    if min(size) < min_size:
                        return None, f"image {size[0]}x{size[1]} is smaller than data.min_size = {min_size}", size, flags
                    seen = decode(im)
                    size, flags = seen.image.size, (seen.rotated, seen.colour_converted)
                    img = center_crop(seen.image, resolution)
    except Exception as e:  # any failure to decode means: skip this file and list it
        return None, shown(f"{type(e).__name__}: {e}"), size, flags
    return encode_image(img, image_format), "", size, flags


def encode_image(img: Image.Image, image_format: str) -> bytes:
    """The shard bytes of an image (deterministic: same pixels, same bytes)."""
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=1)  # as small as level 6 on 32 px, faster
    else:
        img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def pool_map(fn, jobs: list[Job], workers: int) -> Iterator[tuple[bytes | None, str]]:
    if workers <= 1:
        yield from map(fn, jobs)
        return
    # Workers are forked with the default SIGTERM too, not only reset by the initializer: a
    # terminate() that reaches a worker before its initializer ran (a split that fails at once, on
    # a loaded machine) would otherwise be ignored and its join would wait forever (seen once).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main else None
    try:
        pool = mp.Pool(workers, initializer=_default_sigterm)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    with pool:
        yield from pool.imap(fn, jobs, chunksize=16)


def _default_sigterm() -> None:
    """Pool.terminate() stops workers with SIGTERM: a handler inherited from the parent (a
    training stage's stop request) would keep them alive and its join waiting forever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ----------------------------------------------------------------------------------------------
# sources


def _class_folders(root: Path, key: str) -> list[str]:
    """The class folder names under root, sorted; refuses a class the tree does not hold exactly
    once (a broken or looping symlink, one to the root, an ancestor or another class) and a name
    that is not UTF-8, in one line each."""
    if not root.is_dir():
        raise DataError(f"{key} {root}: folder not found")
    top, seen = root.resolve(), {}
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not (p.is_dir() or p.is_symlink()):
            continue  # loose files at the root are not classes
        where = f"{key} {root}: class folder {p.name!r}"
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError) as e:  # missing target, or a loop (RuntimeError before 3.13)
            kind = "looping" if "loop" in str(e).lower() or getattr(e, "errno", 0) == errno.ELOOP else "broken"
            raise DataError(f"{where} is a {kind} symlink (-> {shown(os.readlink(p))}); fix or remove it "
                            f"(a dropped class would shift every later class index)") from None
        if not real.is_dir():
            continue  # a symlink to a file: not a class, like any loose file
        if real == top or top.is_relative_to(real):
            raise DataError(f"{where} links back to {real}, the root or a folder above it (its images would "
                            f"be read again as copies); remove the link")
        for other, other_real in seen.items():
            if real.is_relative_to(other_real) or other_real.is_relative_to(real):
                raise DataError(f"{where} is the same folder as (or nested with) class folder {other!r} "
                                f"({real}): each image must belong to one class; remove the link")
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{where} is not valid UTF-8 (raw bytes {os.fsencode(p.name)!r}); a class name "
                            f"becomes a label in the manifest and reports: rename the folder") from None
        seen[p.name] = real
    if not seen:
        raise DataError(f"{key} {root}: no class folders (expected <root>/<class>/<image>)")
    return sorted(seen)


def _not_a_file(path: Path) -> str | None:
    """Why an entry of a class folder cannot be an image (None for a regular file or a folder).
    A broken symlink must become a listed skip, not vanish from the count; a FIFO or device
    would block or stream forever when opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if path.is_symlink():
            kind = "looping" if e.errno == errno.ELOOP else "dangling"
            return f"{kind} symlink ({os.strerror(e.errno)}: -> {os.readlink(path)})"
        return f"{type(e).__name__}: {e}"
    if stat.S_ISDIR(mode):
        return "symlink to a folder (not followed)" if path.is_symlink() else None
    return None if stat.S_ISREG(mode) else "not a regular file (FIFO, socket or device)"


def _files(root: Path, classes: list[str], key: str, split: str,
           allow_empty: bool = False) -> tuple[list[tuple[Path, int]], list[dict]]:
    """(path, label) of every file under <root>/<class>/, class by class, sorted by name, and the
    entries skipped on the way ({split, path, reason}). A class folder without a single file is
    an error unless allow_empty (val_root may lack a class)."""
    out, skipped = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        n = len(out)
        for p in sorted(folder.rglob("*")):
            reason = _not_a_file(p)
            if reason:
                skipped.append({"split": split, "path": str(p), "reason": shown(reason)})
            elif p.is_file():
                out.append((p, label))
        if len(out) == n and not allow_empty:
            raise DataError(f"{key} {root}: class folder {name!r} holds no files (an empty class would shift "
                            f"every later class index); remove it or add its images")
    if not out:
        raise DataError(f"{key} {root}: no files in its class folders")
    return out, skipped


def _hold_out(files: list[tuple[Path, int]], root: Path, fraction: float):
    """Split each class: the round(fraction * n) files with the smallest name hash go to val."""
    train, val = [], []
    for label in sorted({lab for _, lab in files}):
        group = [f for f in files if f[1] == label]
        n_val = min(len(group) - 1, max(1, round(fraction * len(group)))) if len(group) > 1 else 0
        # the name's raw bytes (os.fsencode): a name that is not UTF-8 hashes like any other
        by_hash = sorted(group, key=lambda f: hashlib.sha256(os.fsencode(f[0].relative_to(root))).hexdigest())
        held = {f[0] for f in by_hash[:n_val]}
        train += [f for f in group if f[0] not in held]
        val += [f for f in group if f[0] in held]
    return train, val


def list_jobs(params) -> tuple[list[str], dict[str, list[Job]], list[dict]]:
    """Class names, the jobs of each split in the fixed shuffled order, and the folder entries
    skipped while listing (broken symlinks, special files)."""
    d = params.data
    listed: list[dict] = []
    if d.source == "embedded":
        classes = list(embedded.SOURCES)
        splits = {
            "train": [("crop", box, lab) for lab, box in embedded.crops("train", d.embedded_train_per_class)],
            "val": [("crop", box, lab) for lab, box in embedded.crops("val", d.embedded_val_per_class)],
        }
    else:
        train_root = Path(d.train_root)
        classes = _class_folders(train_root, "data.train_root")
        train, listed = _files(train_root, classes, "data.train_root", "train")
        if d.val_root:
            val_root = Path(d.val_root)
            unknown = sorted(set(_class_folders(val_root, "data.val_root")) - set(classes))
            if unknown:
                raise DataError(f"data.val_root {val_root}: class folders not in data.train_root: {', '.join(unknown[:5])}")
            val, more = _files(val_root, classes, "data.val_root", "val", allow_empty=True)
            listed += more
        else:
            train, val = _hold_out(train, train_root, d.val_fraction)
        splits = {"train": [("file", str(p), lab) for p, lab in train],
                  "val": [("file", str(p), lab) for p, lab in val]}
    for i, (name, jobs) in enumerate(splits.items()):
        order = np.random.default_rng([ORDER_SEED, i]).permutation(len(jobs))
        splits[name] = [jobs[j] for j in order]
    return classes, splits, listed


# ----------------------------------------------------------------------------------------------
# writing


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class TarShards:
    """Appends samples to <folder>/<split>-000000.tar, ... with `per_shard` samples per tar."""

    def __init__(self, folder: Path, split: str, per_shard: int):
        self.folder, self.split, self.per_shard = folder, split, per_shard
        self.shards, self.count, self._tar = [], 0, None

    def add(self, members: dict[str, bytes]) -> None:
        if self.count % self.per_shard == 0:
            self._close_tar()
            self.shards.append({"name": f"{self.split}-{len(self.shards):06d}.tar", "count": 0})
            self._tar = tarfile.open(self.folder / self.shards[-1]["name"], "w", format=tarfile.USTAR_FORMAT)
        key = f"{self.count:09d}"
        for ext, data in members.items():
            _add_member(self._tar, f"{key}.{ext}", data)
        self.shards[-1]["count"] += 1
        self.count += 1

    def close(self) -> list[dict]:
        """[{name, count, sha256}] of the shards written."""
        self._close_tar()
        return self.shards

    def _close_tar(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            path = self.folder / self.shards[-1]["name"]
            self.shards[-1]["sha256"] = sha256_file(path)
            self.shards[-1]["bytes"] = path.stat().st_size  # checked by the loader at no cost (sha256 is not)
