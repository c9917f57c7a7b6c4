"""The seed's six claims, each tested on the pipeline's outputs over the study seeds.

Each claim has the seed's figure, our measurement with its interval (gear/metrics/intervals.py)
and a verdict: "holds" when the interval lies on the claimed side, "contradicted" when it lies on
the other side, "within noise" when it straddles the boundary (always so with one seed).

  C1  STE collapses the codebook, GEAR does not: val effective size of the frozen STE tokenizer
      below study.collapse_fraction x K, GEAR's above (the intervals of both means decide).
  C2  a fresh AR on the GEAR tokenizer reaches the baseline's final NTP (and alignment) loss in
      fewer steps: per-seed speed-up (gear/stages/report.py `speedup`), geometric mean > 1.
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

from gear.metrics.intervals import Interval, fmt_interval, log_ratio_interval, mean_interval, paired_interval

HOLDS, NOISE, CONTRADICTED = "holds", "within noise", "contradicted"


@dataclass
class Claim:
    id: str
    claim: str
    seed: str          # the seed's figure (GEAR.md section 7)
    ours: str          # our measurement, with its interval
    verdict: str
    interval: Interval  # the interval the verdict reads (for metrics JSON)

    def to_dict(self) -> dict:
        """JSON-safe (no NaN: DVC reads strict JSON)."""
        iv = self.interval
        num = lambda x: x if math.isfinite(x) else None  # noqa: E731
        return {"claim": self.claim, "verdict": self.verdict, "mean": num(iv.mean), "lo": num(iv.lo),
                "hi": num(iv.hi), "n_seeds": iv.n}


def side(iv: Interval, bound: float, claimed_below: bool) -> str:
    """Verdict for a claim that the quantity lies below (or above) `bound`."""
    if not iv.defined or iv.lo <= bound <= iv.hi:
        return NOISE
    below = iv.hi < bound
    return HOLDS if below == claimed_below else CONTRADICTED


def both(*verdicts: str) -> str:
    """A claim made of parts: contradicted if any part is, holds if all hold."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return HOLDS if all(v == HOLDS for v in verdicts) else NOISE


def _layer_mean(e: dict, key: str) -> float:
    vals = [v for v in e[key].values() if v is not None]
    return float(np.mean(vals)) if vals else math.nan


def claims(r, params, speedups: dict) -> list[Claim]:
    """speedups[(size, curve)] = per-seed speed-ups (report.speedup)."""
    st, conf = params.study, params.study.confidence
    K = params.tokenizer.codebook_size
    line = st.collapse_fraction * K
    tok = lambda arm, key: r.per_seed(lambda s: r.tok[(s, arm)][key])  # noqa: E731
    out = []

    gear_eff = mean_interval(tok("gear", "effective_size"), conf)
    if "ste" in r.variants:
        ste_eff = mean_interval(tok("ste", "effective_size"), conf)
        v = both(side(ste_eff, line, True), side(gear_eff, line, False))
        ours = (f"val effective size: STE {fmt_interval(ste_eff)}, GEAR {fmt_interval(gear_eff)} "
                f"(collapse below {line:.4g} = {st.collapse_fraction} x {K})")
        out.append(Claim("C1", "STE collapses the codebook, GEAR does not",
                         "STE gFID 104.93 / rFID 59.72 vs GEAR 10.63 / 1.640", ours, v, ste_eff))
    else:
        out.append(Claim("C1", "STE collapses the codebook, GEAR does not", "STE gFID 104.93 / rFID 59.72",
                         "not measured: `ste` is not in tune.ablations", NOISE, Interval(math.nan, math.nan,
                                                                                          math.nan, 0, math.nan)))

    for (size, curve), ratios in speedups.items():
        iv = log_ratio_interval(ratios, conf)
        seed_fig = "2.5x (text-to-image)" if curve == "ntp" else "11.1x REPA loss (text-to-image)"
        out.append(Claim(f"C2 {curve} ({size})", f"a fresh AR on the GEAR tokenizer reaches the baseline's final "
                         f"{'NTP' if curve == 'ntp' else 'alignment'} loss in fewer steps", seed_fig,
                         f"speed-up (geometric mean) {fmt_interval(iv, 3)}x", side(iv, 1.0, False), iv))

    ent = paired_interval(tok("baseline", "entropy"), tok("gear", "entropy"), conf)
    v = both(side(ent, 0.0, True), side(gear_eff, line, False))
    out.append(Claim("C3", "usage entropy falls but stays above collapse",
                     "entropy and effective size fall, bottom out, converge above collapse",
                     f"val entropy GEAR - baseline {fmt_interval(ent)} nats; GEAR effective size "
                     f"{fmt_interval(gear_eff)} (collapse below {line:.4g})", v, ent))

    psnr = paired_interval(tok("baseline", "psnr"), tok("gear", "psnr"), conf)
    rfid = paired_interval(tok("baseline", "rfid"), tok("gear", "rfid"), conf)
    out.append(Claim("C4", "reconstruction preserved", "rFID 1.72 -> 1.64 (VQ-16)",
                     f"val PSNR GEAR - baseline {fmt_interval(psnr)} dB (margin -{st.recon_margin_db} dB); "
                     f"rFID GEAR - baseline {fmt_interval(rfid)}", side(psnr, -st.recon_margin_db, False), psnr))

    cka = paired_interval(tok("baseline", "cka_pre"), tok("gear", "cka_pre"), conf)
    out.append(Claim("C5 tokenizer", "the tokenizer becomes less teacher-like",
                     "patch CKA 0.173 -> 0.107 (pre-quantization)",
                     f"patch CKA pre GEAR - baseline {fmt_interval(cka)}", side(cka, 0.0, True), cka))
    for size in r.sizes:
        ar = lambda arm: r.per_seed(lambda s: _layer_mean(r.samples[(s, arm, size)], "ar_cka"))  # noqa: E731
        d = paired_interval(ar("baseline"), ar("gear"), conf)
        out.append(Claim(f"C5 AR ({size})", "the AR becomes more teacher-like", "more teacher-like at every depth",
                         f"AR CKA (mean over layers) GEAR - baseline {fmt_interval(d)}", side(d, 0.0, False), d))

    for size in r.sizes:
        fid = lambda arm: r.per_seed(lambda s: r.samples[(s, arm, size)]["fid"])  # noqa: E731
        d = paired_interval(fid("baseline"), fid("gear"), conf)
        out.append(Claim(f"C6 ({size})", "better generation at equal AR budget",
                         "gFID B 20.16 -> 16.96, L 12.70 -> 8.66, XL 8.20 -> 6.76",
                         f"gFID GEAR - baseline {fmt_interval(d)}", side(d, 0.0, True), d))
    return out
