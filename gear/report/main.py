"""`gear report`: reports/index.md, a self-contained reports/index.html, reports/claims.json (the
claims table), reports/headline.json (the few numbers DVC shows per experiment) and the PNG plots
in reports/figures/.

Every arm-vs-arm number is shown per seed, as mean ± std per arm, and as the paired difference
(arm - baseline) with its t interval at study.confidence (gear/report/verdicts.py); an interval
that contains 0 reads "within noise". With one seed the report says that nothing can be
concluded from the differences. Sections: the paper's claims (gear/report/claims.py), generation,
tokenizers, AR training curves (seed mean with its interval band) and steps-to-baseline
speed-ups, codebook during tuning, AR layers vs teacher, sample grids, final values of every
training stage. Every table and plot names the files its numbers come from; every input is
checked before any work; its files in reports/ are replaced atomically (the ablation report's stay).

Speed-ups: gear/report/figures.py.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from gear import paths, stage2
from gear.io import atomic_entries, write_json
from gear.report.claims import claims
from gear.report.document import Plot, Table, per_seed, table, to_html, to_markdown
from gear.report.figures import COLORS, SMOOTH, figure, plot_band, save, speedup, speedup_row
from gear.report.inputs import (AR_CURVES, CODEBOOK, Results, ar_curve_names, load_results, seed_folders,
                                shared_folders)
from gear.report.readers import tsv
from gear.report.verdicts import (LEGEND, finite_or_none, fmt_interval, fmt_mean_std, log_ratio_interval,
                                  one_seed_note, paired_interval, reading)

FINAL_KEYS = ("val_", "ntp", "align", "unigram_entropy")  # metrics.json keys (prefixes) in the last table
FIG = "figures"
HEADLINE = paths.REPORTS_DIR / "headline.json"

# (label, eval key, lower is better) of the compared metrics
GENERATION = [("gFID", "fid", True), ("IS", "is_mean", False), ("precision", "precision", False),
              ("recall", "recall", False)]
TOKENIZER = [("rFID", "rfid", True), ("rFID vs val", "rfid_val", True), ("PSNR", "psnr", False),
             ("SSIM", "ssim", False), ("usage", "usage", None), ("usage entropy", "entropy", None),
             ("effective size", "effective_size", None), ("CKA pre", "cka_pre", None),
             ("CKNNA pre", "cknna_pre", None), ("CKA post", "cka_post", None), ("CKNNA post", "cknna_post", None)]
AR_FINAL = [("final NTP (train window)", "ntp", True), ("final alignment loss", "align", True),
            ("val NTP (EMA)", "val_ntp", True)]
# headline.json: (short key, eval key) per generation run and per tokenizer arm. DVC shows each
# number as a column named by its key path (`gear.tiny.gfid`), so the keys are short: the table of
# `dvc exp show --only-changed` must fit 160 characters (tests/test_headline.py)
HEADLINE_GEN = [("gfid", "fid"), ("is", "is_mean"), ("prec", "precision"), ("rec", "recall")]
HEADLINE_TOK = [("rfid", "rfid"), ("psnr", "psnr"), ("ent", "entropy"), ("eff", "effective_size")]


def all_speedups(r: Results, params) -> dict:
    """{(size, curve): [per-seed speed-up dicts]}."""
    return {(s, c): [speedup(r.ar_curves[(seed, "baseline", s, c)], r.ar_curves[(seed, "gear", s, c)])
                     for seed in r.seeds] for s in r.sizes for c in ar_curve_names(params)}


# ----------------------------------------------------------------------------------------------
# comparison rows


def compare(label: str, arm: str, base: list, other: list, lower_is_better, confidence: float) -> dict:
    """One table row: per-seed values, mean ± std of each arm, paired difference and its reading
    (lower_is_better None: a metric without a better direction, read '-' or 'differs')."""
    base, other = ([np.nan if v is None else float(v) for v in vals] for vals in (base, other))  # None: not computable
    d = paired_interval(base, other, confidence)
    read = reading(d, lower_is_better, words=(f"{arm.upper()} better", f"{arm.upper()} worse"))
    return {"metric": label, "baseline per seed": per_seed(base), f"{arm} per seed": per_seed(other),
            "baseline mean ± std": fmt_mean_std(base), f"{arm} mean ± std": fmt_mean_std(other),
            f"{arm} - baseline [{confidence:.0%} CI]": fmt_interval(d), "reading": read}


# ----------------------------------------------------------------------------------------------
# sections


def header(r: Results, params) -> list:
    real = r.real
    blocks = ["# GEAR report",
              f"Feature space: {real['feature_space']} ({real['extractor']}); real statistics: "
              f"{real['num_real']} {real['real_split']} images at {real['resolution']} px "
              f"(`{paths.real_stats_dir() / 'summary.json'}`). Teacher: {params.teacher}; quantizer: "
              f"{params.quantizer}; tau {params.tau}, lambda {params.align_weight}, lambda_ar "
              f"{params.align_weight_ar}; tune {params.tune.steps} steps; AR sizes {', '.join(params.ar.sizes)} "
              f"({params.ar.steps} steps).",
              f"Study seeds: {', '.join(map(str, r.seeds))} (each reruns tune, freeze, tokenize, train-ar, sample and "
              f"the evaluations; data, teacher and warm-up are shared). Differences are paired by seed, "
              f"arm - baseline, with two-sided Student t intervals at {params.study.confidence:.0%} "
              "(n - 1 degrees of freedom); an interval that contains 0 is written as within noise."]
    blocks.append(stage2.describe(params))
    if len(r.seeds) == 1:
        blocks.append(one_seed_note("(e.g. `presets/cpu-study.yaml`)"))
    return blocks


def claims_section(r: Results, params, speedups: dict) -> tuple[list, dict, list]:
    found = claims(r, params, {k: [s["ratio"] for s in v] for k, v in speedups.items()})
    n = len(r.seeds)
    ours = f"ours ({n} seed{'s' if n > 1 else ''})"
    rows = [{"claim": f"{c.id}: {c.claim}", "paper's figure": c.paper, ours: c.ours, "verdict": c.verdict} for c in found]
    src = [paths.eval_tokenizer_json("baseline"), Path("eval/tokenizer/seed*/"), Path("eval/samples/seed*/"),
           Path("metrics/train_ar/seed*/")]
    return (["## The paper's claims",
             f"{LEGEND} The paper's figures are at ImageNet scale (GEAR.md section 7); ours are at this params "
             "file's scale.", table(rows, src)], {c.id: c.to_dict() for c in found}, found)


def generation_section(r: Results, params) -> list:
    conf, blocks = params.study.confidence, ["## Generation"]
    for s in r.sizes:
        rows, src = [], [paths.eval_samples_json(a, s, seed) for seed in r.seeds for a in paths.AR_ARMS]
        for label, key, lower in GENERATION:
            vals = {a: r.per_seed(lambda seed: r.samples[(seed, a, s)][key]) for a in paths.AR_ARMS}
            rows.append(compare(label, "gear", vals["baseline"], vals["gear"], lower, conf))
        e = r.samples[(r.seeds[0], "gear", s)]
        blocks += [f"Size {s}: gFID, IS, precision, recall (k = {params.metrics.pr_k}) of {e['num_samples']} "
                   f"class-conditional samples per run against the real statistics ({e['feature_space']} space).",
                   table(rows, src)]
    return blocks


def tokenizer_section(r: Results, params) -> list:
    conf, blocks = params.study.confidence, ["## Tokenizers"]
    e = r.tok[(r.seeds[0], "baseline")]
    blocks.append(f"Val split ({e['num_images']} images), frozen tokenizers. The baseline (warm-up) tokenizer is "
                  "shared by every seed, so its per-seed values repeat. rFID vs the real statistics; CKA / CKNNA "
                  f"(k = {e['cknna_k']}) with {e['teacher']} teacher patches over {e['num_patches']} patches, before "
                  "(pre) and after (post) quantization. Metrics without a better direction read '-' or 'differs'.")
    for v in r.variants:
        rows = [compare(label, v, r.per_seed(lambda seed: r.tok[(seed, "baseline")][key]),
                        r.per_seed(lambda seed: r.tok[(seed, v)][key]), lower, conf) for label, key, lower in TOKENIZER]
        blocks += [f"Arm {v} vs baseline:", table(rows, [paths.eval_tokenizer_json("baseline"), *[
            paths.eval_tokenizer_json(v, seed) for seed in r.seeds]])]
    return blocks


def curves_section(r: Results, params, folder: Path, speedups: dict) -> list:
    conf, names, blocks = params.study.confidence, ar_curve_names(params), ["## AR training: baseline vs GEAR"]
    for s in r.sizes:
        fig, axes = figure(len(names))
        src = [tsv(paths.train_ar_metrics_dir(a, s, seed), n) for seed in r.seeds for a in paths.AR_ARMS for n in names]
        for ax, name in zip(axes, names):
            for a in paths.AR_ARMS:
                plot_band(ax, [r.ar_curves[(seed, a, s, name)] for seed in r.seeds], conf, COLORS[a], a)
            ax.set(title=f"{AR_CURVES[name]} ({s})", xlabel="step")
            ax.legend()
        file = save(fig, folder, FIG, f"curves_{s}.png")
        blocks.append(Plot(file, f"AR training curves, size {s}: seed mean of the curves smoothed over {SMOOTH} "
                                 f"points, band: {conf:.0%} t interval of the mean over {len(r.seeds)} seeds.", src))
        rows = []
        for name in names:
            per = speedups[(s, name)]
            iv = log_ratio_interval([p["ratio"] for p in per], conf)
            rows.append({**speedup_row(AR_CURVES[name], per, iv, conf),
                         "reading": reading(iv, False, zero=1.0, words=("GEAR faster", "GEAR slower"))})
        blocks += [f"Steps to reach, size {s} (module docstring of gear/report/figures.py):", table(rows, src)]
        finals = [compare(label, "gear", *(r.per_seed(lambda seed: r.finals[(seed, f"train_ar/{a}/{s}")].get(key))
                                           for a in paths.AR_ARMS), lower, conf)
                  for label, key, lower in AR_FINAL if key != "align" or "align" in names]
        blocks.append(table(finals, [paths.train_ar_metrics_dir(a, s, seed) / "metrics.json"
                                                for seed in r.seeds for a in paths.AR_ARMS]))
    return blocks


def codebook_section(r: Results, params, folder: Path) -> list:
    fig, axes = figure(len(CODEBOOK))
    src = [tsv(paths.tune_metrics_dir(v, seed), n) for seed in r.seeds for v in r.variants for n in CODEBOOK]
    for ax, (name, label) in zip(axes, CODEBOOK.items()):
        for v in r.variants:
            curves = [r.tune_curves[(seed, v, name)] for seed in r.seeds]
            n = min(len(c[0]) for c in curves)
            vals = np.stack([c[1][:n] for c in curves])
            ax.plot(curves[0][0][:n], vals.mean(0), color=COLORS.get(v), label=v)
            if len(curves) > 1:
                ax.fill_between(curves[0][0][:n], vals.min(0), vals.max(0), color=COLORS.get(v), alpha=0.2, lw=0)
        ax.set(title=label, xlabel="tuning step")
        ax.legend()
    file = save(fig, folder, FIG, "codebook_tune.png")
    return ["## Codebook during end-to-end tuning",
            Plot(file, "Codebook usage, entropy and effective size over the tuning steps (statistics of the training "
                       f"batches in each log window): seed mean, band: min to max over {len(r.seeds)} seeds.", src)]


def layers_section(r: Results, params, folder: Path) -> list:
    conf, blocks = params.study.confidence, ["## AR hidden states vs teacher"]
    for s in r.sizes:
        src = [paths.eval_samples_json(a, s, seed) for seed in r.seeds for a in paths.AR_ARMS]
        layers = r.samples[(r.seeds[0], "gear", s)]["ar_layers"]
        fig, axes = figure(2)
        rows = []
        for ax, key in zip(axes, ("ar_cka", "ar_cknna")):
            for a in paths.AR_ARMS:
                v = np.array([[np.nan if r.samples[(seed, a, s)][key][str(l)] is None else r.samples[(seed, a, s)][key][str(l)]
                               for l in layers] for seed in r.seeds])
                ax.plot(layers, v.mean(0), "o-", color=COLORS[a], label=a)
                if len(r.seeds) > 1:
                    ax.fill_between(layers, v.min(0), v.max(0), color=COLORS[a], alpha=0.2, lw=0)
            ax.set(title=f"{key[3:].upper()} with teacher patches ({s})", xlabel="AR layer", xticks=layers)
            ax.legend()
            for l in layers:
                get = lambda a: r.per_seed(lambda seed: r.samples[(seed, a, s)][key][str(l)])  # noqa: E731
                rows.append(compare(f"{key[3:].upper()} layer {l}", "gear", get("baseline"), get("gear"), False, conf))
        file = save(fig, folder, FIG, f"ar_layers_{s}.png")
        blocks += [table(rows, src),
                   Plot(file, f"Per-layer similarity of the AR (EMA, size {s}) with the teacher, teacher-forced on val: "
                              f"seed mean, band: min to max over {len(r.seeds)} seeds.", src)]
    return blocks


def samples_section(r: Results, folder: Path) -> list:
    seed, blocks = r.seeds[0], [f"## Samples (seed {r.seeds[0]})"]
    for s in r.sizes:
        for a in paths.AR_ARMS:
            grid = paths.samples_dir(a, s, seed) / "grid.png"
            shutil.copyfile(grid, folder / FIG / f"samples_{a}_{s}.png")
            blocks.append(Plot(f"{FIG}/samples_{a}_{s}.png", f"Samples of {a} / {s}, one row per class.", [grid]))
    return blocks


def final_section(r: Results, params) -> list:
    rows, src = [], []
    folders = [(None, *f) for f in shared_folders(params)]
    folders += [(seed, *f) for seed in r.seeds for f in seed_folders(params, seed)]
    for seed, label, folder, _ in folders:
        src.append(folder / "metrics.json")
        for key, value in sorted(r.finals[(seed, label)].items()):
            if key.startswith(FINAL_KEYS) and isinstance(value, (int, float)):
                rows.append({"stage": label, "seed": "shared" if seed is None else str(seed), "metric": key,
                             "value": float(value)})
    df = pl.DataFrame(rows, schema={"stage": pl.String, "seed": pl.String, "metric": pl.String, "value": pl.Float64})
    return ["## Final values of the training stages", Table(df, src)]


def _seed_mean(values: list) -> float | None:
    v = [float(x) for x in values if isinstance(x, (int, float))]
    return finite_or_none(float(np.mean(v))) if len(v) == len(values) else None


def headline(r: Results, found: list) -> dict:
    """The few numbers `dvc exp show` compares across experiments (DVC's metrics file): per compared
    arm its tokenizer's and, per AR size, its generation's seed means, and each claim's verdict.
    {arm: {size: {gfid, is, prec, rec}, rfid, psnr, ent, eff}, claims: {C1, C2_ntp_tiny, ...}}:
    columns `gear.tiny.gfid`, `gear.rfid`, `claims.C1`. The ablation tokenizers (tune.ablations)
    stay in the report: one arm's tokenizer is four more columns per experiment. Strict JSON."""
    def mean(get, pairs) -> dict:
        return {k: _seed_mean(r.per_seed(lambda seed: get(seed).get(key))) for k, key in pairs}

    out = {a: {**{s: mean(lambda seed: r.samples[(seed, a, s)], HEADLINE_GEN) for s in r.sizes},
               **mean(lambda seed: r.tok[(seed, a)], HEADLINE_TOK)} for a in paths.AR_ARMS}
    out["claims"] = {re.sub(r"\W+", "_", c.id).strip("_"): c.verdict for c in found}
    return out


def run(params) -> None:
    r = load_results(params)  # every input checked (one-line error) before any work
    speedups = all_speedups(r, params)
    with atomic_entries(paths.REPORTS_DIR, [FIG, "index.md", "index.html", "claims.json", HEADLINE.name]) as out:
        (out / FIG).mkdir()
        blocks = header(r, params)
        claim_blocks, claim_json, found = claims_section(r, params, speedups)
        blocks += claim_blocks + generation_section(r, params) + tokenizer_section(r, params)
        blocks += curves_section(r, params, out, speedups) + codebook_section(r, params, out)
        blocks += layers_section(r, params, out) + samples_section(r, out) + final_section(r, params)
        (out / "index.md").write_text(to_markdown(blocks))
        (out / "index.html").write_text(to_html(blocks, out, title="GEAR report"))
        write_json(out / "claims.json", {"seeds": r.seeds, "confidence": params.study.confidence, **claim_json})
        write_json(out / HEADLINE.name, headline(r, found))
    print(f"report: {paths.REPORTS_DIR / 'index.md'}, index.html, claims.json and headline.json ({len(r.seeds)} seeds)")
