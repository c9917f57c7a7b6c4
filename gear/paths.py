"""Every artifact path of the pipeline, in one place.

Stages write exactly these paths (fixed, no auto-numbered run folders); the Snakefile imports
this module, and a test checks that dvc.yaml declares the same paths. All paths are relative to
the repository root (the folder holding params.yaml).

Arms: a *tokenizer arm* names a frozen tokenizer: `baseline` (the warm-up tokenizer from
tokenizer-init), `gear` (tuned end-to-end with params.e2e_mode) and every name in
params.tune.ablations (e.g. `ste`). An *AR arm* is `baseline` or `gear`.

Seeds (params.study.seeds): everything a seed changes carries a `seed<N>` folder: the tuned
tokenizers and what is made from them, and every AR, its samples and their evaluations, e.g.
models/tune/seed1/gear, models/ar/seed1/baseline/tiny. The data, the teacher and the warm-up are
shared, and so is everything of the baseline *tokenizer* (models/frozen/baseline,
data/tokens/baseline, eval/tokenizer/baseline.json): it is a deterministic function of the
warm-up, so a seed cannot change it. Functions of a tokenizer arm ignore the seed for baseline;
its paths sit under the layout's warm-up root (a row with its own warm-up has its own baseline).

Ablation rows (gear/ablations.py) run the GEAR arm's stages under ablations/<row>/ with the same
relative layout (ablations/tau-0.5/models/tune/seed0/gear), and read the teacher and the warm-up
from the main folders unless the row changes them. A `Layout` names those roots (and where the
real statistics are: a reseeded row's own when its teacher is the feature space); the stage
runner (gear/cli.py) runs a stage inside its job's layout (`using`), and gear/dag.py computes a
job's paths from its layout directly. The default layout is the main DAG's: every root is the
repository root.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

AR_ARMS = ("baseline", "gear")  # the main DAG's fresh-AR arms (its report reads both)
CONTROL = "continue"  # the equal-compute control (issue 31): a tune variant whose fresh AR the scaling room trains
FRESH_AR_ARMS = (*AR_ARMS, CONTROL)  # every arm a fresh AR may be trained on

# data
SHARD_DIR = Path("data/shards")

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
ABLATIONS_DIR = Path("ablations")      # /<row>/<the layout above>


@dataclass(frozen=True)
class Layout:
    """Where a command's stages live: `teacher` holds models/teacher, `warmup` the warm-up
    tokenizer and the baseline tokenizer made from it (frozen, tokens, evaluation), `tuned` the tuned
    arms and everything made from them (ARs, samples, metrics), `real` eval/real."""
    teacher: Path = Path(".")
    warmup: Path = Path(".")
    tuned: Path = Path(".")
    real: Path = Path(".")  # eval/real: the main one unless the row's own teacher is the feature space
    # stage2 = ar-init: stage 1 runs per AR size, so a tuned arm lives in seed<N>/<size>/<arm> (beside,
    # never inside, fresh's seed<N>/<arm>: switching modes deletes nothing); `guide`
    # is the size whose tokenizer the size-free readers take (tune.ar_size). None: stage2 = fresh.
    guide: str | None = None

    def root(self, stage: str) -> Path:
        return {"teacher": self.teacher, "tokenizer_init": self.warmup}.get(stage, self.tuned)


_layout = Layout()


@contextlib.contextmanager
def using(layout: Layout):
    """The paths of `layout` inside a block (the Snakefile names an ablation row's files)."""
    global _layout
    before, _layout = _layout, layout
    try:
        yield layout
    finally:
        _layout = before


def ablation_root(row: str) -> Path:
    return ABLATIONS_DIR / row


def shard_dir(params=None) -> Path:
    return Path(params.data.shard_dir) if params is not None else SHARD_DIR


def manifest(params=None) -> Path:
    return shard_dir(params) / "manifest.json"


def teacher_dir() -> Path:
    return _layout.teacher / TEACHER_DIR


def tokenizer_init_dir() -> Path:
    return _layout.warmup / TOKENIZER_INIT_DIR


def seed_part(seed: int) -> str:
    """The folder name a seed's artifacts live under."""
    return f"seed{seed}"


def tokenizer_seeded(arm: str) -> bool:
    """False for the baseline tokenizer arm: shared by every seed (see the module docstring)."""
    return arm != "baseline"


def sized() -> bool:
    """stage2 = ar-init: the tuned arms are per AR size (the stage-1 guide is that size)."""
    return _layout.guide is not None


def _size_part(size: str | None) -> list[str]:
    """[the size folder] above a tuned arm under ar-init (the guide size when the reader has none), else []."""
    return [size or _layout.guide] if sized() else []


def guide_flag() -> str:
    """` --size <guide>` of a size-free reader's command for a tuned arm under ar-init, else ''."""
    return f" --size {_layout.guide}" if sized() else ""


def _arm_dir(root: Path, arm: str, seed: int | None, size: str | None = None) -> Path:
    if not tokenizer_seeded(arm):  # the warm-up's tokenizer: under the warm-up's root
        return _layout.warmup / root / arm
    if seed is None:
        raise ValueError(f"arm {arm!r} is per seed: a seed is needed for its path")
    return _layout.tuned.joinpath(root, seed_part(seed), *_size_part(size), arm)


def tune_dir(variant: str, seed: int, size: str | None = None) -> Path:
    return _layout.tuned.joinpath(TUNE_DIR, seed_part(seed), *_size_part(size), variant)


def tune_variants(params) -> list[str]:
    return ["gear", *params.tune.ablations]


def tokenizer_arms(params) -> list[str]:
    return ["baseline", *tune_variants(params)]


def frozen_dir(arm: str, seed: int | None = None, size: str | None = None) -> Path:
    return _arm_dir(FROZEN_DIR, arm, seed, size)


def tokens_dir(arm: str, seed: int | None = None, size: str | None = None) -> Path:
    return _arm_dir(TOKENS_DIR, arm, seed, size)


def ar_dir(arm: str, size: str, seed: int) -> Path:
    return _layout.tuned / AR_DIR / seed_part(seed) / arm / size


def samples_dir(arm: str, size: str, seed: int) -> Path:
    return _layout.tuned / SAMPLES_DIR / seed_part(seed) / arm / size


def metrics_dir(stage: str, *parts: str) -> Path:
    """dvclive folder of a training stage, e.g. metrics_dir('tune', 'seed0', 'gear')."""
    return _layout.root(stage) / METRICS_DIR.joinpath(stage, *parts)


def tune_metrics_dir(variant: str, seed: int, size: str | None = None) -> Path:
    return metrics_dir("tune", seed_part(seed), *_size_part(size), variant)


def train_ar_metrics_dir(arm: str, size: str, seed: int) -> Path:
    return metrics_dir("train_ar", seed_part(seed), arm, size)


def real_stats_dir() -> Path:
    return _layout.real / EVAL_DIR / "real"


def eval_tokenizer_json(arm: str, seed: int | None = None, size: str | None = None) -> Path:
    return _arm_dir(EVAL_DIR / "tokenizer", arm, seed, size).with_suffix(".json")


def eval_samples_json(arm: str, size: str, seed: int) -> Path:
    return _layout.tuned / EVAL_DIR / "samples" / seed_part(seed) / arm / f"{size}.json"


def report_files() -> dict[str, Path]:
    """What `gear report` writes: the page in two formats, its figures, the claims, and the headline
    numbers DVC shows as metrics."""
    return {name: REPORTS_DIR / name for name in ("index.md", "index.html", "figures", "claims.json", "headline.json")}


def ablation_report_files() -> dict[str, Path]:
    """What `gear ablation-report` writes (beside the main report, which leaves them alone)."""
    return {ext: REPORTS_DIR / f"ablations.{ext}" for ext in ("md", "html", "json")}


def state_dir(params, stage: str, *parts: str) -> Path:
    """Resumable training state: outside every declared output (tools delete those)."""
    return Path(params.compute.state_dir) / _layout.root(stage) / Path(stage, *parts)


def freeze_stats_json(arm: str, seed: int | None = None, size: str | None = None) -> Path:
    """Codebook statistics of a frozen tokenizer over the val split (written by `gear freeze`)."""
    return _arm_dir(METRICS_DIR / "freeze", arm, seed, size).with_suffix(".json")


def freeze_source_dir(arm: str, seed: int | None = None, size: str | None = None) -> Path:
    """Where `gear freeze --arm <arm>` reads the tokenizer EMA from."""
    return tokenizer_init_dir() if not tokenizer_seeded(arm) else tune_dir(arm, seed, size)
