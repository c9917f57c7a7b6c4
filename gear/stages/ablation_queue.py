"""`gear ablation-queue`: the ablation grid as DVC experiments, one per row, named abl-<row>.

    gear ablation-queue --dry     # print the `dvc exp run --queue` commands
    gear ablation-queue           # queue them; then `dvc queue start`, `dvc queue status`,
                                  # `dvc exp show`, and `gear ablation-report --from-dvc`

Each experiment is the whole dvc.yaml DAG with the row's params set (-S), so DVC's run cache
gives the sharing: a tau row reruns tune and what follows it for the GEAR arm and leaves the
shards, teacher, warm-up and the baseline arm cached; a quantizer row reruns the warm-up and
with it the baseline arm (the Snakemake target runs only the GEAR arm of a row, so it is the
cheaper of the two). The default row is experiment abl-default (params as they are). Rows whose
teacher cannot load here are not queued: they are printed as skipped, with the reason.
The report reads each finished experiment's eval files at its commit from this repo's DVC cache,
where the queue's runs leave them (gear/report/ablations.py).
"""
from __future__ import annotations

import shlex
import subprocess

from gear import ablations as ab
from gear.report.ablations import experiment_name


def _value(v) -> str:
    return "true" if v is True else "false" if v is False else "null" if v is None else str(v)


def commands(params) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """(dvc commands, [(row, why skipped)])."""
    cmds, skipped = [], []
    for row in ab.grid(params):
        reason = ab.skip_reason(params, row)
        if reason:
            skipped.append((row.name, reason))
            continue
        sets = [*row.overrides, *((("teachers.weights", None),) if row.axis == "teacher" else ())]
        cmd = ["dvc", "exp", "run", "--queue", "-n", experiment_name(row)]
        for k, v in sets:
            cmd += ["-S", f"{k}={_value(v)}"]
        cmds.append(cmd)
    return cmds, skipped


def run(params, dry: bool = False) -> None:
    cmds, skipped = commands(params)
    for row, reason in skipped:
        print(f"# skipped {row}: {reason}")
    for cmd in cmds:
        print(shlex.join(cmd))
        if not dry:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                raise OSError(f"{shlex.join(cmd)} failed: {last}")
    if not dry:
        print(f"queued {len(cmds)} experiments; next: dvc queue start -j 1 && dvc queue status, "
              "then gear ablation-report --from-dvc")
