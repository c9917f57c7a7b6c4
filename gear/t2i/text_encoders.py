"""Frozen text encoders: per-token caption features, the prefix the T2I AR is conditioned on.

    enc = load_text_encoder(params, device)
    [(emb, truncated), ...] = enc.encode(captions)   # emb float32 (n, enc.dim), 1 <= n <= enc.max_len
    x, mask = pad_left([emb, ...], enc.max_len)     # (B, max_len, dim) float32, (B, max_len) bool

Registry (params.t2i.text.encoder, names = gear.config.TEXT_ENCODERS):
  demo         nothing to download: each lowercase word [a-z0-9]+ maps to a fixed pseudo-random
               unit vector (seeded by the sha256 of the word) plus a sinusoidal code of its position
               (so word order is visible), renormalized; t2i.text.demo_dim wide. Exact, any machine.
  qwen3_1.7b   Qwen/Qwen3-1.7B (transformers AutoModel): the last hidden state of every token.
  flan_t5_xl   google/flan-t5-xl (transformers T5EncoderModel): last_hidden_state, LlamaGen's choice.
  clip_vitb16  the open_clip text tower of the teacher registry's clip_vitb16 (gear/teachers.py):
               the tokens after ln_final, from the start token up to and including the end token.

A caption becomes the valid (non-pad) tokens of the encoder's own tokenization, special tokens
included (T5's </s>, CLIP's start / end tokens; Qwen adds none, and an empty caption gets one end
token so that n >= 1). Longer than max_len positions: it is cut by the tokenizer's own truncation,
which keeps the special tokens (CLIP's last position becomes its end token, as open_clip does), and
flagged truncated. Hub models run in fp32 on CPU, in bf16 on GPU when params.compute.precision is
bf16; features come back float32.

Weights (params.t2i.text.weights): null = the registry's hub id, read from the Hugging Face cache
(downloaded when online); else a local path (transformers: a save_pretrained folder holding the
tokenizer too; open_clip: a checkpoint file, or a folder with open_clip_config.json) or another hub
id of the same family. Weights that cannot be had (offline or hub unreachable, and not cached)
fail at once with one line, never the hub client's ~45 s retry loop. `fingerprint(params)` names
the weights without loading them: caption embeddings record it, so a change of encoder is caught.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from gear.config import TEXT_ENCODERS
from gear import hub
from gear.io import ArtifactError
from gear.teachers import HUB_TEACHERS, bf16_helps


@dataclass(frozen=True)
class TextSpec:
    library: str    # transformers | open_clip
    arch: str       # transformers model class | open_clip model name
    tag: str        # open_clip pretrained tag
    hub_id: str     # Hugging Face repo of the weights
    files: tuple    # weight files in that repo (any one cached is enough; an index needs its shards)
    local: str      # what a local copy is, for messages


# a sharded checkpoint is cached only with its index and every shard it lists
_HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_CLIP = HUB_TEACHERS["clip_vitb16"]  # one CLIP for both registries: one download serves the teacher and the text

HUB_TEXT_ENCODERS = {
    "qwen3_1.7b": TextSpec("transformers", "AutoModel", "", "Qwen/Qwen3-1.7B", _HF_FILES, "save_pretrained-folder"),
    "flan_t5_xl": TextSpec("transformers", "T5EncoderModel", "", "google/flan-t5-xl", _HF_FILES,
                           "save_pretrained-folder"),
    "clip_vitb16": TextSpec("open_clip", _CLIP.arch, _CLIP.tag, _CLIP.hub_id, _CLIP.files, _CLIP.files[0]),
}
assert set(TEXT_ENCODERS) == {"demo", *HUB_TEXT_ENCODERS}, "gear.config.TEXT_ENCODERS and this registry disagree"


# ----------------------------------------------------------------------------------------------
# weights: where they come from, checked in well under a second


def _in_hub_cache(spec: TextSpec, hub_id: str) -> bool:
    """Config, tokenizer config and a complete set of weight files of `hub_id` are cached."""
    if spec.library == "transformers":
        needs = ("config.json", "tokenizer_config.json")
    else:  # open_clip knows the registry's own architecture; another repo brings its config
        needs = () if hub_id == spec.hub_id else ("open_clip_config.json",)
    if not all(hub.cached(hub_id, f) for f in needs):
        return False
    for f in spec.files:
        path = hub.cached(hub_id, f)
        if path and f.endswith(".index.json"):
            try:
                shards = set(json.loads(Path(path).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError):
                continue
            if all(hub.cached(hub_id, s) for s in shards):
                return True
        elif path:
            return True
    return False


def _looks_local(weights: str) -> bool:
    """A path (exists, or written like one) rather than a hub id `org/name`."""
    return (Path(weights).expanduser().exists() or weights.startswith(("/", ".", "~"))
            or not re.fullmatch(r"[\w.-]+/[\w.-]+", weights))


def fingerprint(params) -> dict:
    """What identifies the encoder's output (no loading): name and weights source; demo: its dim."""
    t = params.t2i.text
    if t.encoder == "demo":
        return {"name": "demo", "source": "demo", "dim": t.demo_dim}
    spec = HUB_TEXT_ENCODERS[t.encoder]
    if not t.weights:
        return {"name": t.encoder, "source": spec.hub_id}
    return {"name": t.encoder, "source": str(Path(t.weights).expanduser()) if _looks_local(t.weights) else t.weights}


def resolve_weights(params) -> tuple[str, str]:
    """("local", path) or ("hub", hub id) of the encoder's weights; ArtifactError at once when the
    local path is not a usable copy, or the hub id is neither cached nor downloadable now."""
    t = params.t2i.text
    name, spec = t.encoder, HUB_TEXT_ENCODERS[t.encoder]
    if t.weights and _looks_local(t.weights):
        path = Path(t.weights).expanduser()
        if spec.library == "transformers":
            for f in ("config.json", "tokenizer_config.json"):
                if not (path / f).is_file():
                    raise ArtifactError(f"text encoder {name}: t2i.text.weights {path} is not a save_pretrained folder "
                                        f"with its tokenizer (no {f})")
        elif path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise ArtifactError(f"text encoder {name}: t2i.text.weights folder {path} has no open_clip_config.json")
        elif not path.is_file():
            raise ArtifactError(f"text encoder {name}: t2i.text.weights file {path} not found")
        return "local", str(path)
    hub_id = t.weights or spec.hub_id
    why = hub.not_served(_in_hub_cache(spec, hub_id))
    if why is None:
        return "hub", hub_id
    raise ArtifactError(f"text encoder {name}: weights for hub id {hub_id} are not in the Hugging Face cache and "
                        f"{why}; download them once (huggingface-cli download {hub_id}) or pass a local copy: "
                        f"--set t2i.text.weights=/path/to/{spec.local}")


def unavailable(params) -> str | None:
    """Why the encoder of params cannot be loaded here (its library or its weights), or None.
    Quick: no download is tried, no library imported."""
    name = params.t2i.text.encoder
    if name == "demo":
        return None
    return hub.unavailable(f"text encoder {name}", HUB_TEXT_ENCODERS[name].library, lambda: resolve_weights(params),
                           ArtifactError)


# ----------------------------------------------------------------------------------------------
# the encoders


class TextEncoder:
    """Subclasses implement `_encode(captions) -> [(float32 (n, dim), n_full)]` with n <= max_len,
    n_full the caption's untruncated length in positions."""

    def __init__(self, name: str, dim: int, max_len: int, fingerprint: dict):
        self.name, self.dim, self.max_len, self.fingerprint = name, dim, max_len, fingerprint

    def _encode(self, captions: list[str]) -> list[tuple[np.ndarray, int]]:
        raise NotImplementedError

    def encode(self, captions: list[str]) -> list[tuple[np.ndarray, bool]]:
        """[(features float32 (n_i, dim), truncated)] with 1 <= n_i <= max_len, one per caption."""
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not one string")
        out = []
        for emb, n_full in self._encode(list(captions)):
            if not 1 <= len(emb) <= self.max_len or emb.shape[1:] != (self.dim,):
                raise RuntimeError(f"text encoder {self.name}: got features {emb.shape} for max_len {self.max_len}")
            out.append((np.ascontiguousarray(emb, np.float32), n_full > len(emb)))
        return out


@lru_cache(maxsize=65536)
def _word_vector(word: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


def _positions(n: int, dim: int) -> np.ndarray:
    """Sinusoidal position codes (n, dim), each of unit norm."""
    freq = 10000.0 ** (-np.arange(dim // 2 + dim % 2) * 2 / dim)
    angle = np.arange(n)[:, None] * freq[None]
    pe = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)[:, :dim]
    return pe / np.linalg.norm(pe, axis=1, keepdims=True)


class DemoEncoder(TextEncoder):
    """Hashed words + positions: captions that share words share directions, and order shows."""

    POSITION_WEIGHT = 0.5  # the word dominates; its position is still plainly visible

    def _encode(self, captions):
        out = []
        for caption in captions:
            words = re.findall(r"[a-z0-9]+", caption.lower()) or [""]  # no words: one "empty word" row
            kept = words[:self.max_len]
            x = np.stack([_word_vector(w, self.dim) for w in kept])
            x = x + self.POSITION_WEIGHT * _positions(len(kept), self.dim)
            out.append((x / np.linalg.norm(x, axis=1, keepdims=True), len(words)))
        return out


def _half(device: torch.device, params) -> bool:
    return device.type == "cuda" and params.compute.precision == "bf16" and bf16_helps(device)


class TransformersEncoder(TextEncoder):
    """A transformers encoder or decoder-only LM: the last hidden state of the valid tokens."""

    def __init__(self, name, model, tokenizer, max_len, fingerprint):
        super().__init__(name, model.config.hidden_size, max_len, fingerprint)
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        self.end_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else self.pad_id

    def _ids(self, caption: str) -> tuple[list[int], int]:
        ids = self.tokenizer(caption)["input_ids"]
        n_full = len(ids)
        if n_full > self.max_len:  # the tokenizer's own truncation keeps the special tokens (T5's </s>)
            ids = self.tokenizer(caption, truncation=True, max_length=self.max_len)["input_ids"]
        return (ids or [self.end_id]), max(n_full, 1)

    @torch.no_grad()
    def _encode(self, captions):
        tokenized = [self._ids(c) for c in captions]
        width = max(len(ids) for ids, _ in tokenized)
        device = next(self.model.parameters()).device
        ids = torch.full((len(captions), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(captions), width), dtype=torch.long)
        for b, (row, _) in enumerate(tokenized):  # right padding: causal or not, pads only come after
            ids[b, :len(row)] = torch.tensor(row)
            mask[b, :len(row)] = 1
        h = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        h = h.float().cpu().numpy()
        return [(h[b, :len(row)], n_full) for b, (row, n_full) in enumerate(tokenized)]


class OpenClipTextEncoder(TextEncoder):
    """open_clip's text tower, per token: token + position embeddings, the causal transformer,
    ln_final (no pooling, no projection). Positions: min(max_len, the model's context)."""

    def __init__(self, name, model, tokenizer, max_len, fingerprint, half: bool = False):
        super().__init__(name, model.transformer.width, max_len, fingerprint)
        for attr in ("sot_token_id", "eot_token_id", "encode"):
            if not hasattr(tokenizer, attr):
                raise ArtifactError(f"text encoder {name}: {type(tokenizer).__name__} is not a CLIP BPE tokenizer")
        model.visual = None  # the image tower is not needed
        self.model, self.tokenizer, self.half = model.eval().requires_grad_(False), tokenizer, half
        self.positions = min(max_len, model.context_length)

    def _ids(self, caption: str) -> tuple[list[int], int]:
        t = self.tokenizer
        ids = [t.sot_token_id, *t.encode(caption), t.eot_token_id]
        n_full = len(ids)
        if n_full > self.positions:  # as open_clip truncates: the last kept position is the end token
            ids = ids[:self.positions - 1] + [t.eot_token_id]
        return ids, n_full

    @torch.no_grad()
    def _encode(self, captions):
        m = self.model
        tokenized = [self._ids(c) for c in captions]
        width = max(len(ids) for ids, _ in tokenized)
        device = m.positional_embedding.device
        ids = torch.zeros((len(captions), width), dtype=torch.long)
        for b, (row, _) in enumerate(tokenized):
            ids[b, :len(row)] = torch.tensor(row)
        ids = ids.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.half):
            cast = m.transformer.get_cast_dtype()
            x = m.token_embedding(ids).to(cast) + m.positional_embedding[:width].to(cast)
            x = m.transformer(x, attn_mask=m.attn_mask[:width, :width])  # causal: pads after the end token are unseen
            x = m.ln_final(x)
        h = x.float().cpu().numpy()
        return [(h[b, :len(row)], n_full) for b, (row, n_full) in enumerate(tokenized)]


# ----------------------------------------------------------------------------------------------
# loading


def _load_transformers(params, spec: TextSpec, source: str, device: torch.device, fp: dict) -> TextEncoder:
    import transformers

    dtype = torch.bfloat16 if _half(device, params) else torch.float32
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    model = getattr(transformers, spec.arch).from_pretrained(source, dtype=dtype).to(device)
    return TransformersEncoder(params.t2i.text.encoder, model, tokenizer, params.t2i.text.max_len, fp)


def _load_open_clip(params, spec: TextSpec, kind: str, source: str, device: torch.device, fp: dict) -> TextEncoder:
    import open_clip

    if kind == "hub" and source == spec.hub_id:
        model_name, pretrained = spec.arch, spec.tag  # the tag's own checkpoint, known to open_clip
    elif kind == "hub":
        model_name, pretrained = f"hf-hub:{source}", None
    elif Path(source).is_dir():
        model_name, pretrained = f"local-dir:{source}", None
    else:
        model_name, pretrained = spec.arch, source
    model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    return OpenClipTextEncoder(params.t2i.text.encoder, model, tokenizer, params.t2i.text.max_len, fp,
                               half=_half(device, params))


def load_text_encoder(params, device: torch.device | str = "cpu") -> TextEncoder:
    """The frozen text encoder of params.t2i.text on `device`; weights are checked before any
    library is imported (one-line ArtifactError when they cannot be had)."""
    t, device = params.t2i.text, torch.device(device)
    if t.encoder not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {t.encoder!r}; known: {', '.join(TEXT_ENCODERS)}")
    fp = fingerprint(params)
    if t.encoder == "demo":
        return DemoEncoder("demo", t.demo_dim, t.max_len, fp)
    spec = HUB_TEXT_ENCODERS[t.encoder]
    if importlib.util.find_spec(spec.library) is None:
        raise ArtifactError(f"text encoder {t.encoder} needs the {spec.library} package (pip install {spec.library})")
    kind, source = resolve_weights(params)
    if spec.library == "transformers":
        return _load_transformers(params, spec, source, device, fp)
    return _load_open_clip(params, spec, kind, source, device, fp)


def pad_left(embs: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack (n_i, D) features into (B, max_len, D) float32 with the valid rows at the END (left
    padding, as LlamaGen does: the last prefix position, next to the image tokens, is always a
    caption token) and mask (B, max_len) bool, False on the zero pads."""
    if not len(embs):
        raise ValueError("pad_left needs at least one embedding (the feature dim comes from them)")
    dim = embs[0].shape[1]
    x = np.zeros((len(embs), max_len, dim), np.float32)
    mask = np.zeros((len(embs), max_len), bool)
    for b, e in enumerate(embs):
        n = len(e)
        if e.ndim != 2 or e.shape[1] != dim or not 1 <= n <= max_len:
            raise ValueError(f"pad_left: embedding {b} has shape {e.shape}; need (1..{max_len}, {dim})")
        x[b, max_len - n:] = e
        mask[b, max_len - n:] = True
    return x, mask
