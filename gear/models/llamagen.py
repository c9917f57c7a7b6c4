"""Load LlamaGen tokenizer checkpoints (e.g. `vq_ds16_c2i.pt`) and our own into a `Tokenizer`.

Our modules carry LlamaGen's names (encoder.conv_blocks.N.res.M.conv1, encoder.mid.1.q,
quantize.embedding.weight, quant_conv, post_quant_conv, decoder...), so the conversion is:
unwrap the checkpoint dict, strip wrapper prefixes (DDP `module.`, torch.compile `_orig_mod.`),
drop LlamaGen's usage-tracking buffer `quantize.codebook_used` (not a weight), then check the
result key by key and shape by shape against the model.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from torch import Tensor

WRAPPER_KEYS = ("ema", "model", "state_dict")       # LlamaGen prefers ema when present
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
NON_WEIGHTS = ("quantize.codebook_used",)           # LlamaGen's rolling usage log


def read_state_dict(source: str | Path | Mapping, key: str | None = None) -> dict[str, Tensor]:
    """A flat name -> tensor dict from a path (.pt/.pth/.bin or .safetensors) or a loaded mapping.

    Checkpoint dicts are unwrapped through `key` if given, else the first of ema / model /
    state_dict present (LlamaGen stores {"model": sd})."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer checkpoint {path} not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            source = load_file(str(path))
        else:
            try:
                source = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:  # e.g. a training checkpoint that pickles argparse args
                first = str(e).strip().splitlines()[0]
                raise RuntimeError(f"{path} holds non-tensor objects ({first}); re-save only its state "
                                   f"dict, e.g. torch.save(torch.load(p, weights_only=False)['model'], new_p)") from None
    if not isinstance(source, Mapping):
        raise ValueError(f"tokenizer checkpoint must be a dict, got {type(source).__name__}")
    if key is not None:
        if key not in source:
            raise KeyError(f"tokenizer checkpoint has no entry {key!r}; top-level keys: {sorted(source)[:8]}")
        source = source[key]
    else:
        for k in WRAPPER_KEYS:
            if isinstance(source.get(k), Mapping):
                source = source[k]
                break
    return dict(source)


def convert_state_dict(sd: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename to our layout and check it matches `model` exactly; raise a one-line error otherwise."""
    out = {}
    for name, value in sd.items():
        for prefix in WRAPPER_PREFIXES:
            while name.startswith(prefix):
                name = name[len(prefix):]
        if name not in NON_WEIGHTS:
            out[name] = value
    expected = model.state_dict()
    missing = [k for k in expected if k not in out]
    unexpected = [k for k in out if k not in expected]
    if missing or unexpected:
        raise RuntimeError(f"tokenizer state dict does not match the model: {len(missing)} missing "
                           f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    wrong = [f"{k} {tuple(out[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
             if tuple(out[k].shape) != tuple(v.shape)]
    if wrong:
        raise RuntimeError(f"tokenizer state dict shape mismatch ({len(wrong)}): {'; '.join(wrong[:3])}")
    return out


def load_tokenizer_state(model: nn.Module, state_dict_or_path: str | Path | Mapping,
                         key: str | None = None) -> nn.Module:
    """Load a LlamaGen-layout or our-layout tokenizer state dict into `model` (strict)."""
    sd = convert_state_dict(read_state_dict(state_dict_or_path, key), model)
    model.load_state_dict(sd, strict=True)
    return model
