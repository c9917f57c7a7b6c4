"""Everything `gear report` reads, over every study seed, checked and loaded once.

`required_inputs` lists the files (a missing one is a one-line error before any work);
`producer_outputs` lists what the pipeline rules declare for them (the Snakefile's report rule
asks for these: a TSV inside a dvclive plots folder is not a rule output itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from gear import paths
from gear.io import ArtifactError, read_json
from gear.stages.teacher import demo_needed

AR_CURVES = {"ntp": "NTP loss", "align": "alignment loss"}  # metrics/train_ar/seed<N>/<A>/<S>/plots/metrics/
CODEBOOK = {"usage": "usage", "usage_entropy": "entropy (nats)", "effective_size": "effective size"}


def tsv(folder: Path, name: str) -> Path:
    """dvclive plot file <folder>/plots/metrics/<name>.tsv."""
    return folder / "plots" / "metrics" / f"{name}.tsv"


def ar_curve_names(params) -> list[str]:
    return [c for c in AR_CURVES if c != "align" or params.align_weight_ar > 0]  # no alignment, no curve


def shared_folders(params) -> list[tuple[str, Path]]:
    """(label, dvclive folder) of the training stages every seed shares."""
    folders = [("teacher", paths.metrics_dir("teacher"))] if demo_needed(params) else []
    return folders + [("tokenizer_init", paths.metrics_dir("tokenizer_init"))]


def seed_folders(params, seed: int) -> list[tuple[str, Path]]:
    """(label, dvclive folder) of the training stages of one seed."""
    out = [(f"tune/{v}", paths.tune_metrics_dir(v, seed)) for v in paths.tune_variants(params)]
    return out + [(f"train_ar/{a}/{s}", paths.train_ar_metrics_dir(a, s, seed))
                  for s in params.ar.sizes for a in paths.AR_ARMS]


def _seed_files(params, seed: int) -> list[Path]:
    sizes, names = params.ar.sizes, ar_curve_names(params)
    need = [paths.eval_tokenizer_json(v, seed) for v in paths.tune_variants(params)]
    need += [paths.freeze_stats_json(v, seed) for v in paths.tune_variants(params)]
    need += [paths.eval_samples_json(a, s, seed) for s in sizes for a in paths.AR_ARMS]
    need += [tsv(paths.train_ar_metrics_dir(a, s, seed), c) for s in sizes for a in paths.AR_ARMS for c in names]
    need += [tsv(paths.tune_metrics_dir(v, seed), c) for v in paths.tune_variants(params) for c in CODEBOOK]
    need += [folder / "metrics.json" for _, folder in seed_folders(params, seed)]
    return need + [paths.samples_dir(a, s, seed) / "grid.png" for s in sizes for a in paths.AR_ARMS]


def required_inputs(params) -> list[Path]:
    need = [paths.real_stats_dir() / "summary.json", paths.eval_tokenizer_json("baseline"),
            paths.freeze_stats_json("baseline")]
    need += [folder / "metrics.json" for _, folder in shared_folders(params)]
    return need + [p for seed in params.study.seeds for p in _seed_files(params, seed)]


def producer_outputs(params) -> list[Path]:
    """required_inputs mapped to the files and folders the pipeline's rules declare."""
    out = []
    for p in required_inputs(params):
        parts = p.parts
        if "plots" in parts:                        # dvclive TSV -> the folder's metrics.json
            p = Path(*parts[:parts.index("plots")]) / "metrics.json"
        elif parts[0] == str(paths.SAMPLES_DIR):    # grid.png -> the samples folder
            p = p.parent
        elif p.parent == paths.real_stats_dir():
            p = p.parent
        if p not in out:
            out.append(p)
    return out


def read_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a dvclive TSV (columns step, <name>[, timestamp])."""
    df = pl.read_csv(path, separator="\t")
    name = [c for c in df.columns if c not in ("step", "timestamp")]
    if "step" not in df.columns or len(name) != 1 or df.height == 0:
        raise ArtifactError(f"{path}: expected a non-empty dvclive TSV with columns step and one metric")
    return df["step"].to_numpy(), df[name[0]].to_numpy().astype(np.float64)


@dataclass
class Results:
    """The pipeline's outputs keyed by seed: tok[(seed, arm)] (baseline: the shared file under every
    seed), samples[(seed, arm, size)], ar_curves[(seed, arm, size, name)], tune_curves[(seed,
    variant, name)], finals[(seed or None, stage label)] = metrics.json."""
    seeds: list[int]
    sizes: list[str]
    variants: list[str]
    real: dict
    tok: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    ar_curves: dict = field(default_factory=dict)
    tune_curves: dict = field(default_factory=dict)
    finals: dict = field(default_factory=dict)

    def per_seed(self, get) -> list:
        """[get(seed) for every seed]."""
        return [get(seed) for seed in self.seeds]


def load_results(params) -> Results:
    missing = [p for p in required_inputs(params) if not p.is_file()]
    if missing:
        raise ArtifactError(f"input {missing[0]} not found ({len(missing)} missing; run the stages "
                            "that write them, e.g. `snakemake all`)")
    r = Results(list(params.study.seeds), list(params.ar.sizes), paths.tune_variants(params),
                read_json(paths.real_stats_dir() / "summary.json"))
    baseline = read_json(paths.eval_tokenizer_json("baseline"))
    for label, folder in shared_folders(params):
        r.finals[(None, label)] = read_json(folder / "metrics.json")
    for seed in r.seeds:
        r.tok[(seed, "baseline")] = baseline
        for v in r.variants:
            r.tok[(seed, v)] = read_json(paths.eval_tokenizer_json(v, seed))
            for name in CODEBOOK:
                r.tune_curves[(seed, v, name)] = read_curve(tsv(paths.tune_metrics_dir(v, seed), name))
        for s in r.sizes:
            for a in paths.AR_ARMS:
                r.samples[(seed, a, s)] = read_json(paths.eval_samples_json(a, s, seed))
                for name in ar_curve_names(params):
                    r.ar_curves[(seed, a, s, name)] = read_curve(tsv(paths.train_ar_metrics_dir(a, s, seed), name))
        for label, folder in seed_folders(params, seed):
            r.finals[(seed, label)] = read_json(folder / "metrics.json")
    return r
