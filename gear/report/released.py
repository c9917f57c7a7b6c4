"""`gear released-report`: reports/released.md, a self-contained reports/released.html and
reports/released.json: each public checkpoint's numbers (gear/stages/released_*.py) beside the
published ones (gear/report/published.py, each with its source), the difference, and whether it
is within the stated tolerance (published.TOLERANCE_RULE).

Verdicts, per number:
  within tolerance / outside tolerance   measured under the published protocol
  protocol differs                       measured, but not as published (another feature space,
                                         image count, resolution or reference batch: the embedded
                                         default): the difference is shown, not judged
  not downloaded                         the entry's path is null: listed, not a failure
  not published                          the source prints no such figure
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from gear import released
from gear.io import atomic_entries, write_json
from gear.paths import REPORTS_DIR
from gear.report import published
from gear.report.document import Table, fmt, to_html, to_markdown
from gear.report.readers import bad, check_present, finite, read_object

LABEL = {"rfid": "rFID", "psnr": "PSNR", "ssim": "SSIM", "fid": "gFID", "is_mean": "IS", "precision": "precision",
         "recall": "recall"}
METRICS = {"tokenizer": ("rfid", "psnr", "ssim"), "gpt": ("fid", "is_mean", "precision", "recall")}
PUBLISHED_COUNT, PUBLISHED_SIZE = 50_000, 256  # ImageNet val images / samples, px (published.py settings)


def protocol_gaps(kind: str, rec: dict) -> list[str]:
    """How a measurement's protocol differs from the published one (empty: comparable)."""
    gaps = []
    if rec.get("feature_space") != "inception":
        gaps.append(f"feature space {rec.get('feature_space')}, not inception")
    count, size = (rec.get("num_images"), rec.get("resolution")) if kind == "tokenizer" else \
        (rec.get("num_samples"), rec.get("eval_size"))
    if count != PUBLISHED_COUNT:
        gaps.append(f"{count} {'val images' if kind == 'tokenizer' else 'samples'}, not {PUBLISHED_COUNT:,}")
    if size != PUBLISHED_SIZE:
        gaps.append(f"{size} px, not {PUBLISHED_SIZE}")
    if kind == "gpt" and rec.get("real_split") != "reference":
        gaps.append("our real statistics, not ADM's reference batch (metrics.reference is null)")
    return gaps


def verdict(ours, pub, metric: str, gaps: list[str]) -> tuple[float | None, float | None, str]:
    """(difference, tolerance, verdict) of one number."""
    if pub is None:
        return None, None, "not published"
    if not finite(ours):  # absent, or NaN / inf (written as such by the stage)
        return None, None, "not measured"
    diff, tol = ours - pub, published.tolerance(metric, pub)
    if gaps:
        return diff, tol, "protocol differs"
    return diff, tol, "within tolerance" if abs(diff) <= tol else "outside tolerance"


def entry_rows(kind: str, name: str, rec: dict, pub: published.Published) -> list[dict]:
    base = {"entry": name, "file": rec.get("public_file")}
    if rec.get("status") == released.NOT_DOWNLOADED:
        return [{**base, "metric": "all", "ours": None, "published": None, "difference": None, "tolerance": None,
                 "verdict": released.NOT_DOWNLOADED, "note": ", ".join(rec.get("missing") or []) or None}]
    gaps = protocol_gaps(kind, rec)
    rows = []
    for metric in METRICS[kind]:
        ours, pub_value = rec.get(metric), pub.values.get(metric)
        diff, tol, v = verdict(ours, pub_value, metric, gaps)
        rows.append({**base, "metric": LABEL[metric], "ours": ours, "published": pub_value, "difference": diff,
                     "tolerance": tol, "verdict": v, "note": "; ".join(gaps) or None})
    return rows


def load() -> dict[str, list[dict]]:
    """Every entry's rows, tokenizers then GPTs; every input checked first (one line for the first
    missing or malformed file, with the command that writes it)."""
    need = {"tokenizer": [(n, released.tokenizer_json(n), f"gear released-tokenizer --name {n}")
                          for n in released.TOKENIZERS],
            "gpt": [(n, released.gpt_json(n), f"gear released-evaluate --name {n}") for n in released.GPTS]}
    check_present([(p, cmd) for files in need.values() for _, p, cmd in files], "snakemake released")
    figures = {"tokenizer": published.TOKENIZERS, "gpt": published.GPTS}
    out = {}
    for kind, files in need.items():
        out[kind] = []
        for name, path, cmd in files:
            rec = read_object(path, cmd)
            if rec.get("status") not in ("measured", released.NOT_DOWNLOADED):
                raise bad(path, f"status {rec.get('status')!r} is neither measured nor {released.NOT_DOWNLOADED}", cmd)
            out[kind] += entry_rows(kind, name, rec, figures[kind][name])
    return out


def _table(rows: list[dict], sources) -> Table:
    cols = ("entry", "file", "metric", "ours", "published", "difference", "tolerance", "verdict", "note")
    text = [{c: (r[c] if isinstance(r[c], str) else "" if r[c] is None and c == "note" else fmt(r[c]))
             for c in cols} for r in rows]
    for t, r in zip(text, rows):
        if r["verdict"] == released.NOT_DOWNLOADED:
            t.update(ours=released.NOT_DOWNLOADED, published="", difference="", tolerance="")
    return Table(pl.DataFrame(text, schema=dict.fromkeys(cols, pl.String)), list(sources))


def published_table() -> Table:
    rows = [{"entry": n, "figures": ", ".join(f"{LABEL[k]} {v}" for k, v in p.values.items()),
             "settings": p.settings, "source": p.source}
            for group in (published.TOKENIZERS, published.GPTS) for n, p in group.items()]
    return Table(pl.DataFrame(rows), [Path(published.__file__).relative_to(Path(published.__file__).parents[2])])


def run(params) -> None:
    rows = load()
    counts = {v: sum(r["verdict"] == v for k in rows for r in rows[k])
              for v in ("within tolerance", "outside tolerance", "protocol differs", released.NOT_DOWNLOADED)}
    blocks = [
        "# Public checkpoints against their published numbers",
        "Each downloaded checkpoint of `released:` in the params, measured by this pipeline (tokenizers on the "
        "val split resized bicubic to the family's resolution; GPTs sampled with their published settings and "
        "scored against `metrics.reference`), beside the published figure. " + published.TOLERANCE_RULE + ". "
        "A number measured under another protocol than the published one (feature space, image count, "
        "resolution, reference batch) says `protocol differs`: its difference is shown, not judged. "
        "An entry whose path is null is `not downloaded`, not a failure.",
        f"Verdicts: {', '.join(f'{n} {v}' for v, n in counts.items())} (numbers; a not-downloaded entry counts once).",
        "## Tokenizers: rFID / PSNR / SSIM",
        _table(rows["tokenizer"], [released.tokenizer_json("{" + ",".join(released.TOKENIZERS) + "}")]),
        "## Class-conditional GPTs: gFID / IS / precision / recall",
        _table(rows["gpt"], [released.gpt_json("{" + ",".join(released.GPTS) + "}")]),
        "## The published figures",
        "Typed once in `gear/report/published.py`, each with its source and the settings it was measured at; "
        "a figure the source does not print is `not published`, never filled in.",
        published_table(),
    ]
    with atomic_entries(REPORTS_DIR, list(released.REPORT_NAMES)) as out:
        (out / "released.md").write_text(to_markdown(blocks))
        (out / "released.html").write_text(to_html(blocks, out, title="GEAR: public checkpoints"))
        write_json(out / "released.json", {"tolerance_rule": published.TOLERANCE_RULE, "counts": counts, **rows})
    print(f"released report: {REPORTS_DIR / 'released.md'}, released.html and released.json ({counts})")
