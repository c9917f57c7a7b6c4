"""Every artifact path of the text-to-image room, in one place (the Snakefile's t2i rules and
t2i/dvc.yaml declare exactly these; a test keeps them in step).

Everything lives under t2i/ except the report, which sits beside the main one in reports/. The
frozen tokenizers come from the class-conditional DAG (gear.paths.frozen_dir): the baseline one is
shared by every seed, the GEAR one is per study seed, so, as there, everything made from the GEAR
tokenizer and every AR carries a seed<N> folder.

  t2i/data/shards/      image-caption pairs: {train,val}-*.tar (<key>.png|jpg, <key>.txt
                        [, <key>.json attributes]), manifest.json, prompts.jsonl (held-out prompts)
  t2i/data/captions/    the same samples plus the pre-extracted caption embedding (emb.npy)
  t2i/data/tokens/[seed<N>/]<arm>/   plus the frozen tokenizer's token grid (tokens.npy)
  t2i/models/judge/     the prompt-following classifier (embedded set); t2i/metrics/judge/ its dvclive folder
  t2i/models/ar/seed<N>/<arm>/       the caption-conditioned AR, EMA snapshots at t2i.ar.eval_steps
  t2i/metrics/train/seed<N>/<arm>/   its dvclive folder (ntp, align, val_ntp curves)
  t2i/samples/seed<N>/<arm>/         samples of every snapshot, with and without CFG
  t2i/eval/real/        real-image features (FDD reference) of the val split
  t2i/eval/seed<N>/<arm>.json        FDD, precision / recall, prompt accuracy per snapshot
"""
from __future__ import annotations

from pathlib import Path

from gear.paths import seed_part, tokenizer_seeded

ARMS = ("baseline", "gear")
ROOT = Path("t2i")
SHARD_DIR = ROOT / "data" / "shards"
CAPTIONS_DIR = ROOT / "data" / "captions"
JUDGE_DIR = ROOT / "models" / "judge"
REAL_DIR = ROOT / "eval" / "real"
REPORT_NAMES = ("t2i.md", "t2i.html", "t2i.json", "t2i_figures")


def manifest() -> Path:
    return SHARD_DIR / "manifest.json"


def prompts_file() -> Path:
    return SHARD_DIR / "prompts.jsonl"


def _arm(root: Path, arm: str, seed: int | None) -> Path:
    """root/<arm> for the shared baseline tokenizer, root/seed<N>/<arm> for a tuned one."""
    if not tokenizer_seeded(arm):
        return root / arm
    if seed is None:
        raise ValueError(f"arm {arm!r} is per seed: a seed is needed for its path")
    return root / seed_part(seed) / arm


def tokens_dir(arm: str, seed: int | None = None) -> Path:
    return _arm(ROOT / "data" / "tokens", arm, seed)


def judge_metrics_dir() -> Path:
    """dvclive folder of the judge's training (train loss / accuracy, val accuracies)."""
    return ROOT / "metrics" / "judge"


def ar_dir(arm: str, seed: int) -> Path:
    return ROOT / "models" / "ar" / seed_part(seed) / arm


def train_metrics_dir(arm: str, seed: int) -> Path:
    return ROOT / "metrics" / "train" / seed_part(seed) / arm


def samples_dir(arm: str, seed: int) -> Path:
    return ROOT / "samples" / seed_part(seed) / arm


def eval_json(arm: str, seed: int) -> Path:
    return ROOT / "eval" / seed_part(seed) / f"{arm}.json"


def report_files() -> dict[str, Path]:
    from gear.paths import REPORTS_DIR

    return {name: REPORTS_DIR / name for name in REPORT_NAMES}


def state_dir(params, arm: str, seed: int) -> Path:
    """Resumable training state of the T2I AR: outside every declared output."""
    return Path(params.compute.state_dir) / ROOT / "train" / seed_part(seed) / arm
