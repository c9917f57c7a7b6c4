"""`gear t2i-report`: reports/t2i.md, a self-contained reports/t2i.html, reports/t2i.json (every
number and verdict, strict JSON) and the PNGs in reports/t2i_figures/, beside the main report
(which, like every other file in reports/, this stage leaves alone).

The paper's GPIC table (GEAR.md section 8, gear/report/paper.py) regenerated at this params
file's scale: a fresh caption-conditioned AR per tokenizer arm and study seed, measured at every
snapshot of t2i.ar.eval_steps with and without CFG. Sections, in the paper's layout:

  claims          the paper's T2I claims, each with our number and a verdict
  FDD, P / R      per eval step: both arms' mean ± std over seeds, the paired difference
                  GEAR - baseline with its t interval; the paper's table beside
  prompts         accuracy of the prompt-following judge (when there is one), per attribute
  training        steps-to-baseline speed-ups of the NTP and REPA curves (gear/report/figures.py
                  `speedup`, geometric mean over seeds); the curves with their seed band
  samples         each arm's sample grid of the first seed, with its prompts

Verdicts (gear/report/verdicts.py) read the direction the paper reports, never its values (its FDD
is in DINOv2 space at 1B scale): the paper's side is GEAR's FDD lower, a speed-up above 1. Every
input is checked before any work (gear/report/t2i_inputs.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from gear.io import atomic_entries, write_json
from gear.paths import REPORTS_DIR
from gear.report.document import Plot, Table, fmt, per_seed, table, to_html, to_markdown
from gear.report.figures import COLORS, SMOOTH, figure, plot_band, save, speedup, speedup_row
from gear.report.paper import (PAPER_T2I_SOURCE, PAPER_T2I_SPEEDUP, PAPER_T2I_STEPS, paper_t2i_delta,
                               paper_t2i_table)
from gear.report.readers import braced, finite, tsv
from gear.report.t2i_inputs import ATTRIBUTES, CURVES, T2IResults, curve_names, load
from gear.report.verdicts import (LEGEND, NOT_MEASURED, combine, fmt_interval, fmt_mean_std,
                                  interval_json, log_ratio_interval, mean_interval, one_seed_note,
                                  paired_interval, reading, verdict)
from gear.t2i import paths

FIG = "t2i_figures"
SPEEDUP_CURVES = ("ntp", "align")                    # the paper's two training-dynamics figures
ARM_LABEL = {"baseline": "baseline", "gear": "GEAR"}


# ----------------------------------------------------------------------------------------------
# statistics


def _eval_sources(r: T2IResults) -> list[Path]:
    """Every seed's eval JSON of both arms, as one brace path (tables name their files compactly)."""
    return [paths.eval_json(braced(paths.ARMS), braced(r.seeds))]


def _curve_sources(r: T2IResults, names) -> list[Path]:
    return [tsv(paths.train_metrics_dir(braced(paths.ARMS), braced(r.seeds)), braced(names))]


def _cell(values) -> str:
    """mean ± std, then the per-seed values (one seed: the value alone)."""
    return fmt_mean_std(values) + (f" ({per_seed(values)})" if len(values) > 1 else "")


# FDD and precision / recall: (json key, label, snapshot key, with CFG, lower is better)
GENERATION = [("fdd_without_cfg", "FDD w/o CFG", "fdd", False, True), ("fdd_with_cfg", "FDD w/ CFG", "fdd", True, True),
              ("precision", "precision (w/ CFG)", "precision", True, False),
              ("recall", "recall (w/ CFG)", "recall", True, False)]


def _paired(vals: dict, conf: float, lower_is_better: bool) -> dict:
    """Both arms' per-seed values, their paired difference (JSON and, as `_iv`, for the tables)."""
    iv = paired_interval(vals["baseline"], vals["gear"], conf)
    return {"baseline": vals["baseline"], "gear": vals["gear"], "difference": interval_json(iv),
            "reading": reading(iv, lower_is_better), "_iv": iv}


def generation_rows(r: T2IResults, params) -> list[dict]:
    """One row per (eval step, metric), with its verdict for FDD (the paper: lower at every step)."""
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
    """{curve: per-seed speed-ups, their geometric mean and interval, the paper's figure, the verdict}
    (None: the curve is not logged)."""
    out = {}
    for name in SPEEDUP_CURVES:
        if name not in curve_names(params):
            out[name] = None
            continue
        per = [dict(speedup(r.curves[(seed, "baseline", name)], r.curves[(seed, "gear", name)]), seed=seed)
               for seed in r.seeds]
        iv = log_ratio_interval([p["ratio"] for p in per], params.study.confidence)
        out[name] = {"per_seed": per, "geometric_mean": interval_json(iv), "paper_figure": PAPER_T2I_SPEEDUP[name],
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


def header(r: T2IResults, params) -> list:
    e, a = r.first, params.t2i.ar
    space = e["feature_space"]
    n = len(r.seeds)
    prompts = len(e["prompts"]) if isinstance(e.get("prompts"), list) else e.get("prompts")
    blocks = ["# GEAR text-to-image report",
              "The paper's GPIC experiment (GEAR.md section 8) at this params file's scale: the frozen baseline and "
              "GEAR tokenizers of the class-conditional DAG, unchanged, under a fresh caption-conditioned AR trained "
              f"per arm and seed; only the tokenizer differs. Text encoder: {e.get('text_encoder')}; AR size "
              f"{e.get('ar_size')} (REPA tap block {a.align_layer}, weight {a.align_weight}); {a.steps} steps, "
              f"snapshots (EMA) measured at steps {', '.join(map(str, a.eval_steps))}, each sampled without CFG and "
              f"with CFG {params.t2i.sample.cfg_scale}: {fmt(prompts)} held-out prompts x {fmt(e.get('per_prompt'))} "
              f"samples against {fmt(e.get('num_real'))} real val images.",
              f"Study seeds: {', '.join(map(str, r.seeds))}. Values are mean ± std over seeds (per-seed values in "
              f"parentheses); differences are paired by seed, GEAR - baseline, with two-sided Student t intervals at "
              f"{params.study.confidence:.0%}. {LEGEND} They read the paper's direction, not its values."]
    if space == "dinov2":
        blocks.append("FDD: Frechet distance in DINOv2 feature space, the paper's metric; values still differ from "
                      "the paper's with the data, the scale and the number of samples.")
    else:
        blocks.append(f"FDD here is the Frechet distance in the `{space}` teacher's feature space, not DINOv2: its "
                      "values are not comparable to the paper's DINOv2 FDD, only directions are "
                      "(`t2i.feature_space: dinov2` measures in the paper's space).")
    if n == 1:
        blocks.append(one_seed_note())
    return blocks


def claims_section(r: T2IResults, params, gen: list[dict], speed: dict) -> tuple[list, dict]:
    n = len(r.seeds)
    ours = f"ours ({n} seed{'s' if n > 1 else ''})"
    rows, verdicts = [], {}
    for key, label, col in (("fdd_without_cfg", "FDD w/o CFG", 0), ("fdd_with_cfg", "FDD w/ CFG", 1)):
        per = [g for g in gen if g["metric"] == key]
        verdicts[key] = {"overall": combine([g["verdict"] for g in per]),
                         "per_step": {str(g["step"]): g["verdict"] for g in per}}
        rows.append({"claim": f"GEAR's {label} is lower at every step",
                     "paper's figure": "GEAR - baseline " + " / ".join(f"{d:+.1f}" for d in paper_t2i_delta(col))
                                       + f" at {' / '.join(PAPER_T2I_STEPS)}",
                     ours: "; ".join(f"step {g['step']}: {fmt_interval(g['_iv'])}" for g in per),
                     "verdict": verdicts[key]["overall"]})
    for name in SPEEDUP_CURVES:
        s, label = speed[name], {"ntp": "NTP", "align": "REPA"}[name]
        verdicts[f"{name}_speedup"] = s["verdict"] if s else f"{NOT_MEASURED} (t2i.ar.align_weight = 0: no REPA loss)"
        rows.append({"claim": f"GEAR reaches the baseline's final {label} loss in fewer steps",
                     "paper's figure": f"{PAPER_T2I_SPEEDUP[name]}x",
                     ours: f"{fmt_interval(s['_iv'], 3)}x (geometric mean)" if s else "not logged",
                     "verdict": verdicts[f"{name}_speedup"]})
    src = _eval_sources(r) + _curve_sources(r, [c for c in SPEEDUP_CURVES if c in curve_names(params)])
    return ["## The paper's T2I claims", table(rows, src)], verdicts


def generation_section(r: T2IResults, params, gen: list[dict], folder: Path) -> list:
    conf, src = params.study.confidence, _eval_sources(r)
    ci = f"GEAR - baseline [{conf:.0%} CI]"
    by = {(g["step"], g["metric"]): g for g in gen}
    main, pr, seed_rows = [], [], []
    for step in params.t2i.ar.eval_steps:
        row = {"step": step}
        for a in paths.ARMS:  # the paper's columns, per arm
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
            seed_rows.append({"step": step, "seed": seed, **{f"{ARM_LABEL[a]} {label}": by[(step, key)][a][i]
                                                            for key, label, *_ in GENERATION for a in paths.ARMS}})
    return ["## FDD and precision / recall",
            f"Per eval step, lower FDD is better; precision and recall (k = {params.metrics.pr_k} nearest-neighbour "
            "radii) of the samples with CFG. The paper's direction: GEAR's FDD lower at every step.",
            table(main, src),
            "Precision and recall with CFG, GEAR - baseline (the paper's: equal or higher for GEAR at every step):",
            table(pr, src),
            "Per seed:", table(seed_rows, src),
            _fdd_plot(r, params, gen, folder, src),
            "The paper's table (FDD in DINOv2 space, 1B-parameter ARs on 100M GPIC pairs, CFG 1.75):",
            Table(paper_t2i_table(), [PAPER_T2I_SOURCE])]


def _fdd_plot(r: T2IResults, params, gen: list[dict], folder: Path, src: list[Path]) -> Plot:
    conf, steps = params.study.confidence, params.t2i.ar.eval_steps
    fig, axes = figure(2)
    for ax, key in zip(axes, ("fdd_without_cfg", "fdd_with_cfg")):
        rows = [g for g in gen if g["metric"] == key]
        for a in paths.ARMS:
            ivs = [mean_interval(g[a], conf) for g in rows]
            mean = np.array([iv.mean for iv in ivs])
            err = np.array([iv.mean - iv.lo if iv.defined else 0.0 for iv in ivs])
            ax.errorbar(steps, mean, yerr=err, color=COLORS[a], marker="o", capsize=3, label=ARM_LABEL[a])
        ax.set(title=rows[0]["label"], xlabel="AR step", ylabel=f"FDD ({r.first['feature_space']} space)")
        ax.legend()
    file = save(fig, folder, FIG, "fdd.png")
    return Plot(file, f"FDD per eval step: seed mean, bars: {conf:.0%} t interval of the mean over {len(r.seeds)} "
                      "seed(s) (none with one).", src)


def accuracy_section(r: T2IResults, params, acc: list[dict]) -> list:
    judge, conf = r.judge, params.study.confidence
    blocks = ["## Prompt following"]
    if not judge["available"]:
        return blocks + [f"No prompt-following judge: {judge.get('reason', 'no reason given')} "
                         f"(`{paths.JUDGE_DIR / 'config.json'}`)."]
    val = judge.get("val_accuracy") or {}
    val = ", ".join(f"{k} {fmt(float(val[k]))}" for k in ATTRIBUTES if finite(val.get(k))) or "not recorded"
    blocks.append("Accuracy of the samples' attributes as read by the judge (a classifier trained on the embedded "
                  "pairs, `gear t2i-judge`): `all` counts a sample right when shape, colour and position all match "
                  f"its prompt. The judge's own accuracy on real val images, its reliability: {val}.")
    cfg = params.t2i.sample.cfg_scale
    rows = [{"step": x["step"], "CFG": f"w/ {cfg}" if x["cfg"] else "w/o", "attribute": x["attribute"],
             "baseline": _cell(x["baseline"]), "GEAR": _cell(x["gear"]),
             f"GEAR - baseline [{conf:.0%} CI]": fmt_interval(x["_iv"]), "reading": x["reading"]} for x in acc]
    src = [paths.JUDGE_DIR / "config.json", *_eval_sources(r)]
    return blocks + [table(rows, src)]


def training_section(r: T2IResults, params, speed: dict, folder: Path) -> list:
    conf, names = params.study.confidence, curve_names(params)
    src = _curve_sources(r, names)
    fig, axes = figure(len(names))
    for ax, name in zip(axes, names):
        for a in paths.ARMS:
            plot_band(ax, [r.curves[(seed, a, name)] for seed in r.seeds], conf, COLORS[a], ARM_LABEL[a])
        ax.set(title=CURVES[name], xlabel="AR step")
        ax.legend()
    file = save(fig, folder, FIG, "curves.png")
    rows = []
    for name in SPEEDUP_CURVES:
        s = speed[name]
        if s is None:
            continue
        rows.append({**speedup_row(CURVES[name], s["per_seed"], s["_iv"], conf),
                     "paper's": f"{s['paper_figure']}x", "verdict": s["verdict"]})
    blocks = ["## Training dynamics",
              f"Steps to reach (gear/report/figures.py): both curves smoothed over {SMOOTH} logged points; if GEAR's "
              "reaches the baseline's final value at step g, speed-up = the baseline's last step / g; otherwise "
              "the baseline's reaches GEAR's final value at step b and speed-up = b / GEAR's last step (< 1). The "
              "verdict reads the direction (above 1), not the paper's factor."]
    if speed.get("align") is None:
        blocks.append("No REPA curve: t2i.ar.align_weight = 0.")
    return blocks + [table(rows, src),
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
        (out / "t2i.html").write_text(to_html(blocks, out, title="GEAR text-to-image"))
        write_json(out / "t2i.json", {
            "seeds": r.seeds, "confidence": params.study.confidence, "feature_space": r.first["feature_space"],
            "cfg_scale": params.t2i.sample.cfg_scale, "eval_steps": list(params.t2i.ar.eval_steps),
            "fdd": _public(gen), "prompt_accuracy": _public(acc),
            "judge": {"available": r.judge["available"], "reason": r.judge.get("reason"),
                      "val_accuracy": r.judge.get("val_accuracy")},
            "speedups": _public(speed), "verdicts": verdicts,
            "paper_reference": {"table": paper_t2i_table().to_dicts(), "speedup": PAPER_T2I_SPEEDUP}})
    print(f"t2i report: {REPORTS_DIR / 't2i.md'}, t2i.html and t2i.json ({len(r.seeds)} seed(s))")
