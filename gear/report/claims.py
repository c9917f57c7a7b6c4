"""The paper's six claims, each tested on the pipeline's outputs over the study seeds.

Each claim has the paper's figure (gear/report/paper.py), our measurement with its interval and a
verdict in the one vocabulary of gear/report/verdicts.py: holds / within noise / contradicted, or
"not concluded (1 seed)" with one seed.

  C1  STE collapses the codebook, GEAR does not: val effective size of the frozen STE tokenizer
      below study.collapse_fraction x K, GEAR's above (the intervals of both means decide).
  C2  a fresh AR on the GEAR tokenizer reaches the baseline's final NTP (and alignment) loss in
      fewer steps: per-seed speed-up (gear/report/figures.py `speedup`), geometric mean > 1.
  C3  usage entropy falls but stays above collapse: paired val entropy difference < 0 and GEAR's
      effective size above the collapse line.
  C4  reconstruction preserved: paired PSNR difference >= -study.recon_margin_db (non-inferiority).
  C5  the tokenizer becomes less teacher-like (paired pre-quantization patch CKA difference < 0)
      while the AR becomes more teacher-like (paired difference of its CKA averaged over layers > 0).
  C6  better generation at equal AR budget: paired gFID difference < 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gear.report.paper import PAPER_CLAIMS
from gear.report.verdicts import (NOT_MEASURED, Interval, combine, fmt_interval, interval_json, log_ratio_interval,
                                  mean_interval, paired_interval, verdict)


@dataclass
class Claim:
    id: str
    claim: str
    paper: str         # the paper's figure (GEAR.md section 7)
    ours: str          # our measurement, with its interval
    verdict: str
    interval: Interval  # the interval the verdict reads (for metrics JSON)

    def to_dict(self) -> dict:
        """JSON-safe (no NaN: DVC reads strict JSON)."""
        return {"claim": self.claim, "verdict": self.verdict, **interval_json(self.interval)}


def _layer_mean(e: dict, key: str) -> float:
    vals = [v for v in e[key].values() if v is not None]
    return float(np.mean(vals)) if vals else math.nan


# the arm a claim's differences are taken against, as the report names it
REF_NAMES = {"baseline": "baseline", "continue": "control"}


def resolution(r, ref: str, size: str, curve: str) -> str:
    """What the log rows let a speed-up show: a seed's ratio is (last step) / (a logged step), so next
    to 1 it moves in steps of last / (last - spacing) (compute.log_every: 50 of 300 steps -> 1.2x)."""
    steps = np.asarray(r.ar_curves[(r.seeds[0], ref, size, curve)][0])
    if len(steps) < 2:
        return ""
    last, spacing = int(steps[-1]), int(np.median(np.diff(steps)))  # the last row may come early (step 299)
    return f" (a log row every {spacing} steps: a seed's ratio moves by {last / (last - spacing):.3g}x near 1)"


def claims(r, params, speedups: dict, ref: str = "baseline") -> list[Claim]:
    """speedups[(size, curve)] = per-seed speed-ups (figures.speedup) of GEAR over `ref`.
    ref: the arm every difference is taken against: `baseline` (the warm-up tokenizer, the
    paper's comparison) or `continue` (the equal-compute control, gear/scaling.py), whose
    tokenizer got the same tuning budget on its own losses: GEAR - control separates alignment
    from more training."""
    st, conf = params.study, params.study.confidence
    K = params.tokenizer.codebook_size
    line = st.collapse_fraction * K
    name = REF_NAMES.get(ref, ref)
    tok = lambda arm, key: r.per_seed(lambda s: r.tok[(s, arm)][key])  # noqa: E731
    out = []

    gear_eff = mean_interval(tok("gear", "effective_size"), conf)
    if "ste" in r.variants:
        ste_eff = mean_interval(tok("ste", "effective_size"), conf)
        v = combine([verdict(ste_eff, line, True), verdict(gear_eff, line, False)])
        ours = (f"val effective size: STE {fmt_interval(ste_eff)}, GEAR {fmt_interval(gear_eff)} "
                f"(collapse below {line:.4g} = {st.collapse_fraction} x {K})")
        out.append(Claim("C1", "STE collapses the codebook, GEAR does not",
                         PAPER_CLAIMS["C1"], ours, v, ste_eff))
    else:
        out.append(Claim("C1", "STE collapses the codebook, GEAR does not", PAPER_CLAIMS["C1 unmeasured"],
                         "not measured: `ste` is not in tune.ablations", NOT_MEASURED,
                         Interval(math.nan, math.nan, math.nan, 0, math.nan)))

    for (size, curve), ratios in speedups.items():
        what = (f"a fresh AR on the GEAR tokenizer reaches the baseline's final "
                f"{'NTP' if curve == 'ntp' else 'alignment'} loss in fewer steps")
        if params.stage2 == "ar-init":  # the GEAR AR continues stage 1: its speed says nothing of a fresh one
            out.append(Claim(f"C2 {curve} ({size})", what, PAPER_CLAIMS[f"C2 {curve}"],
                             "not measured: stage2 = ar-init (the GEAR AR continues its stage-1 AR; `fresh` "
                             "measures it)", NOT_MEASURED, Interval(math.nan, math.nan, math.nan, 0, math.nan)))
            continue
        iv = log_ratio_interval(ratios, conf)
        out.append(Claim(f"C2 {curve} ({size})", what, PAPER_CLAIMS[f"C2 {curve}"],
                         f"speed-up{'' if ref == 'baseline' else ' over ' + name} (geometric mean) "
                         f"{fmt_interval(iv, 3)}x{resolution(r, ref, size, curve)}", verdict(iv, 1.0, False), iv))

    ent = paired_interval(tok(ref, "entropy"), tok("gear", "entropy"), conf)
    v = combine([verdict(ent, 0.0, True), verdict(gear_eff, line, False)])
    out.append(Claim("C3", "usage entropy falls but stays above collapse", PAPER_CLAIMS["C3"],
                     f"val entropy GEAR - {name} {fmt_interval(ent)} nats; GEAR effective size "
                     f"{fmt_interval(gear_eff)} (collapse below {line:.4g})", v, ent))

    psnr = paired_interval(tok(ref, "psnr"), tok("gear", "psnr"), conf)
    rfid = paired_interval(tok(ref, "rfid"), tok("gear", "rfid"), conf)
    out.append(Claim("C4", "reconstruction preserved", PAPER_CLAIMS["C4"],
                     f"val PSNR GEAR - {name} {fmt_interval(psnr)} dB (margin -{st.recon_margin_db} dB); "
                     f"rFID GEAR - {name} {fmt_interval(rfid)}", verdict(psnr, -st.recon_margin_db, False), psnr))

    cka = paired_interval(tok(ref, "cka_pre"), tok("gear", "cka_pre"), conf)
    out.append(Claim("C5 tokenizer", "the tokenizer becomes less teacher-like", PAPER_CLAIMS["C5 tokenizer"],
                     f"patch CKA pre GEAR - {name} {fmt_interval(cka)}", verdict(cka, 0.0, True), cka))
    for size in r.sizes:
        ar = lambda arm: r.per_seed(lambda s: _layer_mean(r.samples[(s, arm, size)], "ar_cka"))  # noqa: E731
        d = paired_interval(ar(ref), ar("gear"), conf)
        out.append(Claim(f"C5 AR ({size})", "the AR becomes more teacher-like", PAPER_CLAIMS["C5 AR"],
                         f"AR CKA (mean over layers) GEAR - {name} {fmt_interval(d)}", verdict(d, 0.0, False), d))

    for size in r.sizes:
        fid = lambda arm: r.per_seed(lambda s: r.samples[(s, arm, size)]["fid"])  # noqa: E731
        d = paired_interval(fid(ref), fid("gear"), conf)
        out.append(Claim(f"C6 ({size})", "better generation at equal AR budget", PAPER_CLAIMS["C6"],
                         f"gFID GEAR - {name} {fmt_interval(d)}", verdict(d, 0.0, True), d))
    return out
