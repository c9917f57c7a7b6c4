"""Curves and figures shared by the reports: smoothing, the steps-to-baseline speed-up, the seed
band, and the matplotlib helpers (the object API renders with Agg: no pyplot, no global state).

Speed-up (per seed): both curves smoothed by a trailing mean over SMOOTH logged points. If GEAR's
smoothed curve reaches the baseline's smoothed final value at step g, speed-up = baseline's last
step / g (>= 1 when it gets there first). If it never does, the baseline's curve reaches GEAR's
final value at step b and speed-up = b / GEAR's last step (< 1). Seeds combine as a geometric
mean with a t interval on the log ratios (verdicts.log_ratio_interval).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from gear.report.document import fmt
from gear.report.verdicts import Interval, fmt_interval

SMOOTH = 5  # logged points in the trailing mean of the loss curves
COLORS = {"baseline": "tab:blue", "gear": "tab:red", "ste": "tab:green"}

Curve = tuple[np.ndarray, np.ndarray]  # (steps, values)


def smooth(values: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Trailing mean over the last `window` points (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def speedup(base: Curve, gear: Curve) -> dict:
    """Steps-to-reach ratio of one seed (module docstring), symmetric around 1."""
    sb, sg = smooth(base[1]), smooth(gear[1])
    first = lambda steps: int(steps[steps > 0][0]) if np.any(steps > 0) else 1  # noqa: E731
    hit = np.flatnonzero(sg <= sb[-1])
    if len(hit):
        step = max(int(gear[0][hit[0]]), first(gear[0]))
        return {"baseline_final": float(sb[-1]), "gear_final": float(sg[-1]), "gear_reach_step": step,
                "baseline_reach_step": None, "ratio": int(base[0][-1]) / step}
    step = max(int(base[0][np.flatnonzero(sb <= sg[-1])[0]]), first(base[0]))
    return {"baseline_final": float(sb[-1]), "gear_final": float(sg[-1]), "gear_reach_step": None,
            "baseline_reach_step": step, "ratio": step / int(gear[0][-1])}


def speedup_row(label: str, per: list[dict], iv: Interval, confidence: float) -> dict:
    """The table row of one curve's speed-ups: per seed, where each curve got there, the mean."""
    return {"curve": label, "per seed": " / ".join(f"{p['ratio']:.3g}x" for p in per),
            "GEAR reaches baseline final at": " / ".join(fmt(p["gear_reach_step"]) for p in per),
            "baseline reaches GEAR final at": " / ".join(fmt(p["baseline_reach_step"]) for p in per),
            f"speed-up, geometric mean [{confidence:.0%} CI]": fmt_interval(iv, 3)}


def seed_band(curves: list[Curve], confidence: float):
    """(steps, mean, lo, hi) of smoothed curves over seeds: the mean's t interval (no band for one)."""
    n = min(len(c[0]) for c in curves)
    v = np.stack([smooth(c[1])[:n] for c in curves])
    mean = v.mean(0)
    if len(curves) < 2:
        return curves[0][0][:n], mean, mean, mean
    half = stats.t.ppf((1 + confidence) / 2, len(curves) - 1) * v.std(0, ddof=1) / np.sqrt(len(curves))
    return curves[0][0][:n], mean, mean - half, mean + half


def plot_band(ax, curves: list[Curve], confidence: float, color: str, label: str) -> None:
    """The seed mean of smoothed curves with its t-interval band."""
    steps, mean, lo, hi = seed_band(curves, confidence)
    ax.plot(steps, mean, color=color, label=label)
    ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)


def figure(n: int) -> tuple[Figure, list]:
    """A row of n panels."""
    fig = Figure(figsize=(5 * n, 3.5))
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def save(fig: Figure, folder: Path, subdir: str, name: str) -> str:
    """Write folder/subdir/name (PNG without a timestamp: reruns are byte-identical); the path
    relative to folder, as the page links it."""
    fig.tight_layout()
    fig.savefig(folder / subdir / name, dpi=100, metadata={"Software": None})
    return f"{subdir}/{name}"
