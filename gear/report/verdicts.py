"""Seed statistics and the one verdict vocabulary of every report table.

Every comparison pairs the two arms seed by seed (same study seed: same AR init, data order and
sampling generators), takes the differences d_s = GEAR_s - baseline_s and reports their mean with
a two-sided Student t interval (scipy.stats.ttest_1samp(d).confidence_interval, n - 1 degrees of
freedom). A t interval, not a bootstrap: with the 2-5 seeds a CPU study affords, a bootstrap
resamples so few values that its interval is too narrow. With one seed there is no interval
(nan bounds) and no difference can be told from noise.

Verdicts (a claim of the paper read on our interval, `verdict`): "holds" when the interval lies on
the claimed side of the boundary, "contradicted" when it lies on the other side, "within noise"
when it contains the boundary, and ONE_SEED when there is no interval (fewer than 2 seeds).
Readings (a comparison without a claim, `reading`): "GEAR better" / "GEAR worse", with the same
"within noise" and ONE_SEED. Every report uses these words and no others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

HOLDS, WITHIN_NOISE, CONTRADICTED = "holds", "within noise", "contradicted"
ONE_SEED = "not concluded (1 seed)"   # no interval: fewer than 2 seeds
NOT_MEASURED = "n/a"                  # the quantity is not measured here (a reason may follow)
LEGEND = (f"Verdicts: {HOLDS} (the interval lies on the claimed side), {CONTRADICTED} (on the other side), "
          f"{WITHIN_NOISE} (it contains the boundary); with one seed there is no interval: {ONE_SEED}.")


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float          # nan when n < 2
    hi: float
    n: int
    std: float         # sample std (ddof 1) of the values; nan when n < 2

    @property
    def defined(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)

    def contains(self, x: float) -> bool:
        return not self.defined or self.lo <= x <= self.hi


def _clean(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0:
        raise ValueError(f"expected a non-empty 1-d sequence of values, got shape {a.shape}")
    return a


def mean_interval(values, confidence: float = 0.95) -> Interval:
    """Mean of `values` with its two-sided t interval at `confidence`."""
    a = _clean(values)
    n, mean = len(a), float(a.mean())
    if n < 2 or not np.all(np.isfinite(a)):
        return Interval(mean, math.nan, math.nan, n, float(a.std(ddof=1)) if n >= 2 else math.nan)
    std = float(a.std(ddof=1))
    if std <= 1e-12 * max(1.0, abs(mean)):  # identical values (to rounding): the interval is the point
        return Interval(mean, mean, mean, n, 0.0)
    ci = stats.ttest_1samp(a, 0.0).confidence_interval(confidence_level=confidence)
    return Interval(mean, float(ci.low), float(ci.high), n, std)


def paired_interval(baseline, gear, confidence: float = 0.95) -> Interval:
    """Mean of the per-seed differences gear - baseline with its t interval."""
    b, g = _clean(baseline), _clean(gear)
    if b.shape != g.shape:
        raise ValueError(f"paired values need one per seed on both sides, got {len(b)} and {len(g)}")
    return mean_interval(g - b, confidence)


def log_ratio_interval(ratios, confidence: float = 0.95) -> Interval:
    """Geometric mean of positive ratios with its interval, back on the ratio scale (t on logs)."""
    r = _clean(ratios)
    if np.any(~(r > 0)):
        raise ValueError(f"ratios must be > 0, got {r.tolist()}")
    iv = mean_interval(np.log(r), confidence)
    return Interval(math.exp(iv.mean), math.exp(iv.lo), math.exp(iv.hi), iv.n, iv.std)


def verdict(iv: Interval, bound: float, claimed_below: bool) -> str:
    """A claim that the quantity lies below (or above) `bound`, read on its interval."""
    if iv.n < 2:
        return ONE_SEED
    if iv.contains(bound):
        return WITHIN_NOISE
    return HOLDS if (iv.hi < bound) == claimed_below else CONTRADICTED


def combine(verdicts: list[str]) -> str:
    """A claim made of parts (or at every step): contradicted if any part is, holds if all do."""
    for word in (ONE_SEED, CONTRADICTED):
        if word in verdicts:
            return word
    return HOLDS if all(v == HOLDS for v in verdicts) else WITHIN_NOISE


def reading(diff: Interval, lower_is_better: bool | None, zero: float = 0.0,
            words: tuple[str, str] = ("GEAR better", "GEAR worse")) -> str:
    """words[0] / words[1] (better / worse), "within noise" or ONE_SEED for a paired difference
    (GEAR - baseline); lower_is_better None: a metric without a better direction, "-" or "differs"."""
    if diff.n < 2:
        return ONE_SEED
    if diff.contains(zero):
        return "-" if lower_is_better is None else WITHIN_NOISE
    if lower_is_better is None:
        return "differs"
    better = diff.hi < zero if lower_is_better else diff.lo > zero
    return words[0] if better else words[1]


def one_seed_note(advice: str = "") -> str:
    """The paragraph every report opens with when study.seeds holds one seed."""
    return ("**One seed: nothing can be concluded from the differences below.** They are single runs, with no "
            "estimate of the run-to-run noise; set `study.seeds` to three or more seeds" + (f" {advice}" if advice else "")
            + ".")


def interval_json(iv: Interval) -> dict:
    """JSON-safe (no NaN: DVC reads strict JSON)."""
    return {"mean": finite_or_none(iv.mean), "lo": finite_or_none(iv.lo), "hi": finite_or_none(iv.hi), "n_seeds": iv.n}


def finite_or_none(x) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def fmt_interval(iv: Interval, digits: int = 4) -> str:
    """`mean [lo, hi]` (or `mean (1 seed, no interval)`)."""
    m = f"{iv.mean:.{digits}g}"
    if not iv.defined:
        return f"{m} (n={iv.n}, no interval)"
    return f"{m} [{iv.lo:.{digits}g}, {iv.hi:.{digits}g}]"


def fmt_mean_std(values, digits: int = 4) -> str:
    a = _clean(values)
    return f"{a.mean():.{digits}g}" + (f" ± {a.std(ddof=1):.{digits}g}" if len(a) > 1 else "")
