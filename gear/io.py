"""Atomic file output and artifact (safetensors + JSON config) I/O.

Nothing here ever leaves a half-written file at a declared path: data goes to a temporary file in
the same folder, is fsync'ed, then renamed over the target (rename is atomic on POSIX). A full disk
during any of it is one line naming the path, and the old file stays as it was. `exclusive` gives
an output one writer at a time; `load_torch` is the one checked reader of torch files.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # torch is imported where tensors are written: this module also serves the Snakefile
    import torch


class ArtifactError(RuntimeError):
    """A missing, corrupt or mismatched artifact (checkpoint, model, shard)."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(ArtifactError):
    """No space left (or quota) while writing an output."""


@contextlib.contextmanager
def reraise_disk_full(path: str | Path) -> Iterator[None]:
    """A full disk (or quota) inside the block becomes one ArtifactError line naming `path`; nested
    writers (a file inside an atomic folder) name the outermost output, the one a person knows."""
    try:
        yield
    except (OSError, DiskFullError) as e:
        if isinstance(e, OSError) and e.errno not in DISK_FULL:
            raise
        raise DiskFullError(f"disk full while writing {path} (no space left on device); the previous "
                            f"version is kept: free space and run again") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    with reraise_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.close(fd)
        tmp = Path(tmp)
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp folder next to `path`; on success it replaces `path` whole."""
    path = Path(path)
    with reraise_disk_full(path), _temp_dir(path.parent, f".{path.name}.") as tmp:
        yield tmp
        swap_in(tmp, path)


def swap_in(tmp: Path, path: Path) -> None:
    """Replace folder `path` by the finished folder `tmp` (beside it): the old one is renamed away
    first (a folder cannot be renamed over a non-empty one) and deleted after, so a crash between
    the renames leaves it at .<name>.old, never a half-written folder at `path`."""
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_entries(folder: str | Path, names: list[str]) -> Iterator[Path]:
    """Yield a temp folder; on success each of `names` in it replaces the entry of that name in
    `folder` (one rename each, a folder through a `.old` rename). The folder's other entries stay:
    reports/ holds the report of `gear report` and that of `gear ablation-report`."""
    folder = Path(folder)
    with reraise_disk_full(folder), _temp_dir(folder, ".build.") as tmp:
        yield tmp
        for name in names:
            new, dest = tmp / name, folder / name
            if new.is_dir():
                swap_in(new, dest)
            else:
                os.replace(new, dest)


@contextlib.contextmanager
def _temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh folder in `parent`, removed on the way out unless renamed away by then."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; outputs are ordinary folders
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive(output: str | Path, command: str, lock: str | Path | None = None) -> Iterator[None]:
    """One writer at a time for `output`: an exclusive lock on the hidden file .<name>.lock beside
    it (or `lock`), holding the writer's pid. A second writer is refused at once in one line naming
    the first. The lock file goes away with the lock (the inode check makes a run that opened it
    just before it was removed try again on the new file rather than share the lock)."""
    output = Path(output)
    lock = Path(lock) if lock is not None else output.parent / f".{output.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ArtifactError(f"{output} is being written by a running {holder}; wait for it to end "
                                f"(or stop it) and run again") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by the writer we waited on: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`{command}` (pid {os.getpid()})\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Any failure to parse `path` inside the block (a truncated zip, a short array, bad JSON...)
    becomes one ArtifactError line naming it; the block must only read."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise ArtifactError(f"{what} {path} is unreadable or truncated ({type(e).__name__}: {first[:160]})") from None


def load_torch(path: str | Path, what: str, allowed: list | None = None, mmap: bool = False):
    """torch.load(weights_only=True) of a file this pipeline reads back, every failure one
    ArtifactError line: missing, empty, truncated, a pickle that is not plain tensors (refused
    unread), or a file of another kind. `allowed`: extra safe globals (numpy arrays)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} {path} not found")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{what} {path} is empty")
    try:
        with torch.serialization.safe_globals(allowed or []):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # zipfile, pickle, EOF and torch's own errors alike
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise ArtifactError(f"{what} {path} is unreadable, truncated or not plain tensors "
                            f"({type(e).__name__}: {first[:160]})") from None


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def save_tensors(path: str | Path, state: dict[str, "torch.Tensor"], metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except Exception as e:  # safetensors reports a full disk as its own error type
            if "os error 28" in str(e) or "os error 122" in str(e):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise


def load_tensors(path: str | Path, what: str = "weights") -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} {path} not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncation/corruption
        raise ArtifactError(f"{what} {path} is unreadable or corrupt ({type(e).__name__}: {e})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
