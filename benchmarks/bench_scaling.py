"""The cost measurement behind presets/scaling.yaml (issue 31): the tune step per guide size, and the
equal-compute control's step, on 1 core, extrapolated to the study's wall time on 2 cores.

Usage:
  python benchmarks/bench_scaling.py [--rounds 3] [--steps 10] [--params presets/scaling.yaml]

Each round runs benchmarks/bench_tokenizer.py's tune worker once per guide size of scaling.guides
(interleaved, the order flipping each round, so drift in the machine's load hits every size alike),
OMP_NUM_THREADS=1 and torch at 1 thread, the embedded shapes with the guide's middle-block tap;
the table gives medians over rounds. The control's step is the GEAR step less its AR step (it also
skips the soft alignment through the guide: an upper bound).

Extrapolation (printed, and pasted into the preset's header): what the study adds to the CPU study's
measured wall time (README: 4 seeds, 2 cores) is its extra tune steps -- every ladder and lambda row,
tune.steps each, per ladder seed, and the control's tune per study seed -- plus the control's
downstream (tokens, a fresh AR, samples, evaluation), counted as one GEAR arm's share of a seed's
measured time, the claims under stage2 = ar-init (the GEAR arm again per seed: its tune and
its continued AR; the baseline is shared), and the upstream rows of study.reseed_upstream (per
reseeded seed the CPU study's shared stages again, on both cores, and one GEAR tune).
Core-seconds / 2 = wall seconds on 2 cores (jobs run two at a time, 1 thread each). The CPU study's time is the README's measurement (an upper bound:
the test suite ran beside it), and the step times here are measured on whatever else the machine
runs: the estimate is high where the machine was busy.
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

# The CPU study's measured run (README "CPU study"): 4 seeds, 2 cores, wall seconds; the shared
# stages took ~5 min and each seed ~9 min (two tunes, two fresh ARs, their samples and evaluations).
CPU_STUDY_WALL_S, CPU_STUDY_SHARED_S, CPU_STUDY_PER_SEED_S = 2472, 300, 543
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


def extrapolate(params, ms: dict, ar_init=None) -> dict:
    """Core-seconds the study adds to the CPU study, and the whole study's wall time on 2 cores."""
    from gear import scaling

    steps = params.tune.steps
    rows = [(size, row) for size, row in scaling.ladder(params) if not row.default]
    rows += [(scaling.largest_guide(params), row) for _, row in scaling.lambdas(params)
             if not row.default and row not in [r for _, r in rows]]
    n_ladder, n_seeds = len(scaling.ladder_seeds(params)), len(params.study.seeds)
    ladder_cs = n_ladder * sum(steps * ms[size]["gear_ms"] / 1000 for size, _ in rows)
    control_tune_cs = n_seeds * steps * ms[params.tune.ar_size]["control_ms"] / 1000
    # one arm's downstream (tokens, a fresh AR, samples, evaluation) of a measured seed: the seed's time
    # less its two tunes, halved; in core-seconds (2 cores)
    tune_cs = steps * ms[params.tune.ar_size]["gear_ms"] / 1000
    arm_cs = max(2 * CPU_STUDY_PER_SEED_S - 2 * tune_cs, 0) / 2
    control_cs = control_tune_cs + n_seeds * arm_cs
    # the claims under stage2 = ar-init: per seed the GEAR arm again (its tune at the guide of each
    # AR size, here one, and its continued AR, sampled and evaluated); the baseline is shared
    # with ar_init's params (presets/scaling-arinit.yaml): an arm's downstream scaled by its AR steps,
    # the baseline's fresh AR (ar.steps there) and GEAR's continued one (ar.steps - tune.steps)
    if ar_init is None:
        ar_init_cs = n_seeds * len(params.ar.sizes) * (tune_cs + arm_cs)
    else:
        base, cont = ar_init.ar.steps, ar_init.ar.steps - ar_init.tune.steps
        ar_init_cs = n_seeds * len(params.ar.sizes) * (tune_cs + arm_cs * (base + cont) / params.ar.steps)
    # the upstream rows (study.reseed_upstream): per reseeded seed its own teacher, warm-up, baseline
    # freeze and evaluation and real statistics -- the CPU study's shared stages on both cores, an upper
    # bound (they include the shards and the baseline's tokens) -- and one GEAR tune (freeze and
    # evaluation: seconds)
    n_up = len([r for _, r in scaling.upstream(params) if not r.default])
    upstream_cs = n_up * (2 * CPU_STUDY_SHARED_S + tune_cs)
    main_s = CPU_STUDY_SHARED_S + n_seeds * CPU_STUDY_PER_SEED_S
    extra_s = (ladder_cs + control_cs + ar_init_cs + upstream_cs) / 2
    return {"rows": [r.name for _, r in rows], "ladder_core_s": ladder_cs, "control_core_s": control_cs,
            "ar_init_core_s": ar_init_cs, "upstream_core_s": upstream_cs, "main_wall_s": main_s,
            "extra_wall_s": extra_s,
            "total_wall_s": main_s + extra_s}


def main() -> None:
    from gear.dag import load_params
    from gear.models.registry import ar_shape
    from gear.scaling import middle_block

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--params", default="presets/scaling.yaml")
    ap.add_argument("--ar-init", default="presets/scaling-arinit.yaml", help="the ar-init pass's params")
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
    e = extrapolate(params, ms, load_params(HERE / args.ar_init))
    print(f"\n{args.params}: rows {e['rows']}; ladder {e['ladder_core_s']:.0f} core-s, control "
          f"{e['control_core_s']:.0f} core-s, ar-init claims {e['ar_init_core_s']:.0f} core-s, upstream rows "
          f"{e['upstream_core_s']:.0f} core-s; the CPU study's "
          f"part {e['main_wall_s'] / 60:.0f} min (README), the "
          f"study's own {e['extra_wall_s'] / 60:.0f} min: about {e['total_wall_s'] / 60:.0f} min on 2 cores")


if __name__ == "__main__":
    main()
