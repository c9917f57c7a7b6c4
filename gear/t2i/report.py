"""`gear t2i-report`: reports/t2i.md, a self-contained reports/t2i.html, reports/t2i.json (every
number and verdict, strict JSON) and the PNGs in reports/t2i_figures/, beside the main report
(which, like every other file in reports/, this stage leaves alone).

The seed's GPIC table (GEAR.md section 8) regenerated at this params file's scale: a fresh
caption-conditioned AR per tokenizer arm and study seed, measured at every snapshot of
t2i.ar.eval_steps with and without CFG. Sections, in the seed's layout:

  claims          the seed's T2I claims, each with our number and a verdict
  FDD, P / R      per eval step: both arms' mean ± std over seeds, the paired difference
                  GEAR - baseline with its t interval; the seed's table beside
  prompts         accuracy of the prompt-following judge (when there is one), per attribute
  training        steps-to-baseline speed-ups of the NTP and REPA curves (gear/stages/report.py
                  `speedup`, geometric mean over seeds); the curves with their seed band
  samples         each arm's sample grid of the first seed, with its prompts

Verdicts read the direction the seed reports, never its values (its FDD is in DINOv2 space at
1B scale): "holds" when the interval lies on the seed's side (GEAR's FDD lower; speed-up above 1),
"contradicted" when it lies on the other side, "within noise" when it straddles the boundary and
"not concluded (1 seed)" when there is no interval. Every input is checked before any work.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure  # the object API renders with Agg: no pyplot, no global state

from gear.claims import both, side
from gear.document import Plot, Table, fmt, to_html, to_markdown
from gear.io import ArtifactError, atomic_entries, write_json
from gear.metrics.intervals import (Interval, fmt_interval, fmt_mean_std, log_ratio_interval, mean_interval,
                                    paired_interval, reading)
from gear.paths import REPORTS_DIR
from gear.results import read_curve, tsv
from gear.stages.report import COLORS, SMOOTH, seed_band, speedup
from gear.t2i import paths

FIG = "t2i_figures"
NOT_CONCLUDED = "not concluded (1 seed)"
ATTRIBUTES = ("all", "shape", "colour", "position")  # the judge's heads; "all": every attribute right
CURVES = {"ntp": "NTP loss (train)", "align": "REPA loss (-cos, train)", "val_ntp": "val NTP (EMA)"}
SPEEDUP_CURVES = ("ntp", "align")                    # the seed's two training-dynamics figures
ARM_LABEL = {"baseline": "baseline", "gear": "GEAR"}

# The seed's GPIC table (GEAR.md section 8): FDD in DINOv2 space, w/o CFG, w/ CFG, precision, recall.
SEED_STEPS = ("50k", "100k", "200k", "390k")
SEED_TABLE = {
    "baseline": ("LlamaGen-REPA-1.0B", [(414.8, 279.6, 0.87, 0.46), (319.2, 198.6, 0.89, 0.61),
                                        (261.4, 153.5, 0.90, 0.72), (228.9, 127.9, 0.92, 0.78)]),
    "gear": ("GEAR-1.0B", [(381.6, 256.9, 0.87, 0.50), (281.3, 177.4, 0.91, 0.65),
                           (230.0, 138.0, 0.91, 0.75), (200.9, 115.3, 0.92, 0.80)]),
}
SEED_COLUMNS = ("FDD w/o CFG", "FDD w/ CFG", "precision", "recall")
SEED_JIT = ("JiT-GPIC-1.1B", "390k", 204.0)          # reference point: FDD w/ CFG only
SEED_SPEEDUP = {"ntp": 2.5, "align": 11.1}           # steps-to-baseline, GEAR vs LlamaGen-REPA
SEED_SOURCE = Path("GEAR.md section 8 (constants in gear/t2i/report.py)")


# ----------------------------------------------------------------------------------------------
# inputs: every file, with the command that writes it


def _evaluate_cmd(arm: str, seed: int) -> str:
    return f"gear t2i-evaluate samples --arm {arm} --seed {seed}"


def _train_cmd(arm: str, seed: int) -> str:
    return f"gear t2i-train --arm {arm} --seed {seed}"


def _sample_cmd(arm: str, seed: int) -> str:
    return f"gear t2i-sample --arm {arm} --seed {seed}"


JUDGE_CMD = "gear t2i-judge"


def curve_names(params) -> list[str]:
    """The dvclive curves read: no REPA loss is logged without alignment."""
    return [c for c in CURVES if c != "align" or params.t2i.ar.align_weight > 0]


def _required(params) -> list[tuple[Path, str]]:
    """(file, the command that writes it) of everything this stage reads."""
    seeds = list(params.study.seeds)
    need = [(paths.JUDGE_DIR / "config.json", JUDGE_CMD)]
    for seed in seeds:
        for arm in paths.ARMS:
            need.append((paths.eval_json(arm, seed), _evaluate_cmd(arm, seed)))
            need += [(tsv(paths.train_metrics_dir(arm, seed), c), _train_cmd(arm, seed)) for c in curve_names(params)]
    for arm in paths.ARMS:  # the samples shown are the first seed's
        d = paths.samples_dir(arm, seeds[0])
        need += [(d / "grid.png", _sample_cmd(arm, seeds[0])), (d / "config.json", _sample_cmd(arm, seeds[0]))]
    return need


def inputs(params) -> list[Path]:
    """The files this stage reads (the Snakefile rule and t2i/dvc.yaml declare them)."""
    return [p for p, _ in _required(params)]


def producer_outputs(params) -> list[Path]:
    """inputs() mapped to what the t2i rules declare: a file inside a directory() output (the
    judge folder, a dvclive plots folder, a samples folder) is not a Snakemake target itself."""
    folders = {paths.JUDGE_DIR}
    for seed in params.study.seeds:
        for a in paths.ARMS:
            folders |= {paths.samples_dir(a, seed), tsv(paths.train_metrics_dir(a, seed), "x").parent}
    out = []
    for p in inputs(params):
        p = p.parent if p.parent in folders else p
        if p not in out:
            out.append(p)
    return out


def _bad(path: Path, what: str, cmd: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}; rerun `{cmd}`")


def _read_json(path: Path, cmd: str) -> dict:
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not valid JSON ({e})", cmd) from None
    if not isinstance(d, dict):
        raise _bad(path, "expected a JSON object", cmd)
    return d


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _accuracy(acc, path: Path, where: str, cmd: str) -> dict | None:
    if acc is None:
        return None
    if not isinstance(acc, dict) or not all(_finite(acc.get(a)) for a in ATTRIBUTES):
        raise _bad(path, f"{where} prompt_accuracy must hold numbers {', '.join(ATTRIBUTES)}", cmd)
    return {a: float(acc[a]) for a in ATTRIBUTES}


def _snapshots(e: dict, path: Path, cmd: str, params) -> dict[tuple[int, bool], dict]:
    """{(step, with CFG): snapshot} for every eval step, checked against params (stale otherwise)."""
    cfg = params.t2i.sample.cfg_scale
    found = {}
    for s in e["snapshots"] if isinstance(e.get("snapshots"), list) else []:
        if not isinstance(s, dict) or not isinstance(s.get("step"), int) or not _finite(s.get("cfg_scale")):
            raise _bad(path, "a snapshot without an integer step and a cfg_scale", cmd)
        where = f"snapshot step {s['step']} cfg {s['cfg_scale']}"
        bad = [k for k in ("fdd", "precision", "recall") if not _finite(s.get(k))]
        if bad:
            raise _bad(path, f"{where}: {bad[0]} is not a finite number", cmd)
        s = dict(s, prompt_accuracy=_accuracy(s.get("prompt_accuracy"), path, where, cmd))
        if math.isclose(s["cfg_scale"], 1.0):
            found[(s["step"], False)] = s
        if math.isclose(s["cfg_scale"], cfg):  # cfg_scale 1: "with CFG" is the same snapshot
            found[(s["step"], True)] = s
    for step in params.t2i.ar.eval_steps:
        for with_cfg in (False, True):
            if (step, with_cfg) not in found:
                raise _bad(path, f"no snapshot at step {step} with cfg_scale {cfg if with_cfg else 1.0} "
                                 f"(t2i.ar.eval_steps = {params.t2i.ar.eval_steps}, t2i.sample.cfg_scale = {cfg})", cmd)
    return found


def _curve(path: Path, cmd: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        steps, values = read_curve(path)
    except ArtifactError as e:
        raise ArtifactError(f"{e}; rerun `{cmd}`") from None
    except Exception as e:  # polars' own parse errors: a corrupt TSV
        raise _bad(path, f"unreadable dvclive TSV ({type(e).__name__})", cmd) from None
    if not np.all(np.isfinite(values)):
        raise _bad(path, "non-finite values in the curve", cmd)
    return steps, values


@dataclass
class T2IResults:
    """Everything read, keyed by seed: evals[(seed, arm)] (the JSON), snaps[(seed, arm, step, with
    CFG)], curves[(seed, arm, name)]; judge = its config; prompts[arm] = the grid's captions."""
    seeds: list[int]
    evals: dict = field(default_factory=dict)
    snaps: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    judge: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)

    def values(self, arm: str, step: int, with_cfg: bool, get) -> list[float]:
        return [get(self.snaps[(seed, arm, step, with_cfg)]) for seed in self.seeds]

    @property
    def first(self) -> dict:
        return self.evals[(self.seeds[0], "gear")]


def load(params) -> T2IResults:
    """Check every input (a missing or corrupt one: a one-line ArtifactError naming it and the
    command that writes it), then read them all."""
    need = _required(params)
    missing = [(p, cmd) for p, cmd in need if not p.is_file()]
    if missing:
        p, cmd = missing[0]
        raise ArtifactError(f"input {p} not found ({len(missing)} missing): run `{cmd}` (or `snakemake t2i`)")
    r = T2IResults(list(params.study.seeds))
    r.judge = _read_json(paths.JUDGE_DIR / "config.json", JUDGE_CMD)
    if not isinstance(r.judge.get("available"), bool):
        raise _bad(paths.JUDGE_DIR / "config.json", "no boolean 'available'", JUDGE_CMD)
    for seed in r.seeds:
        for arm in paths.ARMS:
            path, cmd = paths.eval_json(arm, seed), _evaluate_cmd(arm, seed)
            e = _read_json(path, cmd)
            if e.get("arm") != arm or e.get("seed") != seed:
                raise _bad(path, f"holds arm {e.get('arm')!r} seed {e.get('seed')!r}, not {arm!r} seed {seed}", cmd)
            if e.get("feature_space") != params.t2i.feature_space:  # stale: FDD measured in another space
                raise _bad(path, f"feature_space {e.get('feature_space')!r}, but t2i.feature_space is "
                                 f"{params.t2i.feature_space!r}", cmd)
            for (step, with_cfg), s in _snapshots(e, path, cmd, params).items():
                if r.judge["available"] and s["prompt_accuracy"] is None:
                    raise _bad(path, f"snapshot step {step}: no prompt_accuracy although the judge is available", cmd)
                r.snaps[(seed, arm, step, with_cfg)] = s
            r.evals[(seed, arm)] = e
            for name in curve_names(params):
                curve = tsv(paths.train_metrics_dir(arm, seed), name)
                r.curves[(seed, arm, name)] = _curve(curve, _train_cmd(arm, seed))
    for arm in paths.ARMS:
        path, cmd = paths.samples_dir(arm, r.seeds[0]) / "config.json", _sample_cmd(arm, r.seeds[0])
        prompts = _read_json(path, cmd).get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise _bad(path, "no list of prompts (the captions of the grid rows)", cmd)
        r.prompts[arm] = prompts
    return r


# ----------------------------------------------------------------------------------------------
# statistics


def _num(x) -> float | None:
    """JSON-safe number (DVC reads strict JSON: no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None


def verdict(iv: Interval, bound: float, claimed_below: bool) -> str:
    """The seed's direction (the quantity below / above `bound`) read on our interval."""
    return NOT_CONCLUDED if iv.n < 2 else side(iv, bound, claimed_below)


def overall(verdicts: list[str]) -> str:
    """A claim made at every step: contradicted if any step is, holds if all do."""
    return NOT_CONCLUDED if NOT_CONCLUDED in verdicts else both(*verdicts)


def _iv_json(iv: Interval) -> dict:
    return {"mean": _num(iv.mean), "lo": _num(iv.lo), "hi": _num(iv.hi), "n_seeds": iv.n}


def _braced(items) -> str:
    """Shell brace form of several names ("{0,1,2}"), the name itself for one."""
    items = [str(x) for x in items]
    return items[0] if len(items) == 1 else "{" + ",".join(items) + "}"


def _eval_sources(r: T2IResults) -> list[Path]:
    """Every seed's eval JSON of both arms, as one brace path (tables name their files compactly)."""
    return [paths.eval_json(_braced(paths.ARMS), _braced(r.seeds))]


def _curve_sources(r: T2IResults, names) -> list[Path]:
    return [tsv(paths.train_metrics_dir(_braced(paths.ARMS), _braced(r.seeds)), _braced(names))]


def _per_seed(values) -> str:
    return " / ".join(fmt(float(v)) for v in values)


def _cell(values) -> str:
    """mean ± std, then the per-seed values (one seed: the value alone)."""
    return fmt_mean_std(values) + (f" ({_per_seed(values)})" if len(values) > 1 else "")


def _reading(iv: Interval, lower_is_better: bool) -> str:
    return NOT_CONCLUDED if iv.n < 2 else reading(iv, lower_is_better)


# FDD and precision / recall: (json key, label, snapshot key, with CFG, lower is better)
GENERATION = [("fdd_without_cfg", "FDD w/o CFG", "fdd", False, True), ("fdd_with_cfg", "FDD w/ CFG", "fdd", True, True),
              ("precision", "precision (w/ CFG)", "precision", True, False),
              ("recall", "recall (w/ CFG)", "recall", True, False)]


def _paired(vals: dict, conf: float, lower_is_better: bool) -> dict:
    """Both arms' per-seed values, their paired difference (JSON and, as `_iv`, for the tables)."""
    iv = paired_interval(vals["baseline"], vals["gear"], conf)
    return {"baseline": vals["baseline"], "gear": vals["gear"], "difference": _iv_json(iv),
            "reading": _reading(iv, lower_is_better), "_iv": iv}


def generation_rows(r: T2IResults, params) -> list[dict]:
    """One row per (eval step, metric), with its verdict for FDD (the seed: lower at every step)."""
    conf, rows = params.study.confidence, []
    for step in params.t2i.ar.eval_steps:
        for key, label, snap_key, with_cfg, lower in GENERATION:
            vals = {a: r.values(a, step, with_cfg, lambda s: float(s[snap_key])) for a in paths.ARMS}
            row = {"step": step, "metric": key, "label": label, **_paired(vals, conf, lower)}
            row["verdict"] = verdict(row["_iv"], 0.0, claimed_below=True) if snap_key == "fdd" else None
            rows.append(row)
    return rows


def accuracy_rows(r: T2IResults, params) -> list[dict]:
    """One row per (eval step, CFG or not, attribute) of the judge's prompt accuracy."""
    conf, rows = params.study.confidence, []
    for step in params.t2i.ar.eval_steps:
        for with_cfg in (False, True):
            for attr in ATTRIBUTES:
                vals = {a: r.values(a, step, with_cfg, lambda s: s["prompt_accuracy"][attr]) for a in paths.ARMS}
                rows.append({"step": step, "cfg": with_cfg, "attribute": attr, **_paired(vals, conf, False)})
    return rows


def speedups(r: T2IResults, params) -> dict:
    """{curve: per-seed speed-ups, their geometric mean and interval, the seed's figure, the verdict}
    (None: the curve is not logged)."""
    out = {}
    for name in SPEEDUP_CURVES:
        if name not in curve_names(params):
            out[name] = None
            continue
        per = [dict(speedup(r.curves[(seed, "baseline", name)], r.curves[(seed, "gear", name)]), seed=seed)
               for seed in r.seeds]
        iv = log_ratio_interval([p["ratio"] for p in per], params.study.confidence)
        out[name] = {"per_seed": per, "geometric_mean": _iv_json(iv), "seed_figure": SEED_SPEEDUP[name],
                     "verdict": verdict(iv, 1.0, claimed_below=False), "_iv": iv}
    return out


def _public(rows):
    """Rows without their Interval objects (kept for the tables), for the JSON."""
    if isinstance(rows, list):
        return [_public(x) for x in rows]
    if isinstance(rows, dict):
        return {k: _public(v) for k, v in rows.items() if not k.startswith("_")}
    return rows


# ----------------------------------------------------------------------------------------------
# sections


def _seed_delta(col: int) -> list[float]:
    return [round(g[col] - b[col], 1) for b, g in zip(SEED_TABLE["baseline"][1], SEED_TABLE["gear"][1])]


def header(r: T2IResults, params) -> list:
    e, a = r.first, params.t2i.ar
    space = e["feature_space"]
    n = len(r.seeds)
    prompts = len(e["prompts"]) if isinstance(e.get("prompts"), list) else e.get("prompts")
    blocks = ["# GEAR text-to-image report",
              "The seed's GPIC experiment (GEAR.md section 8) at this params file's scale: the frozen baseline and "
              "GEAR tokenizers of the class-conditional DAG, unchanged, under a fresh caption-conditioned AR trained "
              f"per arm and seed; only the tokenizer differs. Text encoder: {e.get('text_encoder')}; AR size "
              f"{e.get('ar_size')} (REPA tap block {a.align_layer}, weight {a.align_weight}); {a.steps} steps, "
              f"snapshots (EMA) measured at steps {', '.join(map(str, a.eval_steps))}, each sampled without CFG and "
              f"with CFG {params.t2i.sample.cfg_scale}: {fmt(prompts)} held-out prompts x {fmt(e.get('per_prompt'))} "
              f"samples against {fmt(e.get('num_real'))} real val images.",
              f"Study seeds: {', '.join(map(str, r.seeds))}. Values are mean ± std over seeds (per-seed values in "
              f"parentheses); differences are paired by seed, GEAR - baseline, with two-sided Student t intervals at "
              f"{params.study.confidence:.0%}. Verdicts read the seed's direction, not its values: holds (the "
              "interval lies on the seed's side), contradicted (on the other side), within noise (it contains the "
              "boundary), not concluded (1 seed)."]
    if space == "dinov2":
        blocks.append("FDD: Frechet distance in DINOv2 feature space, the seed's metric; values still differ from "
                      "the seed's with the data, the scale and the number of samples.")
    else:
        blocks.append(f"FDD here is the Frechet distance in the `{space}` teacher's feature space, not DINOv2: its "
                      "values are not comparable to the seed's DINOv2 FDD, only directions are "
                      "(`t2i.feature_space: dinov2` measures in the seed's space).")
    if n == 1:
        blocks.append("**One seed: nothing can be concluded from one seed.** The differences below are single runs "
                      "with no estimate of the run-to-run noise; set `study.seeds` to three or more seeds.")
    return blocks


def claims_section(r: T2IResults, params, gen: list[dict], speed: dict) -> tuple[list, dict]:
    n = len(r.seeds)
    ours = f"ours ({n} seed{'s' if n > 1 else ''})"
    rows, verdicts = [], {}
    for key, label, col in (("fdd_without_cfg", "FDD w/o CFG", 0), ("fdd_with_cfg", "FDD w/ CFG", 1)):
        per = [g for g in gen if g["metric"] == key]
        verdicts[key] = {"overall": overall([g["verdict"] for g in per]),
                         "per_step": {str(g["step"]): g["verdict"] for g in per}}
        rows.append({"claim": f"GEAR's {label} is lower at every step",
                     "seed's figure": "GEAR - baseline " + " / ".join(f"{d:+.1f}" for d in _seed_delta(col))
                                      + f" at {' / '.join(SEED_STEPS)}",
                     ours: "; ".join(f"step {g['step']}: {fmt_interval(g['_iv'])}" for g in per),
                     "verdict": verdicts[key]["overall"]})
    for name in SPEEDUP_CURVES:
        s, label = speed[name], {"ntp": "NTP", "align": "REPA"}[name]
        verdicts[f"{name}_speedup"] = s["verdict"] if s else "n/a (t2i.ar.align_weight = 0: no REPA loss)"
        rows.append({"claim": f"GEAR reaches the baseline's final {label} loss in fewer steps",
                     "seed's figure": f"{SEED_SPEEDUP[name]}x",
                     ours: f"{fmt_interval(s['_iv'], 3)}x (geometric mean)" if s else "not logged",
                     "verdict": verdicts[f"{name}_speedup"]})
    src = _eval_sources(r) + _curve_sources(r, [c for c in SPEEDUP_CURVES if c in curve_names(params)])
    return ["## The seed's T2I claims", Table(pl.DataFrame(rows), src)], verdicts


def seed_table() -> pl.DataFrame:
    """The seed's GPIC table in its own layout: one row per (step, model), JiT's reference point last."""
    rows = [{"step": st, "model": SEED_TABLE[a][0], **dict(zip(SEED_COLUMNS, SEED_TABLE[a][1][i]))}
            for i, st in enumerate(SEED_STEPS) for a in paths.ARMS]
    rows.append({"step": SEED_JIT[1], "model": SEED_JIT[0], **dict.fromkeys(SEED_COLUMNS), "FDD w/ CFG": SEED_JIT[2]})
    return pl.DataFrame(rows, schema={"step": pl.String, "model": pl.String, **dict.fromkeys(SEED_COLUMNS, pl.Float64)})


def generation_section(r: T2IResults, params, gen: list[dict], folder: Path) -> list:
    conf, src = params.study.confidence, _eval_sources(r)
    ci = f"GEAR - baseline [{conf:.0%} CI]"
    by = {(g["step"], g["metric"]): g for g in gen}
    main, pr, per_seed = [], [], []
    for step in params.t2i.ar.eval_steps:
        row = {"step": step}
        for a in paths.ARMS:  # the seed's columns, per arm
            for key, label, *_ in GENERATION:
                row[f"{ARM_LABEL[a]} {label.replace(' (w/ CFG)', '')}"] = _cell(by[(step, key)][a])
        for key in ("fdd_without_cfg", "fdd_with_cfg"):
            g = by[(step, key)]
            row[f"{g['label']}: {ci}"], row[f"{g['label']}: verdict"] = fmt_interval(g["_iv"]), g["verdict"]
        main.append(row)
        line = {"step": step}
        for key in ("precision", "recall"):
            g = by[(step, key)]
            line[f"{key}: {ci}"], line[f"{key}: reading"] = fmt_interval(g["_iv"]), g["reading"]
        pr.append(line)
        for i, seed in enumerate(r.seeds):
            per_seed.append({"step": step, "seed": seed, **{f"{ARM_LABEL[a]} {label}": by[(step, key)][a][i]
                                                            for key, label, *_ in GENERATION for a in paths.ARMS}})
    return ["## FDD and precision / recall",
            f"Per eval step, lower FDD is better; precision and recall (k = {params.metrics.pr_k} nearest-neighbour "
            "radii) of the samples with CFG. The seed's direction: GEAR's FDD lower at every step.",
            Table(pl.DataFrame(main), src),
            "Precision and recall with CFG, GEAR - baseline (the seed's: equal or higher for GEAR at every step):",
            Table(pl.DataFrame(pr), src),
            "Per seed:", Table(pl.DataFrame(per_seed), src),
            _fdd_plot(r, params, gen, folder, src),
            "The seed's table (FDD in DINOv2 space, 1B-parameter ARs on 100M GPIC pairs, CFG 1.75):",
            Table(seed_table(), [SEED_SOURCE])]


def _figure(n: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(5 * n, 3.5))
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def _save(fig: Figure, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / FIG / name, dpi=100, metadata={"Software": None})
    return f"{FIG}/{name}"


def _fdd_plot(r: T2IResults, params, gen: list[dict], folder: Path, src: list[Path]) -> Plot:
    conf, steps = params.study.confidence, params.t2i.ar.eval_steps
    fig, axes = _figure(2)
    for ax, key in zip(axes, ("fdd_without_cfg", "fdd_with_cfg")):
        rows = [g for g in gen if g["metric"] == key]
        for a in paths.ARMS:
            ivs = [mean_interval(g[a], conf) for g in rows]
            mean = np.array([iv.mean for iv in ivs])
            err = np.array([iv.mean - iv.lo if iv.defined else 0.0 for iv in ivs])
            ax.errorbar(steps, mean, yerr=err, color=COLORS[a], marker="o", capsize=3, label=ARM_LABEL[a])
        ax.set(title=rows[0]["label"], xlabel="AR step", ylabel=f"FDD ({r.first['feature_space']} space)")
        ax.legend()
    file = _save(fig, folder, "fdd.png")
    return Plot(file, f"FDD per eval step: seed mean, bars: {conf:.0%} t interval of the mean over {len(r.seeds)} "
                      "seed(s) (none with one).", src)


def accuracy_section(r: T2IResults, params, acc: list[dict]) -> list:
    judge, conf = r.judge, params.study.confidence
    blocks = ["## Prompt following"]
    if not judge["available"]:
        return blocks + [f"No prompt-following judge: {judge.get('reason', 'no reason given')} "
                         f"(`{paths.JUDGE_DIR / 'config.json'}`)."]
    val = judge.get("val_accuracy") or {}
    val = ", ".join(f"{k} {fmt(float(val[k]))}" for k in ATTRIBUTES if _finite(val.get(k))) or "not recorded"
    blocks.append("Accuracy of the samples' attributes as read by the judge (a classifier trained on the embedded "
                  "pairs, `gear t2i-judge`): `all` counts a sample right when shape, colour and position all match "
                  f"its prompt. The judge's own accuracy on real val images, its reliability: {val}.")
    cfg = params.t2i.sample.cfg_scale
    rows = [{"step": x["step"], "CFG": f"w/ {cfg}" if x["cfg"] else "w/o", "attribute": x["attribute"],
             "baseline": _cell(x["baseline"]), "GEAR": _cell(x["gear"]),
             f"GEAR - baseline [{conf:.0%} CI]": fmt_interval(x["_iv"]), "reading": x["reading"]} for x in acc]
    src = [paths.JUDGE_DIR / "config.json", *_eval_sources(r)]
    return blocks + [Table(pl.DataFrame(rows), src)]


def training_section(r: T2IResults, params, speed: dict, folder: Path) -> list:
    conf, names = params.study.confidence, curve_names(params)
    src = _curve_sources(r, names)
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names):
        for a in paths.ARMS:
            steps, mean, lo, hi = seed_band([r.curves[(seed, a, name)] for seed in r.seeds], conf)
            ax.plot(steps, mean, color=COLORS[a], label=ARM_LABEL[a])
            ax.fill_between(steps, lo, hi, color=COLORS[a], alpha=0.2, lw=0)
        ax.set(title=CURVES[name], xlabel="AR step")
        ax.legend()
    file = _save(fig, folder, "curves.png")
    rows = []
    for name in SPEEDUP_CURVES:
        s = speed[name]
        if s is None:
            continue
        per = s["per_seed"]
        rows.append({"curve": CURVES[name], "per seed": " / ".join(f"{p['ratio']:.3g}x" for p in per),
                     "GEAR reaches baseline final at": " / ".join(fmt(p["gear_reach_step"]) for p in per),
                     "baseline reaches GEAR final at": " / ".join(fmt(p["baseline_reach_step"]) for p in per),
                     f"speed-up, geometric mean [{conf:.0%} CI]": fmt_interval(s["_iv"], 3),
                     "seed's": f"{s['seed_figure']}x", "verdict": s["verdict"]})
    blocks = ["## Training dynamics",
              f"Steps to reach (gear/stages/report.py): both curves smoothed over {SMOOTH} logged points; if GEAR's "
              "reaches the baseline's final value at step g, speed-up = the baseline's last step / g; otherwise "
              "the baseline's reaches GEAR's final value at step b and speed-up = b / GEAR's last step (< 1). The "
              "verdict reads the direction (above 1), not the seed's factor."]
    if speed.get("align") is None:
        blocks.append("No REPA curve: t2i.ar.align_weight = 0.")
    return blocks + [Table(pl.DataFrame(rows), src),
                     Plot(file, f"Training curves: seed mean of the curves smoothed over {SMOOTH} points, band: "
                                f"{conf:.0%} t interval of the mean over {len(r.seeds)} seed(s).", src)]


def samples_section(r: T2IResults, params, folder: Path) -> list:
    seed = r.seeds[0]
    blocks = [f"## Samples (seed {seed})",
              f"Final snapshot (step {params.t2i.ar.steps}, EMA), CFG {params.t2i.sample.cfg_scale}; one row per "
              "prompt."]
    for a in paths.ARMS:
        d = paths.samples_dir(a, seed)
        shutil.copyfile(d / "grid.png", folder / FIG / f"samples_{a}.png")
        listed = "; ".join(f"{i + 1}. {p}" for i, p in enumerate(r.prompts[a]))
        blocks.append(Plot(f"{FIG}/samples_{a}.png", f"{ARM_LABEL[a]}. Rows, top to bottom: {listed}.",
                           [d / "grid.png", d / "config.json"]))
    return blocks


def run(params) -> None:
    r = load(params)  # every input checked (one-line error) before any work
    gen, acc = generation_rows(r, params), accuracy_rows(r, params) if r.judge["available"] else []
    speed = speedups(r, params)
    with atomic_entries(REPORTS_DIR, list(paths.REPORT_NAMES)) as out:
        (out / FIG).mkdir()
        claim_blocks, verdicts = claims_section(r, params, gen, speed)
        blocks = header(r, params) + claim_blocks + generation_section(r, params, gen, out)
        blocks += accuracy_section(r, params, acc) + training_section(r, params, speed, out)
        blocks += samples_section(r, params, out)
        (out / "t2i.md").write_text(to_markdown(blocks))
        (out / "t2i.html").write_text(to_html(blocks, out).replace("<title>GEAR report", "<title>GEAR text-to-image"))
        write_json(out / "t2i.json", {
            "seeds": r.seeds, "confidence": params.study.confidence, "feature_space": r.first["feature_space"],
            "cfg_scale": params.t2i.sample.cfg_scale, "eval_steps": list(params.t2i.ar.eval_steps),
            "fdd": _public(gen), "prompt_accuracy": _public(acc),
            "judge": {"available": r.judge["available"], "reason": r.judge.get("reason"),
                      "val_accuracy": r.judge.get("val_accuracy")},
            "speedups": _public(speed), "verdicts": verdicts,
            "seed_reference": {"table": seed_table().to_dicts(), "speedup": SEED_SPEEDUP}})
    print(f"t2i report: {REPORTS_DIR / 't2i.md'}, t2i.html and t2i.json ({len(r.seeds)} seed(s))")
