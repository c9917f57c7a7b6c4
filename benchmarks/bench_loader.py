"""Loader throughput: samples/s of TrainStream over the embedded shards (built if missing).

    .venv/bin/python benchmarks/bench_loader.py [--params params.yaml] [--batches 300] [key=value ...]
"""
from __future__ import annotations

import argparse
import time

from gear import cli, paths
from gear.config import load_params
from gear.data.loader import TrainStream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("overrides", nargs="*", help="params overrides, e.g. compute.workers=0")
    args = ap.parse_args()
    params = load_params(args.params, args.overrides)

    if not paths.manifest(params).is_file():
        t = time.perf_counter()
        # through the CLI, as the pipeline builds them (a stage module is the CLI's alone to import)
        cli_args = ["shard", "--params", args.params, *[a for o in args.overrides for a in ("--set", o)]]
        if cli.main(cli_args) != 0:
            raise SystemExit("gear shard failed (see above)")
        print(f"built shards in {time.perf_counter() - t:.1f} s")

    for workers in sorted({0, params.compute.workers}):
        params.compute.workers = workers
        t = time.perf_counter()
        stream = TrainStream(params, "train", args.batch_size)
        next(stream)  # index + worker start-up, reported apart
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.batches):
            images, labels = next(stream)
        dt, n = time.perf_counter() - start, args.batches * args.batch_size
        # In-process decoding (workers=0) also gives a load-independent figure: samples per CPU second.
        per_cpu = f", {n / (time.process_time() - cpu):,.0f} samples per CPU s" if workers == 0 else ""
        print(f"workers={workers}: start-up {start - t:.2f} s, {args.batches} batches of {args.batch_size} "
              f"({params.data.resolution} px, augment random_crop={params.data.random_crop} "
              f"hflip={params.data.hflip}): {n / dt:,.0f} samples/s{per_cpu}")


if __name__ == "__main__":
    main()
