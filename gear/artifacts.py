"""On-disk formats of the pipeline's models: `<name>.safetensors` + `config.json` in a folder.

A frozen tokenizer (`gear freeze`) is what `gear tokenize`, `gear train-ar`, `gear sample`,
`gear evaluate` and the Python API load by path:

    from gear.artifacts import load_tokenizer
    tok = load_tokenizer("models/frozen/gear")      # eval mode, frozen
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gear.io import ArtifactError, load_tensors, read_json, save_tensors, write_json


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
