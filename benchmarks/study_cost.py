"""What a Snakemake run cost, rule by rule, from the benchmark files its jobs wrote
(benchmarks/out/<rule>/<wildcards>.tsv, workflow/rules/common.smk `benchfile`): the measured
basis for the next preset's budgets (presets/scaling.yaml's header), instead of an extrapolation.

Usage (in the folder the run happened in):
  python benchmarks/study_cost.py [--out benchmarks/out] [--since UNIX_SECONDS]

Per rule: jobs, wall seconds (sum, median per job) and CPU seconds (sum); then the totals, and the
CPU seconds / 2 a 2-core host needs at best. `--since` keeps the files written after a time (one
run's jobs, where the folder holds older runs too). A job run again overwrites its file: the table
holds each job's last run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl


def read(out: Path, since: float | None) -> pl.DataFrame:
    rows = []
    for f in sorted(out.glob("*/**/*.tsv")):
        if since is not None and f.stat().st_mtime < since:
            continue
        df = pl.read_csv(f, separator="\t")
        rows += [{"rule": f.relative_to(out).parts[0], "job": str(f.relative_to(out).with_suffix("")),
                  "wall_s": float(r["s"]), "cpu_s": float(r["cpu_time"])} for r in df.iter_rows(named=True)]
    if not rows:
        raise SystemExit(f"study_cost: no benchmark files under {out}")
    return pl.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--since", type=float, default=None)
    args = ap.parse_args()
    jobs = read(args.out, args.since)
    table = (jobs.group_by("rule")
             .agg(pl.len().alias("jobs"), pl.col("wall_s").sum().alias("wall_s"),
                  pl.col("wall_s").median().alias("median_job_s"), pl.col("cpu_s").sum().alias("cpu_s"))
             .sort("cpu_s", descending=True))
    print(f"{'rule':34s}{'jobs':>6s}{'wall s':>10s}{'median s':>10s}{'cpu s':>10s}")
    for r in table.iter_rows(named=True):
        print(f"{r['rule']:34s}{r['jobs']:6d}{r['wall_s']:10.0f}{r['median_job_s']:10.0f}{r['cpu_s']:10.0f}")
    wall, cpu = jobs["wall_s"].sum(), jobs["cpu_s"].sum()
    print(f"{'total':34s}{len(jobs):6d}{wall:10.0f}{'':10s}{cpu:10.0f}")
    print(f"job wall seconds / 2 = {wall / 2:.0f} s ({wall / 120:.1f} min): two jobs at a time, no idle core; "
          f"CPU seconds / 2 = {cpu / 2:.0f} s ({cpu / 120:.1f} min)")


if __name__ == "__main__":
    main()
