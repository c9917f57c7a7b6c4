"""Batches from webdataset tar shards: an infinite, resumable training stream and eval passes.

Design (chosen for exact resume and DDP lockstep): each split's tars are indexed once (tar
headers only: where every member of every sample lies), then samples are read by position
(os.pread) and decoded on the fly in a torch DataLoader (params.compute.workers processes).
  - epoch e visits the permutation of all N samples drawn from (seed, e); rank r takes every
    world-th entry from r and the epoch is cut to the same whole number of batches on every
    rank (the remainder is dropped), so ranks stay in lockstep;
  - augmentation draws come from a generator seeded by (seed, epoch, sample index): a batch
    does not depend on worker count, prefetching or where a run was resumed;
  - `state_dict()` is {'epoch', 'batch'} (batches consumed in the epoch); `load_state_dict`
    restarts exactly there without replaying data.
Unlike a streaming webdataset pipeline this reads every epoch in a global random order, which
needs a file system that serves random reads of whole samples (local disk, Lustre, NFS).
A missing shard, a truncated shard, a sample without all its members or a sample that fails to
decode is warned about, counted in `TrainStream.skipped`, and skipped. A complete shard whose
sample count or size differs from what manifest.json records is not the shard the manifest
describes (another run's, or a copy gone wrong): that is an error, not a warning.

Decoding is a hook: `decode(sample, rng) -> tuple`, where `sample` is a webdataset-style dict
({'__key__': str, 'png': bytes, 'cls': bytes, 'tokens.npy': bytes, ...}) and `rng` is a
random.Random (see sample_rng) when augmenting, else None. torch's default_collate batches the
tuple's elements. The default, ImageDecoder, gives (images (B, 3, H, W) in [-1, 1], labels (B,)).
"""
from __future__ import annotations

import functools
import glob
import io
import json
import os
import random
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from gear import paths
from gear.data.images import to_rgb
from gear.data.shard import DataError

IMAGE_EXTS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
CROP_ENLARGE = 1.1  # reference augmentation: random crop from a 1.1x resize


def read_manifest(params) -> dict:
    """The shard manifest of params.data.shard_dir (written by `gear shard`)."""
    path = paths.manifest(params)
    if not path.is_file():
        raise DataError(f"no shards: {path} not found; run `gear shard` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON; run `gear shard` again") from None


# ----------------------------------------------------------------------------------------------
# per-sample decoding


def decode_image(sample: dict) -> Image.Image:
    """The sample's image member as an RGB PIL image."""
    for ext, fmt in IMAGE_EXTS.items():
        if ext in sample:
            img = Image.open(io.BytesIO(sample[ext]), formats=(fmt,))  # no format probing: faster
            return img if img.mode == "RGB" else to_rgb(img)
    raise KeyError(f"sample {sample.get('__key__')} has no image member ({', '.join(IMAGE_EXTS)})")


def decode_label(sample: dict) -> int:
    return int(sample["cls"])


def augment(img: Image.Image, rng: random.Random, random_crop: bool = True,
            hflip: bool = True) -> tuple[Image.Image, bool]:
    """Random crop of the original size from a 1.1x bicubic resize, then a coin-flip mirror.
    Returns the image and whether it was flipped (token decoders pick the flipped grid)."""
    w, h = img.size
    if random_crop:
        big = img.resize((round(w * CROP_ENLARGE), round(h * CROP_ENLARGE)), Image.Resampling.BICUBIC)
        x, y = rng.randrange(big.width - w + 1), rng.randrange(big.height - h + 1)
        img = big.crop((x, y, x + w, y + h))
    flip = bool(hflip and rng.random() < 0.5)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img, flip


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1]."""
    x = np.asarray(img, dtype=np.float32) / 127.5 - 1.0  # numpy: less per-call overhead than torch
    return torch.from_numpy(x).permute(2, 0, 1)


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The augmentation generator of one sample in one epoch. Stdlib Random: 3x cheaper to create
    than a numpy Generator, and str seeds are hashed with sha512 (same in every process)."""
    return random.Random(f"{seed}/{epoch}/{index}")


class ImageDecoder:
    """Default decode: (image (3, H, W) in [-1, 1], label), augmented per params.data when rng is given."""

    def __init__(self, params):
        self.random_crop, self.hflip = params.data.random_crop, params.data.hflip

    def __call__(self, sample: dict, rng: random.Random | None) -> tuple[torch.Tensor, int]:
        img = decode_image(sample)
        if rng is not None:
            img, _ = augment(img, rng, self.random_crop, self.hflip)
        return to_tensor(img), decode_label(sample)


# ----------------------------------------------------------------------------------------------
# shard index: where each member of each sample lies


@dataclass
class _Index:
    files: tuple[str, ...]
    shard: np.ndarray                                  # (N,) shard of each sample
    keys: np.ndarray                                   # (N,) sample keys (bytes)
    members: dict[str, tuple[np.ndarray, np.ndarray]]  # ext -> (offsets, sizes), each (N,)
    problems: list[str]                                # one warning line per problem
    counts: dict[str, int]                             # missing/truncated shards, incomplete samples
    scanned: tuple[int, ...]                           # samples in each complete shard (-1: missing/damaged)

    def __len__(self) -> int:
        return len(self.shard)


def _add_member(samples: list, name: str, offset: int, size: int) -> None:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")  # webdataset: the key runs up to the first dot
    key = f"{folder}/{stem}" if folder else stem
    if not samples or samples[-1][0] != key:
        samples.append((key, {}))
    samples[-1][1][ext] = (offset, size)


def _scan_tar_slow(path: str) -> tuple[list[tuple[str, dict]], bool]:
    """_scan_tar through the tarfile module: for pax and GNU long-name headers."""
    samples, truncated, file_size = [], False, os.path.getsize(path)
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.offset_data + m.size > file_size:
                    return samples, True
                if m.isfile():
                    _add_member(samples, m.name, m.offset_data, m.size)
            end = tar.offset
        with open(path, "rb") as f:  # a complete tar ends with two zero blocks
            f.seek(end)
            truncated = f.read(1024) != bytes(1024)
    except (tarfile.TarError, OSError):
        truncated = True
    return samples, truncated


def _scan_tar(path: str) -> tuple[list[tuple[str, dict]], bool]:
    """[(key, {ext: (offset, size)})] of a tar in member order, and whether it is cut short or
    corrupt (then the samples before the damage). Reads only the 512-byte headers."""
    samples = []
    with open(path, "rb") as f:
        fd, file_size, offset = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while True:
            header = os.pread(fd, 512, offset)
            if header == bytes(512):  # end-of-archive: two zero blocks
                return samples, os.pread(fd, 512, offset + 512) != bytes(512)
            if len(header) < 512 or sum(header) - sum(header[148:156]) + 256 != _octal(header[148:156]):
                return samples, True
            typeflag, size = header[156:157], _octal(header[124:136])
            if typeflag in (b"x", b"g", b"L", b"K"):
                return _scan_tar_slow(path)
            if size < 0 or offset + 512 + size > file_size:
                return samples, True
            if typeflag in (b"0", b"\0"):
                name = header[:100].split(b"\0")[0].decode()
                prefix = header[345:500].split(b"\0")[0].decode() if header[257:262] == b"ustar" else ""
                _add_member(samples, f"{prefix}/{name}" if prefix else name, offset + 512, size)
            offset += 512 + (size + 511) // 512 * 512


def _octal(field: bytes) -> int:
    try:
        return int(field.rstrip(b"\0 ").strip() or b"0", 8)
    except ValueError:
        return -1


@functools.lru_cache(maxsize=16)
def _index(signature: tuple[tuple[str, int, int], ...]) -> _Index:
    """Index of the shards in `signature` ((path, size, mtime_ns); size -1 = missing)."""
    problems, counts = [], {"missing_shards": 0, "truncated_shards": 0, "incomplete_samples": 0}
    per_shard, scanned = [], [-1] * len(signature)
    for sid, (path, size, _) in enumerate(signature):
        if size < 0:
            problems.append(f"shard {path} is missing; skipped")
            counts["missing_shards"] += 1
            continue
        samples, truncated = _scan_tar(path)
        if truncated:
            problems.append(f"shard {path} is truncated or corrupt; using the {len(samples)} samples before the damage")
            counts["truncated_shards"] += 1
        else:
            scanned[sid] = len(samples)
        per_shard.append((sid, samples))
    # Every sample must hold the members most samples hold (a cut-off last sample lacks some).
    sets = Counter(frozenset(m) for _, samples in per_shard for _, m in samples)
    required = sorted(sets.most_common(1)[0][0]) if sets else []
    shard, keys, offsets, sizes = [], [], {e: [] for e in required}, {e: [] for e in required}
    for sid, samples in per_shard:
        for key, m in samples:
            if not all(e in m for e in required):
                counts["incomplete_samples"] += 1
                continue
            shard.append(sid)
            keys.append(key.encode())
            for e in required:
                offsets[e].append(m[e][0])
                sizes[e].append(m[e][1])
    if counts["incomplete_samples"]:
        problems.append(f"{counts['incomplete_samples']} samples lack some of their members ({', '.join(required)}); skipped")
    members = {e: (np.array(offsets[e], np.int64), np.array(sizes[e], np.int64)) for e in required}
    return _Index(tuple(p for p, _, _ in signature), np.array(shard, np.int32), np.array(keys, dtype=bytes),
                  members, problems, counts, tuple(scanned))


def _split_index(params, split: str, pattern: str | None) -> tuple[_Index, int | None]:
    """Index of a split's shards (from the manifest, or a glob `pattern` where {split} expands),
    and the sample count the manifest promises (None without a manifest). Warns about damage."""
    if pattern is None:
        man = read_manifest(params)
        if man["resolution"] != params.data.resolution:
            raise DataError(f"shards in {paths.shard_dir(params)} are {man['resolution']} px but data.resolution = "
                            f"{params.data.resolution}; run `gear shard` again")
        if split not in man["splits"]:
            raise DataError(f"split {split!r} not in {paths.manifest(params)} (has {', '.join(man['splits'])})")
        files = [str(paths.shard_dir(params) / s["name"]) for s in man["splits"][split]["shards"]]
        expected = man["splits"][split]["count"]
    else:
        files = sorted(glob.glob(pattern.replace("{split}", split)))
        if not files:
            raise DataError(f"no shards match {pattern.replace('{split}', split)}")
        expected = None
    signature = []
    for f in files:
        try:
            st = os.stat(f)
            signature.append((f, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            signature.append((f, -1, -1))
    index = _index(tuple(signature))
    if pattern is None:
        for (path, size, _), n, entry in zip(signature, index.scanned, man["splits"][split]["shards"]):
            if n >= 0 and (n != entry["count"] or size != entry.get("bytes", size)):
                raise DataError(f"shard {path} holds {n} samples in {size} bytes but {paths.manifest(params)} says "
                                f"{entry['count']} in {entry.get('bytes', '?')}: the manifest does not describe "
                                f"these shards; run `gear shard` again")
    for line in index.problems:
        warnings.warn(line, RuntimeWarning, stacklevel=3)
    if expected is not None and len(index) < expected:
        warnings.warn(f"{split}: {len(index)} of {expected} samples readable", RuntimeWarning, stacklevel=3)
    if len(index) == 0:
        raise DataError(f"no readable samples in the {split} shards ({files[0]}, ...)")
    return index, expected


class _Samples(Dataset):
    """Reads sample i by position and decodes it; a failure is warned about and gives None."""

    def __init__(self, index: _Index, decode: Callable):
        self.index, self.decode, self._fds = index, decode, {}

    def __len__(self) -> int:
        return len(self.index)

    def read(self, i: int) -> dict:
        sid = int(self.index.shard[i])
        if sid not in self._fds:
            if len(self._fds) >= 64:  # bound open files with many shards
                self.close()
            self._fds[sid] = os.open(self.index.files[sid], os.O_RDONLY)
        sample = {"__key__": self.index.keys[i].decode()}
        for ext, (offsets, sizes) in self.index.members.items():
            sample[ext] = os.pread(self._fds[sid], int(sizes[i]), int(offsets[i]))
        return sample

    def __getitem__(self, item: tuple[int, tuple | None]):
        i, seed = item
        try:
            return self.decode(self.read(i), None if seed is None else sample_rng(*seed))
        except Exception as e:  # bad bytes in one sample must not stop a long run
            warnings.warn(f"sample {self.index.keys[i].decode()} of {self.index.files[self.index.shard[i]]} "
                          f"skipped: {type(e).__name__}: {e}", RuntimeWarning)
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict:  # spawn-started workers open their own files
        return {**self.__dict__, "_fds": {}}

    def __del__(self):
        self.close()


def _collate(items: list) -> tuple[object, int]:
    ok = [x for x in items if x is not None]
    return (default_collate(ok) if ok else None), len(items) - len(ok)


def _loader(data: _Samples, batches: Iterator[list], workers: int) -> DataLoader:
    # A private generator: DataLoader draws its worker base seed from it, and drawing from the
    # global RNG would shift the model's dropout stream on every resume (breaking exact resume).
    return DataLoader(data, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0))


def _epoch_order(seed: int, epoch: int, n: int, rank: int, world: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)[rank::world][:count]


def _batches(seed: int, epoch: int, batch: int, n: int, rank: int, world: int, batch_size: int,
             augment: bool) -> Iterator[list]:
    """Index lists of one rank's batches from (epoch, batch) on, forever. A plain function, not a
    method: a generator holding the stream would make a reference cycle, and collecting that
    cycle stalls DataLoader worker shutdown for seconds."""
    per_epoch = n // world // batch_size
    while True:
        order = _epoch_order(seed, epoch, n, rank, world, per_epoch * batch_size).tolist()
        for b in range(batch, per_epoch):
            yield [(i, (seed, epoch, i) if augment else None) for i in order[b * batch_size:(b + 1) * batch_size]]
        epoch, batch = epoch + 1, 0


# ----------------------------------------------------------------------------------------------
# public API


class TrainStream:
    """Infinite iterator of training batches (by default (images, labels)); see the module doc.
    Resume needs the same seed, batch_size, world and shards."""

    def __init__(self, params, split: str = "train", batch_size: int = 64, *, rank: int = 0, world: int = 1,
                 seed: int | None = None, augment: bool = True, pattern: str | None = None,
                 decode: Callable | None = None):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} / world {world}: need 0 <= rank < world")
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: must be >= 1")
        self.seed = params.compute.seed if seed is None else seed
        if self.seed < 0:
            raise ValueError(f"seed {self.seed}: must be >= 0")
        self.index, self.expected_samples = _split_index(params, split, pattern)
        self.batch_size, self.rank, self.world, self.augment = batch_size, rank, world, augment
        self.num_samples = len(self.index)
        self.batches_per_epoch = self.num_samples // world // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(f"split {split} has {self.num_samples} samples: fewer than "
                            f"{world} rank(s) x batch_size {batch_size}")
        self.skipped = {**self.index.counts, "decode_errors": 0}
        self._data = _Samples(self.index, decode or ImageDecoder(params))
        self._workers = params.compute.workers
        self.epoch, self.batch, self._it = 0, 0, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample indices this rank visits in `epoch`, in order (batches_per_epoch * batch_size)."""
        return _epoch_order(self.seed, epoch, self.num_samples, self.rank, self.world,
                            self.batches_per_epoch * self.batch_size)

    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self):
        if self._it is None:
            batches = _batches(self.seed, self.epoch, self.batch, self.num_samples, self.rank, self.world,
                               self.batch_size, self.augment)
            self._it = iter(_loader(self._data, batches, self._workers))
        out, failed = next(self._it)
        self.skipped["decode_errors"] += failed
        if out is None:
            raise DataError(f"every sample of batch {self.batch} of epoch {self.epoch} failed to decode (see warnings)")
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, sd: dict) -> None:
        epoch, batch = int(sd["epoch"]), int(sd["batch"])
        if epoch < 0 or not 0 <= batch < self.batches_per_epoch:
            raise ValueError(f"stream state {sd}: batch must be in [0, {self.batches_per_epoch}) "
                             "(same batch_size, world and shards as the saved run?)")
        self.epoch, self.batch, self._it = epoch, batch, None  # the old loader's workers stop


def eval_batches(params, split: str = "val", batch_size: int = 64, *, rank: int = 0, world: int = 1,
                 pattern: str | None = None, decode: Callable | None = None) -> Iterator:
    """Every sample of the split once, in shard order, no augmentation; rank r gets samples r::world."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} / world {world}: need 0 <= rank < world")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be >= 1")
    index, _ = _split_index(params, split, pattern)
    own = range(rank, len(index), world)
    batches = ([(i, None) for i in own[s:s + batch_size]] for s in range(0, len(own), batch_size))
    for out, _ in _loader(_Samples(index, decode or ImageDecoder(params)), batches, params.compute.workers):
        if out is not None:
            yield out


def split_size(params, split: str = "val", pattern: str | None = None) -> int:
    """Readable samples of a split: eval_batches visits positions 0 .. split_size - 1."""
    return len(_split_index(params, split, pattern)[0])


def read_batches(params, split: str, batches: list, *, pattern: str | None = None,
                 decode: Callable | None = None) -> Iterator:
    """The samples at the given positions of a split (shard order), no augmentation: one output per
    index list of `batches`, in order (None where no sample of the list decodes), so a rank that
    reads its share of a batch plan shared by all ranks stays aligned with that plan."""
    index, _ = _split_index(params, split, pattern)
    batches = [[int(i) for i in b] for b in batches]
    bad = next((i for b in batches for i in b if not 0 <= i < len(index)), None)
    if bad is not None:
        raise ValueError(f"sample position {bad} out of range: split {split} has {len(index)} readable samples")
    items = ([(i, None) for i in b] for b in batches)
    for out, _ in _loader(_Samples(index, decode or ImageDecoder(params)), items, params.compute.workers):
        yield out
