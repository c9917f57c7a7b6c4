"""What the room's stages hand each other, with its one checked reader: the shards' decode hooks
(gear/data/loader.py), their manifests (pairs, caption embeddings, tokens), the held-out prompts,
the caption-conditioned AR and the judge. The class-conditional room's are in gear/artifacts.py.

Every T2I shard set is read by glob pattern (`<folder>/{split}-*.tar`): the loader's index, exact
resume and DDP lockstep are the class-conditional ones. A sample's caption embedding `emb.npy`
is stored unpadded (n, D) float16; decoding left-pads it to the model's text_len (valid
positions at the end) and returns its mask.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from gear import paths as main_paths
from gear.artifacts import frozen_tokenizer, load_ar, load_weights, read_config
from gear.config import ParamsError
from gear.data.loader import decode_image, to_tensor
from gear.data.shard import DataError
from gear.io import ArtifactError, read_json, reading, sha256_file
from gear.models.ar import GPT
from gear.models.judge import ARCH, Judge
from gear.study import resolve_seed
from gear.t2i import paths
from gear.t2i.text_encoders import fingerprint

TOKENS_MANIFEST = "manifest.json"
PAIRS_FORMAT = "gear-t2i-pairs"


def pattern(folder: Path) -> str:
    return str(Path(folder) / "{split}-*.tar")


def shards_digest(manifest: dict) -> str:
    """sha256 over every shard's sha256, split by split: identifies a shard set's exact bytes."""
    shas = [s["sha256"] for split in sorted(manifest["splits"]) for s in manifest["splits"][split]["shards"]]
    return hashlib.sha256("".join(shas).encode()).hexdigest()


def read_pairs_manifest() -> dict:
    """The manifest `gear t2i-shard` writes (t2i/data/shards/manifest.json), checked to be one."""
    path = paths.manifest()
    if not path.is_file():
        raise DataError(f"no image-caption pairs: {path} not found; run `gear t2i-shard` first")
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON; run `gear t2i-shard` again") from None
    if not isinstance(man, dict) or man.get("format") != PAIRS_FORMAT or not isinstance(man.get("splits"), dict):
        raise DataError(f"{path} is not a {PAIRS_FORMAT} manifest; run `gear t2i-shard` again")
    return man


def caption(sample: dict, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding (text_len, D) float32 left-padded, mask (text_len,) bool) of a sample."""
    emb = np.load(io.BytesIO(sample["emb.npy"])).astype(np.float32)
    if emb.ndim != 2 or not 1 <= len(emb) <= text_len:
        raise ValueError(f"sample {sample.get('__key__')}: caption embedding of shape {emb.shape} does not fit "
                         f"{text_len} text positions")
    out = np.zeros((text_len, emb.shape[1]), dtype=np.float32)
    out[text_len - len(emb):] = emb
    mask = np.zeros(text_len, dtype=bool)
    mask[text_len - len(emb):] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


class TokenSample:
    """(image (3, H, W) in [-1, 1], tokens (L,) int64, caption (P, D), mask (P,)) of a token-shard
    sample. No augmentation: a flip would contradict captions that say left and right."""

    def __init__(self, text_len: int):
        self.text_len = text_len

    def __call__(self, sample: dict, rng) -> tuple:
        tokens = np.load(io.BytesIO(sample["tokens.npy"])).reshape(-1).astype(np.int64)
        return (to_tensor(decode_image(sample)), torch.from_numpy(tokens), *caption(sample, self.text_len))


def read_tokens_manifest(folder: Path, tokenizer_sha256: str, captions_digest: str, hint: str) -> dict:
    """The manifest of a token-shard folder, checked against the frozen tokenizer and the caption
    shards it was made from (stale tokens are an error naming the command that remakes them)."""
    path = Path(folder) / TOKENS_MANIFEST
    if not path.is_file():
        raise ArtifactError(f"T2I token shards {path} not found; run `{hint}` first")
    man = read_json(path, "T2I token-shard manifest")
    if man.get("tokenizer_sha256") != tokenizer_sha256:
        raise ArtifactError(f"T2I token shards {folder} are stale (the frozen tokenizer changed); rerun `{hint}`")
    if man.get("captions_digest") != captions_digest:
        raise ArtifactError(f"T2I token shards {folder} are stale (the caption shards changed); rerun `{hint}`")
    return man


# ---- arms and their seeds --------------------------------------------------------------------------

def check_arm(arm: str) -> None:
    if arm not in paths.ARMS:
        raise ParamsError(f"--arm {arm!r}: must be one of {', '.join(paths.ARMS)}")


def arm_seed(params, arm: str, seed: int | None) -> int | None:
    """The seed of arm A's tokens: None for the shared baseline tokenizer."""
    return resolve_seed(params, seed) if main_paths.tokenizer_seeded(arm) else None


def hint(arm: str, seed: int | None) -> str:
    return f"gear t2i-tokenize --arm {arm}" + (f" --seed {seed}" if seed is not None else "")


# ---- caption embeddings and prompts (`gear t2i-encode`) ---------------------------------------------

CAPTIONS_FORMAT = "gear-t2i-captions"
CAPTIONS_MANIFEST = "manifest.json"
RERUN_ENCODE = "rerun `gear t2i-encode`"


def read_captions_manifest(params) -> dict:
    """The caption-shard manifest, checked against the current pairs and prompts, the encoder of
    params (name, weights, demo dim) and t2i.text.max_len: a clear error when missing or stale."""
    folder = paths.CAPTIONS_DIR
    path = folder / CAPTIONS_MANIFEST
    if not path.is_file():
        raise ArtifactError(f"caption embeddings {path} not found; run `gear t2i-encode` first")
    man = read_json(path, "caption-shard manifest")
    if man.get("format") != CAPTIONS_FORMAT:
        raise ArtifactError(f"{path} is not a {CAPTIONS_FORMAT} manifest; {RERUN_ENCODE}")
    pairs, want = read_pairs_manifest(), fingerprint(params)
    stale = None
    if man.get("pairs_sha256") != shards_digest(pairs):
        stale = f"the image-caption pairs in {paths.SHARD_DIR} changed"
    elif not paths.prompts_file().is_file() or man.get("prompts_sha256") != sha256_file(paths.prompts_file()):
        stale = f"the held-out prompts {paths.prompts_file()} changed"
    elif man.get("encoder") != want:
        stale = f"encoded with {_describe(man.get('encoder'))}, params give {_describe(want)}"
    elif man.get("max_len") != params.t2i.text.max_len:
        stale = f"encoded with t2i.text.max_len={man.get('max_len')}, params give {params.t2i.text.max_len}"
    else:
        for info in man["splits"].values():
            for s in info["shards"]:
                f = folder / s["name"]
                if not f.is_file() or f.stat().st_size != s["bytes"]:
                    stale = f"shard {f} is missing or changed"
        if not (folder / "prompts.npz").is_file():
            stale = f"{folder / 'prompts.npz'} is missing"
    if stale:
        raise ArtifactError(f"caption embeddings in {folder} are stale ({stale}); {RERUN_ENCODE}")
    return man


def _describe(fp) -> str:
    if not isinstance(fp, dict):
        return repr(fp)
    return " ".join(f"{k}={v}" for k, v in fp.items())


def read_prompts(params) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """(prompts [{caption, attributes}], embeddings (n, P, D), masks (n, P)) of the first
    t2i.sample.prompts held-out prompts, as t2i-encode stored them."""
    folder = paths.CAPTIONS_DIR
    lines_path, npz_path = folder / "prompts.jsonl", folder / "prompts.npz"
    for p in (lines_path, npz_path):
        if not p.is_file():
            raise ArtifactError(f"held-out prompts {p} not found; run `gear t2i-encode` first")
    with reading(lines_path, "held-out prompts"):
        prompts = [json.loads(line) for line in lines_path.read_text().splitlines() if line.strip()]
    with reading(npz_path, "held-out prompt embeddings"), np.load(npz_path) as f:
        emb, mask = f["emb"], f["mask"]
    if len(emb) != len(prompts):
        raise ArtifactError(f"{npz_path} holds {len(emb)} prompts but {lines_path} lists {len(prompts)}; rerun `gear t2i-encode`")
    n = params.t2i.sample.prompts
    if n > len(prompts):
        raise ParamsError(f"t2i.sample.prompts = {n}: the prompt file {lines_path} has only {len(prompts)}")
    return prompts[:n], torch.from_numpy(emb[:n].astype(np.float32)), torch.from_numpy(mask[:n])


# ---- token shards (`gear t2i-tokenize`) and the AR (`gear t2i-train`) -------------------------------

def tokens_manifest(params, arm: str, seed: int | None) -> dict:
    """The arm's token manifest, checked against its frozen tokenizer and the caption shards."""
    _, sha = frozen_tokenizer(params, arm, seed)
    return read_tokens_manifest(paths.tokens_dir(arm, seed), sha, shards_digest(read_captions_manifest(params)),
                                hint(arm, seed))


def snapshot_name(step: int) -> str:
    return f"ema_step{step}"


def load_t2i(directory: str | Path, device="cpu", name: str = "ar") -> tuple[GPT, dict]:
    """(caption-conditioned AR in eval mode, frozen; its config.json) from a folder written by
    t2i-train. name: `ar` (final EMA), `ar_raw` or `ema_step<S>`. The config sits under
    "t2i_gpt" (the seed's T2IConfig fields, which GPTConfig reads as a caption condition)."""
    model, cfg = load_ar(directory, device, name, key="t2i_gpt", what="T2I AR")
    if model.cfg.condition != "caption":
        raise ArtifactError(f"{directory}/config.json: t2i_gpt is not a caption-conditioned AR")
    return model, cfg


def check_trained_on(params, arm: str, seed: int) -> dict:
    """The AR folder's config, checked to be trained on the arm's current frozen tokenizer."""
    tok_seed = arm_seed(params, arm, seed)
    cfg = read_config(paths.ar_dir(arm, seed), "T2I AR")
    sha = sha256_file(main_paths.frozen_dir(arm, tok_seed) / "tokenizer.safetensors")
    if cfg.get("tokenizer_sha256") != sha:
        raise ArtifactError(f"T2I AR {paths.ar_dir(arm, seed)} was trained on another tokenizer than "
                            f"{main_paths.frozen_dir(arm, tok_seed)}; rerun `gear t2i-tokenize` and `gear t2i-train "
                            f"--arm {arm} --seed {seed}`")
    return cfg


# ---- the judge (`gear t2i-judge`) -----------------------------------------------------------------

def load_judge(device: str | torch.device = "cpu") -> Judge | None:
    """The trained judge (eval mode, frozen) or None when the pairs have no attributes. A judge
    missing, corrupt, or trained on other pairs than the current manifest's is an ArtifactError."""
    cfg = read_config(paths.JUDGE_DIR, "judge")
    if "available" not in cfg:
        raise ArtifactError(f"judge config {paths.JUDGE_DIR / 'config.json'} has no 'available' key; "
                            f"run `gear t2i-judge` again")
    try:
        digest = shards_digest(read_pairs_manifest())
    except DataError as e:
        raise ArtifactError(str(e)) from None
    # checked for "no judge" too: pairs that gained attributes since would go unjudged, silently
    if cfg.get("pairs_sha256") != digest:
        raise ArtifactError(f"judge in {paths.JUDGE_DIR} was made for other pairs than {paths.manifest()} "
                            f"describes (pairs_sha256 differs); run `gear t2i-judge` again")
    if not cfg["available"]:
        return None
    try:
        judge = Judge(image_size=cfg["arch"]["image_size"], vocab=cfg["attributes"],
                      **{k: cfg["arch"][k] for k in ARCH})
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"judge config {paths.JUDGE_DIR / 'config.json'} is incomplete "
                            f"({type(e).__name__}: {e}); run `gear t2i-judge` again") from None
    load_weights(judge, paths.JUDGE_DIR / "judge.safetensors", "judge weights")
    return judge.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
