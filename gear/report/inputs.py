"""Everything `gear report` reads, over every study seed, checked and loaded once.

`required` lists each file with the command that writes it (a missing one is a one-line error
before any work).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gear import paths, stage2
from gear.ablations import demo_needed
from gear.report.readers import Need, check_present, read_curve, read_object, tsv

AR_CURVES = {"ntp": "NTP loss", "align": "alignment loss"}  # metrics/train_ar/seed<N>/<A>/<S>/plots/metrics/
CODEBOOK = {"usage": "usage", "usage_entropy": "entropy (nats)", "effective_size": "effective size"}


def ar_curve_names(params) -> list[str]:
    return [c for c in AR_CURVES if c != "align" or params.align_weight_ar > 0]  # no alignment, no curve


def shared_folders(params) -> list[tuple[str, Path, str]]:
    """(label, dvclive folder, command) of the training stages every seed shares."""
    folders = [("teacher", paths.metrics_dir("teacher"), "gear teacher")] if demo_needed(params) else []
    return folders + [("tokenizer_init", paths.metrics_dir("tokenizer_init"), "gear tokenizer-init")]


def seed_folders(params, seed: int) -> list[tuple[str, Path, str]]:
    """(label, dvclive folder, command) of the training stages of one seed."""
    out = [(f"tune/{v}", paths.tune_metrics_dir(v, seed), f"gear tune --variant {v} --seed {seed}{paths.guide_flag()}")
           for v in paths.tune_variants(params)]
    return out + [(f"train_ar/{a}/{s}", paths.train_ar_metrics_dir(a, s, seed),
                   f"gear train-ar --arm {a} --size {s} --seed {seed}") for s in params.ar.sizes for a in paths.AR_ARMS]


def _tok_cmd(arm: str, seed: int | None = None) -> str:
    return f"gear evaluate tokenizer --arm {arm}" + ("" if seed is None else f" --seed {seed}{paths.guide_flag()}")


def samples_cmd(arm: str, size: str, seed: int) -> str:
    return f"gear evaluate samples --arm {arm} --size {size} --seed {seed}"


def _seed_files(params, seed: int) -> list[Need]:
    sizes, names, variants = params.ar.sizes, ar_curve_names(params), paths.tune_variants(params)
    need = [(paths.eval_tokenizer_json(v, seed), _tok_cmd(v, seed)) for v in variants]
    need += [(paths.freeze_stats_json(v, seed), f"gear freeze --arm {v} --seed {seed}{paths.guide_flag()}")
             for v in variants]
    need += [(paths.eval_samples_json(a, s, seed), samples_cmd(a, s, seed)) for s in sizes for a in paths.AR_ARMS]
    train = f"gear train-ar --arm {{a}} --size {{s}} --seed {seed}"
    need += [(tsv(paths.train_ar_metrics_dir(a, s, seed), c), train.format(a=a, s=s))
             for s in sizes for a in paths.AR_ARMS for c in names]
    need += [(tsv(paths.tune_metrics_dir(v, seed), c), f"gear tune --variant {v} --seed {seed}{paths.guide_flag()}")
             for v in variants for c in CODEBOOK]
    need += [(folder / "metrics.json", cmd) for _, folder, cmd in seed_folders(params, seed)]
    return need + [(paths.samples_dir(a, s, seed) / "grid.png", f"gear sample --arm {a} --size {s} --seed {seed}")
                   for s in sizes for a in paths.AR_ARMS]


def required(params) -> list[Need]:
    need = [(paths.real_stats_dir() / "summary.json", "gear evaluate real"),
            (paths.eval_tokenizer_json("baseline"), _tok_cmd("baseline")),
            (paths.freeze_stats_json("baseline"), "gear freeze --arm baseline")]
    need += [(folder / "metrics.json", cmd) for _, folder, cmd in shared_folders(params)]
    return need + [n for seed in params.study.seeds for n in _seed_files(params, seed)]


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
    need = required(params)
    check_present(need, "snakemake all")
    cmd = dict(need)
    read = lambda p: read_object(p, cmd[p])  # noqa: E731
    curve = lambda p: read_curve(p, cmd[p])  # noqa: E731
    r = Results(list(params.study.seeds), list(params.ar.sizes), paths.tune_variants(params),
                read(paths.real_stats_dir() / "summary.json"))
    baseline = read(paths.eval_tokenizer_json("baseline"))
    for label, folder, _ in shared_folders(params):
        r.finals[(None, label)] = read(folder / "metrics.json")
    for seed in r.seeds:
        r.tok[(seed, "baseline")] = baseline
        for v in r.variants:
            r.tok[(seed, v)] = read(paths.eval_tokenizer_json(v, seed))
            for name in CODEBOOK:
                r.tune_curves[(seed, v, name)] = curve(tsv(paths.tune_metrics_dir(v, seed), name))
        for s in r.sizes:
            for a in paths.AR_ARMS:
                r.samples[(seed, a, s)] = read(paths.eval_samples_json(a, s, seed))
                for name in ar_curve_names(params):  # x: AR steps in all (ar-init: stage 1's included)
                    steps, values = curve(tsv(paths.train_ar_metrics_dir(a, s, seed), name))
                    r.ar_curves[(seed, a, s, name)] = (steps + stage2.steps_before(params, a), values)
        for label, folder, _ in seed_folders(params, seed):
            r.finals[(seed, label)] = read(folder / "metrics.json")
    return r
