""".npz files as numpy writes them (np.savez): reproducible writes, header-only checks, memory maps.

A .npz is a zip of .npy members. Reading a member's header costs a few bytes, so a file can be
checked (keys, dtypes, shapes, no pickled objects) before anything is loaded; a member stored
uncompressed (np.savez, save_npz) is memory-mapped, so each process reads only the rows it uses.
"""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Header(NamedTuple):
    shape: tuple
    fortran: bool
    dtype: np.dtype


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez (uncompressed, np.load reads it), with fixed timestamps: reproducible bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def npy_bytes(arr: np.ndarray) -> bytes:
    """`arr` as a .npy file (np.save's bytes, never pickled): a tar shard's member."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def members(path: Path) -> list[str]:
    """Array names of a .npz; ValueError when the file is not a zip at all."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz (zip) file")
    with zipfile.ZipFile(path) as zf:
        return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]


def _read_header(f) -> Header:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return Header(*read(f))


def header(path: Path, name: str) -> Header:
    """Shape, order and dtype of member `name`, read without loading its data."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as f:
        return _read_header(f)


def load_array(path: Path, name: str) -> np.ndarray:
    """Member `name`: a read-only memory map when stored uncompressed, else loaded (never unpickled)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path, allow_pickle=False) as f:
            return f[name]
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)  # zip local file header: name and extra field lengths
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_len + extra_len)
        shape, fortran, dtype = _read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: {name!r} is an object array (pickled); refused")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
