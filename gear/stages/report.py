"""`gear report`: reports/index.md and a self-contained reports/index.html (images inline as
base64), plus the PNG plots beside them.

Sections: generation (arm x size: gFID, IS, precision, recall in the named feature space),
tokenizers (rFID, PSNR, SSIM, codebook statistics, CKA / CKNNA with the teacher before and after
quantization), AR training curves baseline vs GEAR (NTP and alignment loss, with the
steps-to-reach-baseline ratio), codebook usage / entropy during end-to-end tuning, AR per-layer
CKA / CKNNA, sample grids, and the final values of the training stages. Every table and plot
names the files its numbers come from. Every input is checked before any work (a missing one
is a one-line error naming it), and reports/ is replaced whole, atomically.

Steps to reach the baseline: both curves are smoothed with a trailing mean over SMOOTH logged
points; target = the baseline's smoothed final value; GEAR reaches it at the first logged step
where its smoothed curve is <= target; ratio = baseline's last step / that step (n/a if never).
"""
from __future__ import annotations

import base64
import html
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure  # the object API renders with Agg: no pyplot, no global state

from gear import paths
from gear.io import ArtifactError, atomic_dir, read_json
from gear.stages.teacher import demo_needed

SMOOTH = 5                        # logged points in the trailing mean of the loss curves
CURVES = {"ntp": "NTP loss", "align": "alignment loss"}   # metrics/train_ar/<A>/<S>/plots/metrics/<name>.tsv
CODEBOOK = {"usage": "usage", "usage_entropy": "entropy (nats)", "effective_size": "effective size"}
FINAL_KEYS = ("val_", "ntp", "align", "unigram_entropy")  # metrics.json keys (prefixes) in the last table
COLORS = {"baseline": "tab:blue", "gear": "tab:red", "ste": "tab:green"}


# ----------------------------------------------------------------------------------------------
# inputs


def _tsv(*parts: str) -> Path:
    """dvclive plot file metrics/<parts[:-1]>/plots/metrics/<parts[-1]>.tsv."""
    return paths.metrics_dir(*parts[:-1]) / "plots" / "metrics" / f"{parts[-1]}.tsv"


def _stage_folders(params) -> list[tuple[str, ...]]:
    """dvclive folders (metrics_dir parts) whose final values the report lists."""
    folders = [("teacher",)] if demo_needed(params) else []
    folders += [("tokenizer_init",), *[("tune", v) for v in paths.tune_variants(params)]]
    return folders + [("train_ar", a, s) for s in params.ar.sizes for a in paths.AR_ARMS]


def _curve_names(params) -> list[str]:
    return [c for c in CURVES if c != "align" or params.align_weight_ar > 0]  # no alignment, no curve


def required_inputs(params) -> list[Path]:
    sizes, tok_arms = params.ar.sizes, paths.tokenizer_arms(params)
    need = [paths.real_stats_dir() / "summary.json", *map(paths.eval_tokenizer_json, tok_arms)]
    need += [paths.eval_samples_json(a, s) for s in sizes for a in paths.AR_ARMS]
    need += [_tsv("train_ar", a, s, c) for s in sizes for a in paths.AR_ARMS for c in _curve_names(params)]
    need += [_tsv("tune", v, c) for v in paths.tune_variants(params) for c in CODEBOOK]
    need += [paths.metrics_dir(*f) / "metrics.json" for f in _stage_folders(params)]
    return need + [paths.samples_dir(a, s) / "grid.png" for s in sizes for a in paths.AR_ARMS]


def read_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a dvclive TSV (columns step, <name>[, timestamp])."""
    df = pl.read_csv(path, separator="\t")
    name = [c for c in df.columns if c not in ("step", "timestamp")]
    if "step" not in df.columns or len(name) != 1 or df.height == 0:
        raise ArtifactError(f"{path}: expected a non-empty dvclive TSV with columns step and one metric")
    return df["step"].to_numpy(), df[name[0]].to_numpy().astype(np.float64)


# ----------------------------------------------------------------------------------------------
# curves


def smooth(values: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Trailing mean over the last `window` points (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def steps_to_reach(base: tuple[np.ndarray, np.ndarray], gear: tuple[np.ndarray, np.ndarray]) -> dict:
    """Where GEAR's smoothed curve first reaches the baseline's smoothed final value."""
    target = float(smooth(base[1])[-1])
    hit = np.flatnonzero(smooth(gear[1]) <= target)
    step = int(gear[0][hit[0]]) if len(hit) else None
    last = int(base[0][-1])
    ratio = None if step is None else (last / step if step > 0 else math.inf)
    return {"baseline_final": target, "gear_final": float(smooth(gear[1])[-1]), "baseline_steps": last,
            "gear_reach_step": step, "ratio": ratio}


# ----------------------------------------------------------------------------------------------
# document model: one list of blocks, rendered to markdown and to HTML


@dataclass
class Table:
    df: pl.DataFrame
    sources: list[Path]


@dataclass
class Plot:
    file: str          # PNG in the reports folder
    caption: str
    sources: list[Path] = field(default_factory=list)


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4g}")
    return str(v)


def _sources(sources: list[Path]) -> str:
    return "Source: " + ", ".join(f"`{p}`" for p in sources)


def to_markdown(blocks: list) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Table):
            out.append("| " + " | ".join(b.df.columns) + " |")
            out.append("|" + "---|" * len(b.df.columns))
            out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in b.df.iter_rows()]
            out += ["", _sources(b.sources), ""]
        elif isinstance(b, Plot):
            caption = b.caption + (" " + _sources(b.sources) if b.sources else "")
            out += [f"![{Path(b.file).stem}]({b.file})", "", caption, ""]
        else:
            out += [b, ""]
    return "\n".join(out)


def _inline_md(text: str) -> str:
    parts = html.escape(text).split("`")  # `code` spans only
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: list, folder: Path) -> str:
    body = []
    for b in blocks:
        if isinstance(b, Table):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in b.df.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                           for row in b.df.iter_rows())
            body.append(f"<table><tr>{head}</tr>{rows}</table><p class=src>{_inline_md(_sources(b.sources))}</p>")
        elif isinstance(b, Plot):
            data = base64.b64encode((folder / b.file).read_bytes()).decode()
            src = f" {_inline_md(_sources(b.sources))}" if b.sources else ""
            body.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline_md(b.caption)}{src}</figcaption></figure>")
        elif b.startswith("#"):
            level = len(b) - len(b.lstrip("#"))
            body.append(f"<h{level}>{_inline_md(b[level:].strip())}</h{level}>")
        else:
            body.append(f"<p>{_inline_md(b)}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             "img{max-width:100%}.src{font-size:85%;color:#555}")
    return ("<!DOCTYPE html><html><head><meta charset=utf-8><title>GEAR report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ----------------------------------------------------------------------------------------------
# sections


def _figure(n: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(5 * n, 3.5))
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})


def generation_section(params) -> list:
    rows, src = [], []
    for s in params.ar.sizes:
        for a in paths.AR_ARMS:
            src.append(paths.eval_samples_json(a, s))
            e = read_json(src[-1])
            rows.append({"size": s, "arm": a, "gFID": e["fid"], "IS": e["is_mean"], "precision": e["precision"],
                         "recall": e["recall"], "feature space": e["feature_space"], "samples": e["num_samples"],
                         "real": f"{e['num_real']} {e['real_split']}"})
    return ["## Generation", f"gFID, IS, precision, recall (k = {params.metrics.pr_k}) of class-conditional samples "
            "against the real statistics. Numbers are comparable only within one feature space.",
            Table(pl.DataFrame(rows), src)]


def tokenizer_section(params) -> list:
    rows, src = [], []
    for arm in paths.tokenizer_arms(params):
        src.append(paths.eval_tokenizer_json(arm))
        e = read_json(src[-1])
        rows.append({"arm": arm, "rFID": e["rfid"], "rFID vs val": e["rfid_val"], "PSNR": e["psnr"], "SSIM": e["ssim"],
                     "usage": e["usage"], "entropy": e["entropy"], "eff. size": e["effective_size"],
                     "CKA pre": e["cka_pre"], "CKNNA pre": e["cknna_pre"], "CKA post": e["cka_post"],
                     "CKNNA post": e["cknna_post"], "feature space": e["feature_space"]})
    e = read_json(src[0])
    return ["## Tokenizers",
            f"Val split ({e['num_images']} images). rFID: reconstructions vs the real statistics "
            f"({e['real_split']}, {e['num_real']} images; val originals give {fmt(e['val_fid'])}); rFID vs val: "
            f"vs the val originals. CKA / CKNNA (k = {e['cknna_k']}) with {e['teacher']} teacher patches over "
            f"{e['num_patches']} patches, before (pre) and after (post) quantization.",
            Table(pl.DataFrame(rows), src)]


def curves_section(params, folder: Path) -> list:
    names, rows, blocks = _curve_names(params), [], []
    for s in params.ar.sizes:
        fig, axes = _figure(len(names))
        src = []
        for ax, name in zip(axes, names):
            curves = {}
            for a in paths.AR_ARMS:
                src.append(_tsv("train_ar", a, s, name))
                curves[a] = read_curve(src[-1])
                steps, values = curves[a]
                ax.plot(steps, values, color=COLORS[a], alpha=0.25)
                ax.plot(steps, smooth(values), color=COLORS[a], label=a)
            r = steps_to_reach(curves["baseline"], curves["gear"])
            ax.axhline(r["baseline_final"], color=COLORS["baseline"], ls="--", lw=0.8)
            if r["gear_reach_step"] is not None:
                ax.axvline(r["gear_reach_step"], color=COLORS["gear"], ls=":", lw=0.8)
            ax.set(title=f"{CURVES[name]} ({s})", xlabel="step")
            ax.legend()
            rows.append({"size": s, "curve": CURVES[name], **r})
        file = f"curves_{s}.png"
        _save(fig, folder / file)
        blocks.append(Plot(file, f"AR training curves, size {s}: raw (light) and smoothed over {SMOOTH} points; "
                                   "dashed: baseline final, dotted: where GEAR reaches it.", src))
    df = pl.DataFrame(rows).rename({"baseline_final": "baseline final", "gear_final": "GEAR final",
                                    "baseline_steps": "baseline steps", "gear_reach_step": "GEAR reaches at",
                                    "ratio": "speed-up"})
    srcs = [_tsv("train_ar", a, s, n) for s in params.ar.sizes for n in names for a in paths.AR_ARMS]
    return ["## AR training: baseline vs GEAR",
            "Speed-up = baseline steps / the first step at which GEAR's smoothed curve reaches the baseline's "
            "smoothed final value (n/a: never reached).", Table(df, srcs), *blocks]


def codebook_section(params, folder: Path) -> list:
    variants = paths.tune_variants(params)
    fig, axes = _figure(len(CODEBOOK))
    src = []
    for ax, (name, label) in zip(axes, CODEBOOK.items()):
        for v in variants:
            src.append(_tsv("tune", v, name))
            steps, values = read_curve(src[-1])
            ax.plot(steps, values, color=COLORS.get(v), label=v)
        ax.set(title=label, xlabel="tuning step")
        ax.legend()
    _save(fig, folder / "codebook_tune.png")
    return ["## Codebook during end-to-end tuning",
            Plot("codebook_tune.png", "Codebook usage, entropy and effective size over the tuning steps "
                                        "(window statistics of the training batches).", src)]


def layers_section(params, folder: Path) -> list:
    rows, src, blocks = [], [], []
    for s in params.ar.sizes:
        fig, axes = _figure(2)
        for a in paths.AR_ARMS:
            path = paths.eval_samples_json(a, s)
            src.append(path)
            e = read_json(path)
            layers = e["ar_layers"]
            for ax, key in zip(axes, ("ar_cka", "ar_cknna")):
                values = [np.nan if e[key][str(l)] is None else e[key][str(l)] for l in layers]
                ax.plot(layers, values, "o-", color=COLORS[a], label=a)
                ax.set(title=f"{key[3:].upper()} with teacher patches ({s})", xlabel="AR layer", xticks=layers)
                ax.legend()
            rows.append({"size": s, "arm": a, "patches": e["ar_num_patches"],
                         "CKA by layer": " / ".join(fmt(e["ar_cka"][str(l)]) for l in layers),
                         "CKNNA by layer": " / ".join(fmt(e["ar_cknna"][str(l)]) for l in layers)})
        file = f"ar_layers_{s}.png"
        _save(fig, folder / file)
        blocks.append(Plot(file, f"Per-layer similarity of the AR (EMA, size {s}) with the teacher, "
                                   "teacher-forced on val.", src[-2:]))
    return ["## AR hidden states vs teacher", Table(pl.DataFrame(rows), src), *blocks]


def samples_section(params, folder: Path) -> list:
    blocks = ["## Samples"]
    for s in params.ar.sizes:
        for a in paths.AR_ARMS:
            grid = paths.samples_dir(a, s) / "grid.png"
            shutil.copyfile(grid, folder / f"samples_{a}_{s}.png")
            blocks.append(Plot(f"samples_{a}_{s}.png", f"Samples of {a} / {s}, one row per class.", [grid]))
    return blocks


def final_section(params) -> list:
    rows, src = [], []
    for parts in _stage_folders(params):
        path = paths.metrics_dir(*parts) / "metrics.json"
        src.append(path)
        for key, value in sorted(read_json(path).items()):
            if key.startswith(FINAL_KEYS) and isinstance(value, (int, float)):
                rows.append({"stage": "/".join(parts), "metric": key, "value": float(value)})
    df = pl.DataFrame(rows, schema={"stage": pl.String, "metric": pl.String, "value": pl.Float64})
    return ["## Final values of the training stages", Table(df, src)]


def run(params) -> None:
    missing = [p for p in required_inputs(params) if not p.is_file()]
    if missing:
        raise ArtifactError(f"input {missing[0]} not found ({len(missing)} missing; run the stages "
                            "that write them, e.g. `snakemake all`)")
    real = read_json(paths.real_stats_dir() / "summary.json")
    with atomic_dir(paths.REPORTS_DIR) as out:
        blocks = ["# GEAR report",
                  f"Feature space: {real['feature_space']} ({real['extractor']}); real statistics: "
                  f"{real['num_real']} {real['real_split']} images at {real['resolution']} px "
                  f"(`{paths.real_stats_dir() / 'summary.json'}`). Teacher: {params.teacher}; quantizer: "
                  f"{params.quantizer}; tau {params.tau}, lambda {params.align_weight}, lambda_ar "
                  f"{params.align_weight_ar}; AR sizes {', '.join(params.ar.sizes)}."]
        blocks += generation_section(params) + tokenizer_section(params) + curves_section(params, out)
        blocks += codebook_section(params, out) + layers_section(params, out) + samples_section(params, out)
        blocks += final_section(params)
        (out / "index.md").write_text(to_markdown(blocks))
        (out / "index.html").write_text(to_html(blocks, out))
    print(f"report: {paths.REPORTS_DIR / 'index.md'} and {paths.REPORTS_DIR / 'index.html'}")
