"""Every artifact path of the pipeline, in one place.

Stages write exactly these paths (fixed, no auto-numbered run folders); the Snakefile imports
this module, and a test checks that dvc.yaml declares the same paths. All paths are relative to
the repository root (the folder holding params.yaml).

Arms: a *tokenizer arm* names a frozen tokenizer: `baseline` (the warm-up tokenizer from
tokenizer-init), `gear` (tuned end-to-end with params.e2e_mode) and every name in
params.tune.ablations (e.g. `ste`). An *AR arm* is `baseline` or `gear`.
"""
from __future__ import annotations

from pathlib import Path

AR_ARMS = ("baseline", "gear")

# data
SHARD_DIR = Path("data/shards")
MANIFEST = SHARD_DIR / "manifest.json"

# models
TEACHER_DIR = Path("models/teacher")
TOKENIZER_INIT_DIR = Path("models/tokenizer_init")
TUNE_DIR = Path("models/tune")          # /<variant>, variant = gear | ste
FROZEN_DIR = Path("models/frozen")      # /<tokenizer arm>
TOKENS_DIR = Path("data/tokens")        # /<ar arm>
AR_DIR = Path("models/ar")              # /<ar arm>/<size>
SAMPLES_DIR = Path("samples")           # /<ar arm>/<size>

# metrics (DVC-readable; dvclive folders hold metrics.json + plots/metrics/*.tsv)
METRICS_DIR = Path("metrics")
EVAL_DIR = Path("eval")
REPORTS_DIR = Path("reports")


def shard_dir(params=None) -> Path:
    return Path(params.data.shard_dir) if params is not None else SHARD_DIR


def manifest(params=None) -> Path:
    return shard_dir(params) / "manifest.json"


def teacher_dir() -> Path:
    return TEACHER_DIR


def tokenizer_init_dir() -> Path:
    return TOKENIZER_INIT_DIR


def tune_dir(variant: str) -> Path:
    return TUNE_DIR / variant


def tune_variants(params) -> list[str]:
    return ["gear", *params.tune.ablations]


def tokenizer_arms(params) -> list[str]:
    return ["baseline", *tune_variants(params)]


def frozen_dir(arm: str) -> Path:
    return FROZEN_DIR / arm


def tokens_dir(arm: str) -> Path:
    return TOKENS_DIR / arm


def ar_dir(arm: str, size: str) -> Path:
    return AR_DIR / arm / size


def samples_dir(arm: str, size: str) -> Path:
    return SAMPLES_DIR / arm / size


def metrics_dir(stage: str, *parts: str) -> Path:
    """dvclive folder of a training stage, e.g. metrics_dir('tune', 'gear')."""
    return METRICS_DIR.joinpath(stage, *parts)


def real_stats_dir() -> Path:
    return EVAL_DIR / "real"


def eval_tokenizer_json(arm: str) -> Path:
    return EVAL_DIR / "tokenizer" / f"{arm}.json"


def eval_samples_json(arm: str, size: str) -> Path:
    return EVAL_DIR / "samples" / arm / f"{size}.json"


def state_dir(params, stage: str, *parts: str) -> Path:
    """Resumable training state: outside every declared output (tools delete those)."""
    return Path(params.compute.state_dir).joinpath(stage, *parts)


def freeze_stats_json(arm: str) -> Path:
    """Codebook statistics of a frozen tokenizer over the val split (written by `gear freeze`)."""
    return METRICS_DIR / "freeze" / f"{arm}.json"


def freeze_source_dir(arm: str) -> Path:
    """Where `gear freeze --arm <arm>` reads the tokenizer EMA from."""
    return tokenizer_init_dir() if arm == "baseline" else tune_dir(arm)
