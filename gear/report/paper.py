"""The paper's reference numbers (GEAR.md sections 7-9), typed once: the figures of its six claims,
its ablation tables, its text-to-image (GPIC) table and speed-ups. Every report reads them here.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from gear import ablations as ab

# ---- the claims (GEAR.md section 7): the paper's figure shown beside ours ----------------------
PAPER_CLAIMS = {
    "C1": "STE gFID 104.93 / rFID 59.72 vs GEAR 10.63 / 1.640",
    "C1 unmeasured": "STE gFID 104.93 / rFID 59.72",
    "C2 ntp": "2.5x (text-to-image)",
    "C2 align": "11.1x REPA loss (text-to-image)",
    "C3": "entropy and effective size fall, bottom out, converge above collapse",
    "C4": "rFID 1.72 -> 1.64 (VQ-16)",
    "C5 tokenizer": "patch CKA 0.173 -> 0.107 (pre-quantization)",
    "C5 AR": "more teacher-like at every depth",
    "C6": "gFID B 20.16 -> 16.96, L 12.70 -> 8.66, XL 8.20 -> 6.76",
}

# ---- the ablation tables (GEAR.md section 9): per axis, (value, label, gFID, rFID), defaults *.
# Values match ours where the axis names the same thing; the alignment-layer and AR-size rows
# are matched by position when the grid uses other depths or sizes (embedded: tiny ARs).
PAPER_TABLES = {
    "training": [("ste", "w/ STE", 104.93, 59.72), ("no_gan", "w/o GAN", 16.35, 5.857),
                 ("gear", "GEAR*", 10.63, 1.640)],
    "quantizer": [("vq", "VQVAE*", 10.63, 1.640), ("lfq", "LFQ", 14.78, 2.129), ("ibq", "IBQ", 12.97, 1.716)],
    "tau": [(0.5, "0.50", 9.15, 1.698), (0.1, "0.10*", 10.63, 1.640), (0.05, "0.05", 10.75, 1.638),
            (0.01, "0.01", 11.42, 1.628)],
    "align_weight": [(0.25, "0.25", 12.01, 1.653), (0.5, "0.50*", 10.63, 1.640), (0.75, "0.75", 10.82, 1.647),
                     (1.0, "1.00", 10.89, 1.715)],
    "align_layer": [(6, "6th", 16.96, 1.714), (8, "8th*", 16.84, 1.721), (10, "10th", 17.99, 1.714)],
    "teacher": [("dinov2_vitb14", "DINOv2*", 16.84, 1.721), ("dinov3_vitb16", "DINOv3", 18.97, 1.696),
                ("siglip2_vitb16", "SigLIPv2", 19.23, 1.803), ("vjepa2_vitl16", "V-JEPA 2.1", 19.53, 1.879)],
    "tune_ar_size": [("B", "B (111M)", 21.52, 1.658), ("L", "L (343M)*", 10.63, 1.640),
                     ("XL", "XL (775M)", 7.69, 1.624)],
    "init": [("scratch", "w/o init", 13.44, 2.256), ("warmup", "w/ init*", 10.63, 1.640)],
}


def paper_row(params, axis_name: str, row):
    """The paper's (value, label, gFID, rFID) for one of our ablation rows (gear/ablations.py), or None.

    By value where the paper's table names the same value; the default row is the paper's default;
    on the ordered axes (alignment layer, AR size) at other depths or sizes, by offset from the
    default in the grid's order (one deeper than the default <-> the paper's one deeper)."""
    paper = PAPER_TABLES[axis_name]
    value = ab.default_value(params, ab.AXIS[axis_name]) if row.default else row.value
    for entry in paper:
        if entry[0] == value:
            return entry
    if row.default:
        return next(e for e in paper if e[1].endswith("*"))
    if axis_name not in ("align_layer", "tune_ar_size"):
        return None
    ours = ab.table(params, axis_name)
    i = ours.index(row) - ours.index(ab.DEFAULT) + next(i for i, e in enumerate(paper) if e[1].endswith("*"))
    return paper[i] if 0 <= i < len(paper) else None


# ---- the text-to-image experiment (GEAR.md section 8): the GPIC table, FDD in DINOv2 space ------
PAPER_T2I_STEPS = ("50k", "100k", "200k", "390k")
PAPER_T2I = {  # arm -> (model, per step: FDD w/o CFG, FDD w/ CFG, precision, recall)
    "baseline": ("LlamaGen-REPA-1.0B", [(414.8, 279.6, 0.87, 0.46), (319.2, 198.6, 0.89, 0.61),
                                        (261.4, 153.5, 0.90, 0.72), (228.9, 127.9, 0.92, 0.78)]),
    "gear": ("GEAR-1.0B", [(381.6, 256.9, 0.87, 0.50), (281.3, 177.4, 0.91, 0.65),
                           (230.0, 138.0, 0.91, 0.75), (200.9, 115.3, 0.92, 0.80)]),
}
PAPER_T2I_COLUMNS = ("FDD w/o CFG", "FDD w/ CFG", "precision", "recall")
PAPER_T2I_JIT = ("JiT-GPIC-1.1B", "390k", 204.0)      # reference point: FDD w/ CFG only
PAPER_T2I_SPEEDUP = {"ntp": 2.5, "align": 11.1}      # steps-to-baseline, GEAR vs LlamaGen-REPA
PAPER_T2I_SOURCE = Path("GEAR.md section 8 (constants in gear/report/paper.py)")


def paper_t2i_delta(col: int) -> list[float]:
    """GEAR - baseline of one GPIC column at each of the paper's steps."""
    return [round(g[col] - b[col], 1) for b, g in zip(PAPER_T2I["baseline"][1], PAPER_T2I["gear"][1])]


def paper_t2i_table() -> pl.DataFrame:
    """The GPIC table in the paper's layout: one row per (step, model), JiT's reference point last."""
    rows = [{"step": st, "model": PAPER_T2I[a][0], **dict(zip(PAPER_T2I_COLUMNS, PAPER_T2I[a][1][i]))}
            for i, st in enumerate(PAPER_T2I_STEPS) for a in ("baseline", "gear")]
    rows.append({"step": PAPER_T2I_JIT[1], "model": PAPER_T2I_JIT[0], **dict.fromkeys(PAPER_T2I_COLUMNS),
                 "FDD w/ CFG": PAPER_T2I_JIT[2]})
    return pl.DataFrame(rows, schema={"step": pl.String, "model": pl.String,
                                      **dict.fromkeys(PAPER_T2I_COLUMNS, pl.Float64)})
