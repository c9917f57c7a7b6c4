"""What a Snakemake run cost, rule by rule, from the benchmark files its jobs wrote
(benchmarks/out/<rule>/<wildcards>.tsv, workflow/rules/common.smk `benchfile`): the measured
basis for the next preset's budgets (presets/scaling.yaml's header), instead of an extrapolation.

Usage (in the folder the run happened in):
  python benchmarks/study_cost.py [--out benchmarks/out] [--since UNIX_SECONDS]

Per rule: jobs, wall seconds (sum, median per job) and CPU seconds (sum); then the totals, and the
CPU seconds / 2 a 2-core host needs at best. `--since` keeps the files written after a time (one
run's jobs, where the folder holds older runs too). A job run again overwrites its file: the table
holds each job's last run.

Planning (`--plan P1 [P2 ...] --measured DIR`): what a run of `snakemake scaling` with each params
file in turn (as `make scaling`: presets/scaling-arinit.yaml, then presets/scaling.yaml) would cost,
from the jobs a measured run in DIR made (its benchmarks/out, under DIR's copies of the same params
files). The jobs come from gear's own DAG (gear/dag.py, gear/scaling.py): a pass runs a job whose
output an earlier pass did not make with the same record (the keys its stage declares), or whose
input a job of this pass remakes, as Snakemake does. A job's cost is the median of its class in the
measured run -- its rule, its ablation row with the seed dropped (guide-mini, upstream), its tuned
variant -- per
training step for the stages that train (teacher, tokenizer-init, tune, train-ar: their step
budget under the job's params), per job otherwise. Sum / 2 is the wall on 2 cores at best (two
one-thread jobs at a time, no idle core); a class the measured run never ran is listed, uncosted.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gear.schema import STAGE2_MODES  # noqa: E402  (an ar-init run's files: benchmarks/out/ar-init/...)


def read(out: Path, since: float | None) -> pl.DataFrame:
    rows = []
    for f in sorted(out.glob("*/**/*.tsv")):
        if since is not None and f.stat().st_mtime < since:
            continue
        df = pl.read_csv(f, separator="\t")
        parts = f.relative_to(out).parts  # an ar-init run's files: ar-init/<rule>/... (common.smk benchfile)
        rule = "/".join(parts[:2]) if parts[0] in STAGE2_MODES else parts[0]
        rows += [{"rule": rule, "job": str(f.relative_to(out).with_suffix("")),
                  "wall_s": float(r["s"]), "cpu_s": float(r["cpu_time"])} for r in df.iter_rows(named=True)]
    if not rows:
        raise SystemExit(f"study_cost: no benchmark files under {out}")
    return pl.DataFrame(rows)


# ---- planning a run from a measured one --------------------------------------------------------

def _steps(job, rp) -> int | None:
    """The job's training steps under its (row's) params; None for a stage that does not train."""
    if job.stage.startswith("train_ar_"):  # under ar-init the GEAR AR continues stage 1 (train_ar.budget)
        gear_continues = job.stage == "train_ar_gear" and job.mode == "ar-init"
        return rp.ar.steps - rp.tune.steps if gear_continues else rp.ar.steps
    return {"teacher": rp.teachers.demo_steps if rp.teacher == "demo" else None,
            "tokenizer_init": rp.tokenizer.steps, "tune": rp.tune.steps}.get(job.stage)


def _rule(job) -> str:
    return f"ablation_{job.stage}" if job.row else job.stage


def _cost_class(job) -> tuple[str, str]:
    """(rule, kind): a row's name less its seed (upstream-201 -> upstream; guide-mini stays), and the
    tuned variant (the control's tune trains no AR)."""
    kind = [re.sub(r"-\d+$", "", job.row or ""), job.wildcards.get("variant", "")]
    return _rule(job), " ".join(k for k in kind if k)


def benchfile(job) -> str:
    """The job's file under benchmarks/out (gear/dag.py `benchfile`, as the Snakefile names it)."""
    from gear import dag

    parts = ([job.row] if job.row else []) + [str(v) for _, v in job.wc]
    return dag.benchfile(job.mode, _rule(job), parts).removeprefix("benchmarks/out/")


def passes(files: list[Path]) -> list[list[tuple]]:
    """Per params file in turn, the jobs `snakemake scaling` runs: [(job, its params' steps), ...]."""
    from gear import dag, provenance, scaling

    made, out = {}, []  # primary output -> the record it was made with
    for f in files:
        params = dag.load_params(f)
        closure, todo = {}, [*scaling.report_deps(params), *scaling.jobs(params)]
        while todo:
            j = todo.pop()
            if j not in closure:
                closure[j] = dag.deps(j, params)
                todo += closure[j]
        own = {j: (str(dag.primary(j, params)), provenance.values(j, params)) for j in closure}
        runs: dict = {}

        def run(j) -> bool:
            if j not in runs:
                key, rec = own[j]
                runs[j] = made.get(key) != rec or any([run(d) for d in closure[j]])
            return runs[j]

        ran = [j for j in closure if run(j)]
        made.update(own[j] for j in ran)
        out.append([(j, _steps(j, dag.layout_for(params, j.row)[0])) for j in ran])
    return out


def plan(files: list[Path], measured: Path) -> None:
    per_step: dict = {}
    per_job: dict = {}
    # each measured job's last run (a later pass overwrote its benchmark file), at that pass's budget
    last = {benchfile(j): (j, n) for ran in passes([measured / f for f in files]) for j, n in ran}
    for rel, (j, n) in last.items():
        tsv = measured / "benchmarks/out" / rel
        if not tsv.is_file() and j.mode != "fresh":  # a run from before the mode folders: the file is
            legacy = rel.split("/", 1)[1]            # the job's unless a later pass remade the same path
            if legacy in last:
                continue
            tsv = measured / "benchmarks/out" / legacy
        if not tsv.is_file():
            continue
        wall = float(pl.read_csv(tsv, separator="\t")["s"][-1])
        (per_step if n else per_job).setdefault(_cost_class(j), []).append(wall / n if n else wall)
    med = {k: statistics.median(v) for k, v in {**per_step, **per_job}.items()}
    print(f"plan: {' then '.join(map(str, files))}, costed from {measured} (wall s per job, per step where it trains)")
    print(f"{'pass':6s}{'class':44s}{'jobs':>6s}{'steps':>7s}{'est. wall s':>12s}")
    total, unknown = 0.0, []
    for i, ran in enumerate(passes(files), 1):
        groups: dict = {}
        for j, n in ran:
            groups.setdefault((_cost_class(j), n), []).append(j)
        for (cls, n), jobs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if cls not in med:
                unknown.append(f"{cls[0]}{' ' + cls[1] if cls[1] else ''} x{len(jobs)}")
                continue
            wall = len(jobs) * med[cls] * (n if cls in per_step else 1)
            total += wall
            name = cls[0] + (f" [{cls[1]}]" if cls[1] else "")
            print(f"{i:<6d}{name:44s}{len(jobs):6d}{n or '':>7}{wall:12.0f}")
    print(f"total {total:.0f} s of job wall: {total / 120:.1f} min on 2 cores at best (two one-thread jobs at a time)")
    if unknown:
        print(f"not costed (the measured run has no such job): {', '.join(unknown)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--since", type=float, default=None)
    ap.add_argument("--plan", type=Path, nargs="+", help="params files, one per pass, in run order")
    ap.add_argument("--measured", type=Path, help="the measured run's folder (with --plan)")
    args = ap.parse_args()
    if args.plan:
        if args.measured is None or not (args.measured / "benchmarks/out").is_dir():
            raise SystemExit("study_cost: --plan needs --measured DIR holding a run's benchmarks/out")
        return plan(args.plan, args.measured.resolve())
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
