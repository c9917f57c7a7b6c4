"""On-disk formats the stages hand each other, with their one checked reader: models
(`<name>.safetensors` + `config.json` in a folder), token shards' manifests and samples files.

A frozen tokenizer (`gear freeze`) is what `gear tokenize`, `gear train-ar`, `gear sample`,
`gear evaluate` and the Python API load by path:

    from gear.artifacts import load_ar, load_tokenizer
    tok = load_tokenizer("models/frozen/gear")      # eval mode, frozen
    ar, cfg = load_ar("models/ar/seed0/gear/tiny")
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from gear import paths
from gear.config import ParamsError
from gear.data.loader import read_manifest
from gear.io import ArtifactError, load_tensors, read_json, reading, save_tensors, sha256_file, write_json
from gear.npz import load_array, members

if TYPE_CHECKING:
    from gear.models.ar import GPT


def write_model(directory: Path, name: str, model: nn.Module) -> None:
    """Write model weights as <directory>/<name>.safetensors (atomically)."""
    save_tensors(Path(directory) / f"{name}.safetensors", model.state_dict())


def read_config(directory: str | Path, what: str) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{what} folder {directory} not found (run the stage that writes it first)")
    return read_json(directory / "config.json", what=f"{what} config")


def load_weights(model: nn.Module, path: str | Path, what: str) -> nn.Module:
    state = load_tensors(path, what=what)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{what} {path} does not match its config: missing {list(missing)[:3]}, "
                            f"unexpected {list(unexpected)[:3]}")
    return model


def write_tokenizer(directory: Path, model: nn.Module, extra: dict, name: str = "tokenizer") -> None:
    write_model(directory, name, model)
    if name == "tokenizer":
        write_json(Path(directory) / "config.json", {"tokenizer": model.config.to_dict(), **extra})


def load_tokenizer(directory: str | Path, name: str = "tokenizer", device: str | torch.device = "cpu",
                   frozen: bool = True):
    """Tokenizer from a folder written by tokenizer-init, tune or freeze."""
    from gear.models.tokenizer import Tokenizer, TokenizerConfig

    cfg = read_config(directory, "tokenizer")
    if "tokenizer" not in cfg:
        raise ArtifactError(f"{directory}/config.json holds no tokenizer config")
    model = Tokenizer(TokenizerConfig.from_dict(cfg["tokenizer"]))
    load_weights(model, Path(directory) / f"{name}.safetensors", "tokenizer weights")
    model = model.to(device)
    if frozen:
        model.eval().requires_grad_(False)
    return model


def check_tokenizer_matches(cfg: dict, params, directory: Path) -> None:
    """A tokenizer folder written under other params is an error, named, before any compute."""
    from gear.models.tokenizer import TokenizerConfig

    want = TokenizerConfig.from_params(params).to_dict()
    have = cfg.get("tokenizer", {})
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            raise ArtifactError(f"tokenizer in {directory} was built with {key}={have.get(key)!r} but params "
                                f"give {want.get(key)!r}; rerun its stage or restore the params")


# ---- AR weights (`gear train-ar`) ------------------------------------------------------------------

def load_ar(directory: str | Path, device: str | torch.device = "cpu", name: str = "ar", key: str = "gpt",
            what: str = "AR") -> tuple[GPT, dict]:
    """(AR in eval mode, frozen; its config.json) from a folder written by train-ar. name: `ar`
    (EMA) or `ar_raw`; `key`: where config.json holds the GPTConfig (t2i-train's: t2i_gpt)."""
    from gear.models.ar import GPT, GPTConfig

    cfg = read_config(directory, what)
    if key not in cfg:
        raise ArtifactError(f"{directory}/config.json holds no {what} config")
    model = GPT(GPTConfig.from_dict(cfg[key]))
    load_weights(model, Path(directory) / f"{name}.safetensors", f"{what} weights")
    return model.to(device).eval().requires_grad_(False), cfg


# ---- token shards (`gear tokenize`) -------------------------------------------------------------

TOKENS_MANIFEST = "manifest.json"


def _seed_flag(arm: str, seed: int | None, size: str | None = None) -> str:
    if not paths.tokenizer_seeded(arm):
        return ""
    return f" --seed {seed}" + (f" --size {size}" if paths.sized() and size else "")


def check_arm(arm: str) -> None:
    if arm not in paths.FRESH_AR_ARMS:
        raise ParamsError(f"--arm {arm!r}: must be one of {', '.join(paths.FRESH_AR_ARMS)}")


def frozen_tokenizer(params, arm: str, seed: int | None, size: str | None = None) -> tuple[dict, str]:
    """(config, sha256 of the weights) of the frozen tokenizer of `arm`, checked against params."""
    directory = paths.frozen_dir(arm, seed, size)
    if not (directory / "tokenizer.safetensors").is_file():
        raise ArtifactError(f"frozen tokenizer {directory}/tokenizer.safetensors not found; run `gear freeze --arm {arm}{_seed_flag(arm, seed, size)}` first")
    cfg = read_config(directory, "tokenizer")
    check_tokenizer_matches(cfg, params, directory)
    return cfg, sha256_file(directory / "tokenizer.safetensors")


def source_digest(data_manifest: dict) -> str:
    """sha256 over the train shards' sha256s: identifies the exact source images."""
    shas = [s["sha256"] for s in data_manifest["splits"]["train"]["shards"]]
    return hashlib.sha256("".join(shas).encode()).hexdigest()


def read_tokens_manifest(params, arm: str, seed: int | None, size: str | None = None) -> dict:
    """The token-shard manifest of `arm`, checked against the frozen tokenizer, the source shards
    and data.hflip (a clear error when the tokens are missing or stale)."""
    path = paths.tokens_dir(arm, seed, size) / TOKENS_MANIFEST
    if not path.is_file():
        raise ArtifactError(f"token shards {path} not found; run `gear tokenize --arm {arm}{_seed_flag(arm, seed, size)}` first")
    man = read_json(path, "token-shard manifest")
    _, sha = frozen_tokenizer(params, arm, seed, size)
    stale = None
    if man["tokenizer_sha256"] != sha:
        stale = f"the frozen tokenizer {paths.frozen_dir(arm, seed, size)} changed"
    elif man["source_digest"] != source_digest(read_manifest(params)):
        stale = f"the source shards in {paths.shard_dir(params)} changed"
    elif man["hflip"] != params.data.hflip:
        stale = f"they were written with data.hflip={man['hflip']}, params give {params.data.hflip}"
    if stale:
        raise ArtifactError(f"token shards {paths.tokens_dir(arm, seed, size)} are stale ({stale}); rerun "
                            f"`gear tokenize --arm {arm}{_seed_flag(arm, seed, size)}`")
    return man


# ---- samples (`gear sample`; `gear t2i-sample` writes the same .npz kind) -------------------------

def _names(path: Path) -> list[str]:
    try:
        return members(path)
    except ValueError as e:
        raise ArtifactError(str(e)) from None


def npz_array(path: Path, name: str) -> np.ndarray:
    """Array `name` of a .npz, memory-mapped when stored uncompressed (np.savez, save_npz):
    each rank then reads only the rows it uses. A damaged file is one ArtifactError line."""
    with reading(path, "samples file"):
        names = _names(path)
        if name not in names:
            raise ArtifactError(f"{path} holds no {name!r} array (has {', '.join(names)})")
        return load_array(path, name)


def read_samples(directory: Path) -> np.ndarray:
    """The images of a samples folder (what `gear evaluate samples` reads): `arr_0`, or `images`
    in files written before the ADM layout."""
    path = directory / "samples.npz"
    if not path.is_file():
        raise ArtifactError(f"samples file {path} not found; run `gear sample` first")
    images = npz_array(path, "images" if "images" in _names(path) else "arr_0")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ArtifactError(f"{path}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images
