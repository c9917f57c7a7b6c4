"""The cost measurement behind presets/scaling.yaml's guides (issue 31): the tune step per guide size,
and the equal-compute control's step, on 1 core.

Usage:
  python benchmarks/bench_scaling.py [--rounds 3] [--steps 10] [--params presets/scaling.yaml]

Each round runs benchmarks/bench_tokenizer.py's tune worker once per guide size of scaling.guides
(interleaved, the order flipping each round, so drift in the machine's load hits every size alike),
OMP_NUM_THREADS=1 and torch at 1 thread, the embedded shapes with the guide's middle-block tap;
the table gives medians over rounds. The control's step is the GEAR step less its AR step (it also
skips the soft alignment through the guide: an upper bound).

The study's wall time is not extrapolated here: an earlier version added these steps to the CPU
study's measured time and took a fresh AR's step to cost the tune's AR step (0.19 s), where train-ar
measures 0.47 s per step plus a 2.2 s validation per log row, and it put `make scaling` at 86 min
where its run was on course for 125-140. Plan a run from a measured one instead, job by job at the new budgets:
  python benchmarks/study_cost.py --plan presets/scaling-arinit.yaml presets/scaling.yaml --measured DIR
(DIR: a folder where `make scaling` ran). This file gives the per-guide step costs a first plan, or
a new guide size, starts from.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

ROW = re.compile(r"^(whole step \(wall\)|AR step \(CE \+ hard align\))\s+([\d.]+)", re.M)


def time_guide(size: str, tap: int, steps: int) -> dict:
    cmd = [sys.executable, str(HERE / "benchmarks/bench_tokenizer.py"), "--stage", "tune", "--threads", "1",
           "--steps", str(steps), "--repeats", "1", "--set", f"tune.ar_size={size}", "--set", f"align_layer={tap}",
           "--set", "ablations.align_layer=[1]", "--set", "ar.align_layers=[2]"]
    out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "1"})
    found = dict(ROW.findall(out.stdout))
    if len(found) != 2:
        sys.exit(f"bench_scaling: bench_tokenizer failed for {size}:\n{out.stdout[-1500:]}{out.stderr[-1500:]}")
    whole, ar = float(found["whole step (wall)"]), float(found["AR step (CE + hard align)"])
    return {"gear_ms": whole, "ar_ms": ar, "control_ms": whole - ar}


def _env() -> dict:
    import os

    return dict(os.environ, PYTHONPATH=str(HERE), HF_HUB_OFFLINE="1")


def main() -> None:
    from gear.dag import load_params
    from gear.models.registry import ar_shape
    from gear.scaling import middle_block

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--params", default="presets/scaling.yaml")
    args = ap.parse_args()
    params = load_params(HERE / args.params)
    sizes = list(params.scaling.guides)
    runs = {s: [] for s in sizes}
    for r in range(args.rounds):
        for s in (sizes if r % 2 == 0 else list(reversed(sizes))):
            runs[s].append(time_guide(s, middle_block(s), args.steps))
            print(f"round {r}: {s} {runs[s][-1]}", flush=True)
    ms = {s: {k: statistics.median(x[k] for x in v) for k in v[0]} for s, v in runs.items()}
    print(f"\nbench_scaling: tune step on 1 core, medians of {args.rounds} rounds x {args.steps} steps")
    print(f"{'guide':8s}{'shape':>10s}{'GEAR step ms':>14s}{'AR step ms':>12s}{'control ms':>12s}")
    for s in sizes:
        layers, dim, _ = ar_shape(s)
        print(f"{s:8s}{f'{layers}x{dim}':>10s}{ms[s]['gear_ms']:14.0f}{ms[s]['ar_ms']:12.0f}{ms[s]['control_ms']:12.0f}")


if __name__ == "__main__":
    main()
