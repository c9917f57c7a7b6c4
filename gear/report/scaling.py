"""`gear scaling-report`: reports/scaling.{md,html,json} and reports/scaling_figures/, issue 31's
study (gear/scaling.py).

Sections, every number read from the pipeline's outputs and every verdict from the one vocabulary
(gear/report/verdicts.py, the claims of gear/report/claims.py):
- the claims against the baseline and against the equal-compute control (`continue`), side by side;
- the guide-capacity ladder: the tokenizer-side claims (C3 entropy, C4 reconstruction, C5
  tokenizer teacher-likeness) per guide size, with intervals, tabled and plotted against the
  guide's block parameters; then lambda at the largest guide;
- the variance split (study.reseed_upstream): each tokenizer-side effect's spread over seeds with
  the teacher and the warm-up shared (the main DAG) and reseeded per seed (the upstream rows), the
  ratio of the two variances with its F interval, the share of the spread the upstream carries,
  and the baseline tokenizer's own level across the reseeded warm-ups;
- the claims under each stage-2 mode (params `stage2`): the control and the ladder are fresh-mode
  studies; a run under ar-init measures its claims against the baseline and leaves them in
  reports/scaling.ar-init.json, which the fresh run's report shows beside its own (each run writes
  reports/scaling.<mode>.json; `make scaling` runs ar-init first, then fresh);
- what holds, in plain words, generated from those verdicts (no number written by hand).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import stats

from gear import paths, scaling, stage2
from gear.io import atomic_entries, write_json
from gear.models.registry import ar_shape
from gear.report.claims import claims
from gear.report.document import Plot, table, to_html, to_markdown
from gear.report.figures import figure, save, speedup
from gear.report.inputs import ar_curve_names, load_results, samples_cmd
from gear.report.readers import check_present, read_curve, read_object, tsv
from gear.report.verdicts import LEGEND, fmt_interval, fmt_mean_std, mean_interval
from gear.schema import STAGE2_MODES

FIG = "scaling_figures"
FILES = ["scaling.md", "scaling.html", "scaling.json", FIG]
CONTROL = paths.CONTROL
TOKENIZER_CLAIMS = ("C3", "C4", "C5 tokenizer")  # what a ladder rung measures (no fresh AR)
KEY = {"C3": ("entropy", "val entropy GEAR - baseline (nats)"), "C4": ("psnr", "val PSNR GEAR - baseline (dB)"),
       "C5 tokenizer": ("cka_pre", "patch CKA pre GEAR - baseline")}


def _row_cmd(row, seed: int) -> str:
    return f"gear evaluate tokenizer --arm gear --seed {seed}" + ("" if row.default else f" --ablation {row.name}")


def snapshot(mode: str) -> Path:
    """A stage-2 mode's measured claims, written by the scaling report run under that mode."""
    return paths.REPORTS_DIR / f"scaling.{mode}.json"


def required(params) -> list[tuple[Path, str]]:
    """The study's own inputs (the main report's are load_results'), each with its command."""
    need = []
    for seed in params.study.seeds if params.stage2 == "fresh" else ():
        if scaling.control(params):
            for s in params.ar.sizes:
                need.append((paths.eval_samples_json(CONTROL, s, seed), samples_cmd(CONTROL, s, seed)))
                need += [(tsv(paths.train_ar_metrics_dir(CONTROL, s, seed), c),
                          f"gear train-ar --arm {CONTROL} --size {s} --seed {seed}") for c in ar_curve_names(params)]
        ladder = seed in scaling.ladder_seeds(params)
        for _, row in [*scaling.ladder(params), *scaling.lambdas(params)] if ladder else ():
            need.append((scaling.row_tokenizer_json(params, row, seed), _row_cmd(row, seed)))
    for seed, row in scaling.upstream(params):
        flag = "" if row.default else f" --ablation {row.name}"
        js = scaling.upstream_tokenizer_jsons(params, seed)
        need += [(js["gear"], f"gear evaluate tokenizer --arm gear --seed {seed}{flag}"),
                 (js["baseline"], f"gear evaluate tokenizer --arm baseline{flag}")]
    return list(dict.fromkeys(need))


@dataclasses.dataclass
class Study:
    r: object                 # the main report's Results, the control's ARs added
    rungs: dict               # (row name, seed) -> tokenizer evaluation
    upstream: dict            # seed -> {"gear", "baseline"} -> tokenizer evaluation, teacher and warm-up reseeded


def load(params) -> Study:
    need = required(params)
    check_present(need, "snakemake --cores 2 scaling")
    r = load_results(params)
    cmd = dict(need)
    if scaling.control(params):
        for seed in r.seeds:
            for s in r.sizes:
                p = paths.eval_samples_json(CONTROL, s, seed)
                r.samples[(seed, CONTROL, s)] = read_object(p, cmd[p])
                for c in ar_curve_names(params):
                    p = tsv(paths.train_ar_metrics_dir(CONTROL, s, seed), c)
                    r.ar_curves[(seed, CONTROL, s, c)] = read_curve(p, cmd[p])
    rungs = {}
    for _, row in [*scaling.ladder(params), *scaling.lambdas(params)] if params.stage2 == "fresh" else ():
        for seed in scaling.ladder_seeds(params):
            p = scaling.row_tokenizer_json(params, row, seed)
            rungs[(row.name, seed)] = read_object(p, cmd[p])
    upstream = {seed: {arm: read_object(p, cmd[p]) for arm, p in scaling.upstream_tokenizer_jsons(params, seed).items()}
                for seed, _ in scaling.upstream(params)}
    return Study(r, rungs, upstream)


def speedups(r, params, ref: str) -> dict:
    return {(s, c): [speedup(r.ar_curves[(seed, ref, s, c)], r.ar_curves[(seed, "gear", s, c)])["ratio"]
                     for seed in r.seeds] for s in r.sizes for c in ar_curve_names(params)}


# ----------------------------------------------------------------------------------------------
# sections


def control_section(st: Study, params) -> tuple[list, dict, list]:
    r = st.r
    base = claims(r, params, speedups(r, params, "baseline"))
    if not scaling.control(params) or params.stage2 != "fresh":
        return (["## GEAR against the baseline and the equal-compute control",
                 f"The control is not run here: list `{CONTROL}` in tune.ablations (presets/scaling.yaml does), "
                "stage2 = fresh.", table([{"claim": f"{c.id}: {c.claim}", "GEAR vs baseline": c.ours,
                                           "verdict": c.verdict} for c in base], [Path("eval/")])],
                {"baseline": _claims_js(base)}, [(c, None) for c in base])
    ctrl = {c.id: c for c in claims(r, params, speedups(r, params, CONTROL), ref=CONTROL)}
    pairs = [(c, ctrl.get(c.id) if not c.id.startswith("C1") else None) for c in base]
    rows = [{"claim": f"{b.id}: {b.claim}", "GEAR vs baseline": b.ours, "verdict": b.verdict,
             "GEAR vs control": c.ours if c else "-", "verdict vs control": c.verdict if c else "-"} for b, c in pairs]
    text = (f"The control (`{CONTROL}`) is the warm-up tokenizer trained for the same {params.tune.steps} tuning "
            "steps on its own losses (reconstruction, VQ, GAN; no AR, no alignment), with the GEAR tune's seed and "
            "data order, then frozen, tokenized and given its own fresh AR. GEAR - control separates alignment from "
            f"more training. {LEGEND}")
    src = [Path("eval/tokenizer/"), Path("eval/samples/seed*/"), Path("metrics/train_ar/seed*/")]
    js = {"baseline": _claims_js(base), "control": _claims_js([c for _, c in pairs if c])}
    return ["## GEAR against the baseline and the equal-compute control", text, table(rows, src)], js, pairs


def _claims_js(found: list) -> dict:
    return {c.id: {**c.to_dict(), "ours": c.ours} for c in found}


def modes_section(params, own: dict) -> list:
    """The claims against the baseline under each stage-2 mode measured so far: this run's, and
    every other mode's snapshot (reports/scaling.<mode>.json) present, with the seeds it ran."""
    found = {params.stage2: own}
    for mode in STAGE2_MODES:
        if mode != params.stage2 and snapshot(mode).is_file():
            found[mode] = read_object(snapshot(mode), f"snakemake --cores 2 scaling (stage2 = {mode})")
    ids = list(dict.fromkeys(k for js in found.values() for k in js["claims"]["baseline"]))
    rows = []
    for cid in ids:
        row = {"claim": cid}
        for mode, js in found.items():
            c = js["claims"]["baseline"].get(cid)
            row[f"{mode}: GEAR vs baseline"] = c["ours"] if c else "-"
            row[f"{mode}: verdict"] = c["verdict"] if c else "-"
        rows.append(row)
    missing = [m for m in STAGE2_MODES if m not in found]
    text = ("The claims against the baseline under each stage-2 mode (params `stage2`; " + "; ".join(
        f"{m}: seeds {js['seeds']}" for m, js in found.items()) + ")."
            + (f" Not measured yet: {', '.join(missing)} (run the scaling target under it; `make scaling` "
               "runs both)." if missing else ""))
    return ["## The claims under each stage-2 mode", stage2.describe(params), text,
            table(rows, [snapshot(m) for m in found])]


def rung_claims(st: Study, params, row) -> dict:
    """The tokenizer-side claims of one rung: claims.py on the rung's tokenizer as the GEAR arm."""
    r = st.r
    seeds = scaling.ladder_seeds(params)
    tok = {**r.tok, **{(seed, "gear"): st.rungs[(row.name, seed)] for seed in seeds}}
    view = dataclasses.replace(r, seeds=seeds, tok=tok, sizes=[], variants=["gear"])
    return {c.id: c for c in claims(view, params, {}) if c.id in TOKENIZER_CLAIMS}


def _rung_row(st: Study, params, label: dict, row) -> tuple[dict, dict]:
    found = rung_claims(st, params, row)
    eff = mean_interval([st.rungs[(row.name, s)]["effective_size"] for s in scaling.ladder_seeds(params)],
                        params.study.confidence)
    out = {**label, "effective size": fmt_interval(eff, 4)}
    for cid in TOKENIZER_CLAIMS:
        out[f"{cid}: {KEY[cid][1]}"] = fmt_interval(found[cid].interval)
        out[f"{cid} verdict"] = found[cid].verdict
    return out, found


def ladder_section(st: Study, params, folder: Path) -> tuple[list, dict, dict]:
    rows, found, js = [], {}, {}
    for size, row in scaling.ladder(params):
        layers, dim, _ = ar_shape(size)
        label = {"guide": size, "blocks x width": f"{layers} x {dim}", "tap": scaling.middle_block(size),
                 "block params": scaling.guide_params(size), "row": row.name}
        line, found[size] = _rung_row(st, params, label, row)
        rows.append(line)
        js[size] = {"row": row.name, "block_params": scaling.guide_params(size),
                    **{cid: c.to_dict() for cid, c in found[size].items()}}
    src = sorted({scaling.row_tokenizer_json(params, row, 0).parent.parent for _, row in scaling.ladder(params)})
    plot = _ladder_plot(params, found, folder)
    text = (f"Each rung tunes the warm-up tokenizer with a guide AR of that size (alignment tapped at its middle "
            f"block), {params.tune.steps} steps, seeds {scaling.ladder_seeds(params)}; the differences are against the "
            "baseline (warm-up) tokenizer, paired over seeds. The rung at the params' own guide is the main DAG's "
            "GEAR arm.")
    return ["## Guide-capacity ladder", text, table(rows, src), plot], js, found


def _ladder_plot(params, found: dict, folder: Path) -> Plot:
    sizes = [s for s, _ in scaling.ladder(params)]
    x = np.array([scaling.guide_params(s) for s in sizes], dtype=float)
    fig, axes = figure(len(TOKENIZER_CLAIMS))
    for ax, cid in zip(axes, TOKENIZER_CLAIMS):
        ivs = [found[s][cid].interval for s in sizes]
        mean = np.array([iv.mean for iv in ivs])
        err = np.array([[iv.mean - iv.lo, iv.hi - iv.mean] if iv.defined else [0, 0] for iv in ivs]).T
        ax.errorbar(x, mean, yerr=err, fmt="o-", color="tab:red", capsize=3)
        ax.axhline(0.0, color="grey", lw=0.8)
        if cid == "C4":
            ax.axhline(-params.study.recon_margin_db, color="grey", lw=0.8, ls="--")
        for xi, s in zip(x, sizes):
            ax.annotate(s, (xi, 0), textcoords="offset points", xytext=(0, 4), fontsize=7, color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("guide block parameters (12 L d^2)")
        ax.set_title(f"{cid}: {KEY[cid][1]}", fontsize=9)
    name = save(fig, folder, FIG, "ladder.png")
    return Plot(name, f"The tokenizer-side claims per guide size: paired mean and {params.study.confidence:.0%} "
                      "interval over seeds (0: no change; C4's dashed line: the non-inferiority margin).")


def lambda_section(st: Study, params) -> tuple[list, dict, dict]:
    size = scaling.largest_guide(params)
    rows, found, js = [], {}, {}
    for w, row in scaling.lambdas(params):
        line, found[w] = _rung_row(st, params, {"lambda": w, "row": row.name}, row)
        rows.append(line)
        js[str(w)] = {"row": row.name, **{cid: c.to_dict() for cid, c in found[w].items()}}
    src = sorted({scaling.row_tokenizer_json(params, row, 0).parent.parent for _, row in scaling.lambdas(params)})
    return [f"## Alignment weight at the largest guide ({size})", table(rows, src)], js, found


def _spread(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()) if len(values) else None,
            "sd": float(values.std(ddof=1)) if len(values) > 1 else None, "n": len(values)}


def variance_split(shared, reseeded, confidence: float = 0.95) -> dict:
    """One effect's spread (GEAR - baseline, one value per seed) with the teacher and the warm-up
    shared and with them reseeded per seed: mean, sd and n of each; the variance ratio V_reseeded /
    V_shared with its F interval ((V_r / V_s) / (sigma_r^2 / sigma_s^2) ~ F(n_r - 1, n_s - 1) for two
    independent normal samples); the share of the spread the upstream carries, max(0, 1 - V_shared /
    V_reseeded). None where fewer than 2 values (or a zero variance) leave it undefined."""
    a, b = np.asarray(shared, dtype=np.float64), np.asarray(reseeded, dtype=np.float64)
    out = {"shared": _spread(a), "reseeded": _spread(b), "ratio": None, "lo": None, "hi": None, "share": None,
           "confidence": confidence}
    if len(a) < 2 or len(b) < 2:
        return out
    vs, vr = float(a.var(ddof=1)), float(b.var(ddof=1))
    out["share"] = max(0.0, 1.0 - vs / vr) if vr > 0 else 0.0
    if vs > 0:
        ratio, tail, df = vr / vs, (1 - confidence) / 2, (len(b) - 1, len(a) - 1)
        out.update(ratio=ratio, lo=ratio / float(stats.f.ppf(1 - tail, *df)), hi=ratio / float(stats.f.ppf(tail, *df)))
    return out


def _effects(tok: dict, seeds: list, key: str) -> list[float]:
    """GEAR - baseline per seed, the seeds where both are measured (a collapsed CKA is null)."""
    pairs = [(tok[s]["gear"].get(key), tok[s]["baseline"].get(key)) for s in seeds]
    return [g - b for g, b in pairs if g is not None and b is not None]


def _split_words(cid: str, v: dict) -> str:
    """The plain-words line of one claim, from its numbers alone."""
    sh, re_ = v["shared"], v["reseeded"]
    if v["share"] is None:
        return (f"- {cid}: not split: {sh['n']} shared and {re_['n']} reseeded seeds (the variances need at "
                "least 2 each).")
    if v["ratio"] is None:
        ratio = "the shared spread is zero"
        reading = "every difference between seeds comes from the upstream"
    else:
        ratio = f"variance ratio {v['ratio']:.3g} [{v['lo']:.3g}, {v['hi']:.3g}]"
        reading = ("the shared intervals understate the spread" if v["lo"] > 1 else
                   "the reseeded spread is smaller than the shared one" if v["hi"] < 1 else
                   "with these seeds a ratio of 1 (no upstream share) cannot be excluded")
    return (f"- {cid}: GEAR - baseline spreads sd {re_['sd']:.3g} over {re_['n']} seeds with the teacher and the "
            f"warm-up reseeded against sd {sh['sd']:.3g} over {sh['n']} with them shared (means {re_['mean']:+.3g} "
            f"and {sh['mean']:+.3g}); {ratio}: the upstream carries about {v['share']:.0%} of the spread; {reading}.")


LEVELS = (("psnr", "val PSNR (dB)"), ("entropy", "val entropy (nats)"), ("effective_size", "effective codebook size"))
TITLE_SPLIT = "## Variance split (teacher and warm-up reseeded)"


def variance_section(st: Study, params) -> tuple[list, dict]:
    if not scaling.reseeds(params):
        why = "study.reseed_upstream false" if not params.study.reseed_upstream else "a fresh-mode study"
        return [TITLE_SPLIT, f"Not run ({why})."], {"run": False, "reason": why}
    r, conf = st.r, params.study.confidence
    shared = {s: {"gear": r.tok[(s, "gear")], "baseline": r.tok[(s, "baseline")]} for s in r.seeds}
    reseeded = sorted(st.upstream)  # the ladder seeds (scaling.upstream), a subset of the study's
    split = {cid: variance_split(_effects(shared, r.seeds, KEY[cid][0]), _effects(st.upstream, reseeded, KEY[cid][0]),
                                 conf) for cid in TOKENIZER_CLAIMS}
    fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    rows = [{"claim": f"{cid}: {KEY[cid][1]}",
             "shared: mean ± sd (n)": f"{fmt(v['shared']['mean'])} ± {fmt(v['shared']['sd'])} ({v['shared']['n']})",
             "reseeded: mean ± sd (n)": f"{fmt(v['reseeded']['mean'])} ± {fmt(v['reseeded']['sd'])} "
                                        f"({v['reseeded']['n']})",
             f"V_reseeded / V_shared [{conf:.0%} F]": f"{fmt(v['ratio'])} [{fmt(v['lo'])}, {fmt(v['hi'])}]",
             "upstream share": "-" if v["share"] is None else f"{v['share']:.0%}"} for cid, v in split.items()]
    levels, lines = {}, []
    for key, label in LEVELS:
        vals = [st.upstream[s]["baseline"].get(key) for s in reseeded]
        if any(x is None for x in vals):
            continue
        a = np.asarray(vals, dtype=np.float64)
        levels[key] = {"min": float(a.min()), "max": float(a.max()), "sd": _spread(a)["sd"], "n": len(a),
                       "shared": r.tok[(r.seeds[0], "baseline")].get(key)}
        sd = levels[key]["sd"]
        lines.append(f"- {label}: {a.min():.4g}..{a.max():.4g} (sd {'-' if sd is None else f'{sd:.3g}'}, "
                     f"{len(a)} warm-ups; the shared warm-up's: {fmt(levels[key]['shared'])})")
    text = (f"Each ladder seed N ({', '.join(map(str, reseeded))}) also trains its own teacher and warm-up (row upstream-N, compute.seed = N; the seed "
            f"equal to compute.seed {params.compute.seed} is the main DAG's own), its own baseline tokenizer, and the "
            "GEAR tune on that warm-up: the effects below are each row's GEAR against its own baseline, beside the "
            "main DAG's, whose seeds share one teacher and one warm-up. The share is max(0, 1 - V_shared / "
            "V_reseeded).")
    src = [paths.eval_tokenizer_json("baseline"), Path("eval/tokenizer/seed*/"),
           paths.ablation_root("upstream-*") / "eval" / "tokenizer"]
    blocks = [TITLE_SPLIT, text, table(rows, src), "\n".join(_split_words(c, v) for c, v in split.items()),
              "The baseline tokenizer across the reseeded warm-ups:\n" + "\n".join(lines)]
    return blocks, {"run": True, "seeds": r.seeds, "reseeded_seeds": reseeded, "claims": split, "baseline": levels}


def summary(params, pairs: list, ladder: dict, lambdas: dict) -> list:
    """What holds, in plain words, from the verdicts alone."""
    lines = []
    for b, c in pairs:
        against = f"{b.verdict} against the baseline" + (f" and {c.verdict} against the control" if c else "")
        lines.append(f"- {b.id} ({b.claim}): {against}.")
    sizes = [s for s, _ in scaling.ladder(params)]
    for cid in TOKENIZER_CLAIMS:
        seq = [ladder[s][cid].verdict for s in sizes]
        turn = [s for s, prev, now in zip(sizes[1:], seq, seq[1:]) if now != prev]
        change = (f"its reading changes at {', '.join(turn)}" if turn else "its reading does not change with the guide")
        lines.append(f"- Along the guide ladder ({' < '.join(sizes)}), {cid} reads {' / '.join(seq)}: {change}.")
    ws = list(lambdas)
    for cid in TOKENIZER_CLAIMS:
        seq = [lambdas[w][cid].verdict for w in ws]
        lines.append(f"- At the largest guide, lambda {' / '.join(f'{w:g}' for w in ws)}: {cid} reads "
                     f"{' / '.join(seq)}.")
    return ["## What holds",
            "Generated from the verdicts of the tables below (one line per claim; nothing here is written by hand):",
            "\n".join(lines)]


def header(st: Study, params) -> list:
    r = st.r
    return ["# GEAR scaling study (issue 31)",
            f"Study seeds {r.seeds}; tune.steps {params.tune.steps}; guides {params.scaling.guides} "
            f"(the main DAG's guide: {params.tune.ar_size}, tap {params.align_layer}); lambda {params.align_weight} "
            f"and {params.scaling.lambdas} at the largest guide; fresh AR sizes {r.sizes}. Intervals: "
            f"{params.study.confidence:.0%} paired t over seeds; the teacher and the warm-up are shared by every seed, "
            "so the intervals are conditional on them.",
            "Effective size per seed: " + ", ".join(
                f"{a} {fmt_mean_std(r.per_seed(lambda s: r.tok[(s, a)]['effective_size']))}"
                for a in ["baseline", *r.variants])]


def run(params) -> None:
    st = load(params)  # every input checked (one-line error) before any work
    fresh = params.stage2 == "fresh"
    with atomic_entries(paths.REPORTS_DIR, [*FILES, snapshot(params.stage2).name]) as out:
        (out / FIG).mkdir()
        blocks = header(st, params)
        ctrl_blocks, ctrl_js, pairs = control_section(st, params)
        own = {"mode": params.stage2, "seeds": st.r.seeds, "confidence": params.study.confidence, "claims": ctrl_js}
        mode_blocks = modes_section(params, own)
        if fresh:
            lad_blocks, own["ladder"], lad = ladder_section(st, params, out)
            lam_blocks, own["lambda"], lam = lambda_section(st, params)
            var_blocks, own["variance_split"] = variance_section(st, params)
            blocks += (summary(params, pairs, lad, lam) + ctrl_blocks + mode_blocks + lad_blocks + lam_blocks
                       + var_blocks)
        else:
            blocks += mode_blocks + ["The control and the guide ladder are fresh-mode studies: run the scaling "
                                     "target under stage2 = fresh for them (`make scaling` runs both modes)."]
        (out / "scaling.md").write_text(to_markdown(blocks))
        (out / "scaling.html").write_text(to_html(blocks, out, title="GEAR scaling study"))
        write_json(out / "scaling.json", own)
        write_json(out / snapshot(params.stage2).name, own)
    print(f"scaling report ({params.stage2}): {paths.REPORTS_DIR / 'scaling.md'}, scaling.html, scaling.json, "
          f"{snapshot(params.stage2).name} ({len(st.r.seeds)} seeds)")
