"""Load public tokenizer checkpoints and our own into a `Tokenizer`, strictly.

Each architecture's modules carry its public checkpoints' names (gear/models/tokenizer.py ARCHS):
vq16 LlamaGen's (`vq_ds16_c2i.pt`, the release's `vq-with-gan.pt` / `gear-vq.pt`), lfq16
Open-MAGVIT2's (`pretrain256_16384.ckpt`, `lfq-with-gan.pt` / `gear-lfq.pt`), ibq16 the IBQ
release's VQGAN layout (`IBQ_pretrain_16384.ckpt`, `ibq-with-gan.pt` / `gear-ibq.pt`). So the
conversion is: unwrap the checkpoint dict, take a Lightning file's EMA weights, strip wrapper
prefixes (DDP `module.`, torch.compile `_orig_mod.`), drop LlamaGen's usage-tracking buffer
`quantize.codebook_used` (not a weight), refuse a file of another architecture in one line naming
both, then check the result key by key and shape by shape against the model.

Checkpoint wrappings recognised (first present wins, or the entry named by tokenizer.init_key):
  {"vq_ema": sd, "vq": sd, ...}   the GEAR release's stage-0/1 files: tokenizer EMA, then raw. Its
                                  stage-1 files also hold the *AR's* EMA under "ema", which is
                                  why vq_ema / vq are looked at first;
  {"ema": sd} / {"model": sd} / {"state_dict": sd}   LlamaGen (vq_ds16_c2i.pt) and others;
  {"state_dict": {..., "model_ema.<name without dots>": ...}}   the Lightning originals of
                                  Open-MAGVIT2 and IBQ: their LitEma weights load (what their own
                                  inference and the release's loader use), under the live names;
                                  the training-only entries (loss.*: discriminator, LPIPS) drop.
An entry that does not hold a tokenizer (no encoder./decoder. tensors) is refused in one line.
Files are read with torch.load(weights_only=True) or safetensors: loading never runs code.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from gear.io import ArtifactError

WRAPPER_KEYS = ("vq_ema", "vq", "ema", "model", "state_dict")  # tokenizer EMA first, then raw
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
NON_WEIGHTS = ("quantize.codebook_used",)           # LlamaGen's rolling usage log
TOKENIZER_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")
EMA_PREFIX = "model_ema."                          # Lightning's LitEma: names without their dots
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")


def load_checkpoint(path: str | Path, what: str) -> Mapping:
    """The top-level object of a .pt/.pth/.ckpt/.bin (weights_only: no code runs) or .safetensors file;
    every way it can fail is an ArtifactError with one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # a pickle renamed .safetensors, a truncated file, ...
            raise ArtifactError(f"{what} {path} is not a readable safetensors file "
                                f"({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # e.g. a training checkpoint that pickles argparse args, or code
        first = str(e).strip().splitlines()[0][:200]
        raise ArtifactError(f"{what} {path} holds non-tensor objects, refused unread ({first}); re-save only "
                            f"its state dict, e.g. torch.save(torch.load(p, weights_only=False)['model'], "
                            f"new_p), if you trust the file") from None
    except Exception as e:  # truncated zip, not a torch file at all
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ArtifactError(f"{what} {path} is unreadable or truncated ({type(e).__name__}: {first})") from None
    if not isinstance(obj, Mapping):
        raise ArtifactError(f"{what} {path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def unwrap(source: Mapping, key: str | None, wrapper_keys: tuple[str, ...], what: str,
           param: str) -> tuple[dict, str | None]:
    """(the state dict inside a checkpoint dict, the entry it came from): `key` when given, else
    the first of wrapper_keys that holds a dict, else the dict itself."""
    if key is not None:
        if key not in source or not isinstance(source[key], Mapping):
            raise ArtifactError(f"{param} = {key!r}: the {what} has no dict entry {key!r} "
                                f"(top-level keys: {', '.join(map(str, sorted(source)[:8]))})")
        return dict(source[key]), key
    for k in wrapper_keys:
        if isinstance(source.get(k), Mapping):
            return dict(source[k]), k
    return dict(source), None


def read_state_dict(source: str | Path | Mapping, key: str | None = None) -> dict[str, Tensor]:
    """A flat name -> tensor dict of a tokenizer from a path (.pt/.pth/.ckpt/.bin or .safetensors) or a
    loaded mapping, unwrapped as the module doc says; a dict that is no tokenizer is refused."""
    where = str(source) if isinstance(source, (str, Path)) else "checkpoint dict"
    if isinstance(source, (str, Path)):
        source = load_checkpoint(source, "tokenizer checkpoint")
    if not isinstance(source, Mapping):
        raise ArtifactError(f"tokenizer checkpoint must be a dict, got {type(source).__name__}")
    sd, entry = unwrap(source, key, WRAPPER_KEYS, "tokenizer checkpoint", "tokenizer.init_key")
    if any(str(k).startswith(EMA_PREFIX) for k in sd):
        sd = lightning_ema_weights(sd, where)
    names = [strip_prefixes(k) for k in sd]
    if not any(n.startswith("encoder.") for n in names) or not any(n.startswith("decoder.") for n in names):
        inside = f"entry {entry!r} of {where}" if entry else where
        raise ArtifactError(f"{inside} holds no tokenizer (no encoder./decoder. tensors; first keys: "
                            f"{', '.join(map(str, names[:3]))}); name the right entry with tokenizer.init_key "
                            f"(top-level keys: {', '.join(map(str, sorted(source)[:8]))})")
    return sd


def lightning_ema_weights(sd: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    """The tokenizer tensors of a Lightning state dict, each the LitEma shadow of its live entry
    (stored as `model_ema.` + the name without dots) where one exists: parameters have one,
    buffers do not and load live. Other entries (loss.*, the EMA's own counters) are dropped."""
    live = [k for k in sd if not k.startswith(EMA_PREFIX) and k.startswith(TOKENIZER_PARTS)]
    flat: dict[str, str] = {}
    for k in live:
        other = flat.setdefault(k.replace(".", ""), k)
        if other != k:  # two names that LitEma would store alike: which one a shadow is is unknowable
            raise ArtifactError(f"{where}: the EMA names of {other} and {k} collide; save the state dict "
                                f"you want without model_ema.* entries")
    shadows = {k[len(EMA_PREFIX):]: v for k, v in sd.items() if k.startswith(EMA_PREFIX) and k not in EMA_BOOKKEEPING}
    if not any(f in shadows for f in flat):
        raise ArtifactError(f"{where} has model_ema.* entries but none for its tokenizer tensors "
                            f"({', '.join(live[:2]) or 'none'})")
    return {k: shadows.get(f, sd[k]) for f, k in flat.items()}


def strip_prefixes(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def describe_tokenizer(sd: Mapping[str, Tensor]) -> str:
    """The params a tokenizer state dict was built with, as far as its shapes tell (best effort)."""
    from gear.models.tokenizer import arch_of_state_dict

    try:
        shape = {k: tuple(v.shape) for k, v in sd.items()}
        arch = arch_of_state_dict(shape)
        # (encoder levels, res blocks of a level) by layout; decoder level 0 is the top one in lfq16 / ibq16
        enc, dec, res = (("conv_blocks", "conv_blocks", "res") if arch == "vq16" else ("down", "up", "block"))
        ch = shape["encoder.conv_in.weight"][0]
        levels = sorted({int(k.split(".")[2]) for k in shape if k.startswith(f"encoder.{enc}.")})
        mult = [shape[f"encoder.{enc}.{i}.{res}.0.conv2.weight"][0] // ch for i in levels]
        def blocks(part, tree):
            return len({k.split(".")[4] for k in shape if k.startswith(f"{part}.{tree}.0.{res}.")})
        z, emb = shape["encoder.conv_out.weight"][0], shape.get("quantize.embedding.weight")
        if emb is None:
            code = shape["quant_conv.weight"][0] if "quant_conv.weight" in shape else z
            quant = f"quantizer=lfq tokenizer.codebook_size={2 ** code}"
        else:
            kind = "ibq" if emb[1] == z else "vq"
            quant = f"quantizer={kind} tokenizer.codebook_size={emb[0]}" + ("" if kind == "ibq" else f" tokenizer.code_dim={emb[1]}")
        return (f"{quant} tokenizer.ch={ch} tokenizer.ch_mult=[{','.join(map(str, mult))}] "
                f"tokenizer.enc_res_blocks={blocks('encoder', enc)} tokenizer.dec_res_blocks={blocks('decoder', dec)} "
                f"tokenizer.z_channels={z} tokenizer.arch={arch}")
    except (KeyError, IndexError, ValueError, ZeroDivisionError):
        return "a config that could not be read from its shapes"


def convert_state_dict(sd: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename to our layout and check it matches `model` exactly; raise a one-line ArtifactError
    naming the first mismatching tensor and the params the checkpoint would fit otherwise."""
    out = {strip_prefixes(k): v for k, v in sd.items()}
    out = {k: v for k, v in out.items() if k not in NON_WEIGHTS}
    check_arch(out, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in out]
    unexpected = [k for k in out if k not in expected]
    wrong = [k for k, v in expected.items() if k in out and tuple(out[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or wrong):
        return out
    first = next(k for k in [*expected, *unexpected] if k in missing or k in wrong or k in unexpected)
    if first in wrong:
        what = f"{first} {tuple(out[first].shape)} vs model {tuple(expected[first].shape)}"
    else:
        what = f"{first} ({'missing' if first in missing else 'unexpected'})"
    raise ArtifactError(f"tokenizer state dict does not fit the tokenizer params: first mismatch {what}; "
                        f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                        f"{len(wrong)} shape mismatch {wrong[:3]}; it fits {describe_tokenizer(out)}")


def check_arch(sd: Mapping[str, Tensor], model: nn.Module) -> None:
    """A state dict in another architecture's layout is refused in one line naming both."""
    from gear.models.tokenizer import ARCHS, arch_of_state_dict

    want = getattr(getattr(model, "config", None), "arch", None)
    have = arch_of_state_dict(sd)
    if want in ARCHS and have is not None and have != want:
        quantizers = ARCHS[have].quantizers
        hint = f" and quantizer: {quantizers[0]}" if len(quantizers) == 1 else ""
        raise ArtifactError(f"tokenizer checkpoint is a {have} tokenizer ({ARCHS[have].title} layout) but "
                            f"tokenizer.arch = {want} ({ARCHS[want].title} layout); set tokenizer.arch: {have}{hint}")


def load_tokenizer_state(model: nn.Module, state_dict_or_path: str | Path | Mapping,
                         key: str | None = None) -> nn.Module:
    """Load a LlamaGen-layout, GEAR-release or our-layout tokenizer state dict into `model` (strict)."""
    sd = convert_state_dict(read_state_dict(state_dict_or_path, key), model)
    model.load_state_dict(sd, strict=True)
    return model
