"""Atomic file output and artifact (safetensors + JSON config) I/O.

Nothing here ever leaves a half-written file at a declared path: data goes to a temporary file in
the same folder, is fsync'ed, then renamed over the target (rename is atomic on POSIX).
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; outputs are ordinary folders
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_entries(folder: str | Path, names: list[str]) -> Iterator[Path]:
    """Yield a temp folder; on success each of `names` in it replaces the entry of that name in
    `folder` (one rename each, a folder through a `.old` rename). The folder's other entries stay:
    reports/ holds the report of `gear report` and that of `gear ablation-report`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build.", suffix=".tmp", dir=folder))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        for name in names:
            new, dest = tmp / name, folder / name
            if new.is_dir() and dest.exists():
                old = folder / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
                os.replace(new, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(new, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
        save_file(tensors, str(tmp), metadata=meta)


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
