"""`gear`: one command per pipeline stage, shared by the Snakefile rules and dvc.yaml stages.

    gear <stage> --params params.yaml [--set key=value ...] [stage options]

Params are loaded and validated before anything else runs; a bad key, value, input or checkpoint
ends the command with a one-line reason and a non-zero exit, before any compute.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from gear.config import ParamsError
from gear.dag import load_params
from gear.stagespec import FREE, SAID

GUIDE = ("--size", dict(default=None, help="stage2 = ar-init only: the AR size that guides stage 1 (one of ar.sizes)"))
SEED = ("--seed", dict(type=int, default=None, help="study seed (one of study.seeds; default: the only one)"))
ROW = ("--ablation", dict(default=None, metavar="ROW",
                          help="run this stage for an ablation row (gear/ablations.py) under ablations/ROW/"))

# stage name -> (module, help, extra arguments)
STAGES: dict[str, tuple[str, str, list[tuple[str, dict]]]] = {
    "shard": ("gear.stages.shard", "write webdataset shards + manifest from the embedded set or an ImageFolder", []),
    "teacher": ("gear.stages.teacher", "train the offline `demo` alignment teacher on the shards", [ROW]),
    "tokenizer-init": ("gear.stages.tokenizer_init", "warm-up tokenizer training (reconstruction + GAN)", [ROW]),
    "tune": ("gear.stages.tune", "GEAR end-to-end tuning of tokenizer + AR", [
        ("--variant", dict(default="gear", help="gear (uses params e2e_mode) or an ablation in tune.ablations")), SEED,
        GUIDE, ROW]),
    "freeze": ("gear.stages.freeze", "export a tokenizer EMA as a frozen artifact + codebook stats", [
        ("--arm", dict(required=True, help="baseline | gear | an ablation name")), SEED, GUIDE, ROW]),
    "tokenize": ("gear.stages.tokenize", "pre-extract token shards of the train split with a frozen tokenizer", [
        ("--arm", dict(required=True, help="baseline | gear")), SEED, GUIDE, ROW]),
    "train-ar": ("gear.stages.train_ar", "train an AR on a frozen tokenizer (LlamaGen-REPA recipe): fresh, or (stage2 = ar-init) the GEAR arm continuing stage 1", [
        ("--arm", dict(required=True, help="baseline | gear")),
        ("--size", dict(required=True, help="AR size: tiny | small | B | L | XL | custom")), SEED, ROW]),
    "sample": ("gear.stages.sample", "class-conditional sampling with KV cache and CFG", [
        ("--arm", dict(required=True)), ("--size", dict(required=True)), SEED, ROW]),
    "evaluate": ("gear.stages.evaluate", "metrics JSON for a tokenizer, a samples file, or the real statistics", [
        ("what", dict(choices=["real", "tokenizer", "samples"])),
        ("--arm", dict(default=None)), ("--size", dict(default=None)), SEED, ROW]),
    "report": ("gear.report.main", "write reports/index.{md,html}, claims.json and headline.json from the metrics", []),
    "scaling-report": ("gear.report.scaling", "write reports/scaling.{md,html,json}: issue 31's control, guide ladder "
                       "and lambda (gear/scaling.py)", []),
    "ablation-report": ("gear.report.ablations", "write reports/ablations.{md,html,json}: the paper's ablation tables", [
        ("--from-dvc", dict(nargs="?", const="", default=None, metavar="JSON",
                            help="the experiments abl-<row> of `dvc exp show --json` (run now, or a saved file, "
                                 "which only names their commits) instead of ablations/: each row's files "
                                 "are read from this repository's DVC cache at its experiment's commit"))]),
    "ablation-queue": ("gear.stages.ablation_queue", "queue the ablation grid as DVC experiments abl-<row>", [
        ("--dry", dict(action="store_true", help="print the dvc commands, queue nothing"))]),
    # the text-to-image room: its stages (gear/stages/t2i_*.py), library (gear/t2i/) and report
    "t2i-shard": ("gear.stages.t2i_shard", "write image-caption webdataset shards + held-out prompts (embedded, folder or JSONL)", []),
    "t2i-encode": ("gear.stages.t2i_encode", "pre-extract caption embeddings of every pair and prompt with t2i.text.encoder", []),
    "t2i-judge": ("gear.stages.t2i_judge", "train the prompt-following classifier on the embedded pairs' attributes", []),
    "t2i-tokenize": ("gear.stages.t2i_tokenize", "token shards of the pairs under a frozen class-conditional tokenizer", [
        ("--arm", dict(required=True, help="baseline | gear")), SEED]),
    "t2i-train": ("gear.stages.t2i_train", "train a fresh caption-conditioned AR on a frozen tokenizer's tokens", [
        ("--arm", dict(required=True, help="baseline | gear")), SEED]),
    "t2i-sample": ("gear.stages.t2i_sample", "sample the held-out prompts from every EMA snapshot, with and without CFG", [
        ("--arm", dict(required=True, help="baseline | gear")), SEED]),
    "t2i-evaluate": ("gear.stages.t2i_evaluate", "FDD, precision / recall and prompt accuracy of the samples, or the real features", [
        ("what", dict(choices=["real", "samples"])), ("--arm", dict(default=None)), SEED]),
    "t2i-report": ("gear.report.t2i", "write reports/t2i.{md,html,json}: the paper's T2I table beside ours", []),
    # the public checkpoints of params `released:` (gear/released.py): target `released`
    "released-tokenizer": ("gear.stages.released_tokenizer", "rFID / PSNR / SSIM of a public tokenizer file", [
        ("--name", dict(required=True, help="vq_original | vq_warmup | vq_gear | lfq_* | ibq_*"))]),
    "released-sample": ("gear.stages.released_sample", "sample a public LlamaGen c2i GPT with its published settings", [
        ("--name", dict(required=True, help="B | L | XL"))]),
    "released-evaluate": ("gear.stages.released_evaluate", "gFID / IS / precision / recall of a public GPT's samples", [
        ("--name", dict(required=True, help="B | L | XL"))]),
    "released-report": ("gear.report.released", "write reports/released.{md,html,json}: ours beside the published", []),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gear", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (_, help_text, extra) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param, e.g. --set tau=0.5 --set ar.lr=3e-4 (repeatable)")
        for flag, kwargs in extra:
            p.add_argument(flag, **kwargs)
    p = sub.add_parser("dag", help="write dvc.yaml, t2i/dvc.yaml and released/dvc.yaml from the stage table (gear/dag.py)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--check", action="store_true", help="only say whether the files are up to date (exit 1 if not)")
    p = sub.add_parser("params", help="validate params and print them resolved (a preset: merged over params.yaml)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write them to FILE instead, atomically (--out params.yaml: how DVC runs a preset)")
    return parser


def check_ablation(params, row: str, extra: dict) -> None:
    """An ablation row runs the GEAR arm's stages (and, where it trains its own warm-up, that warm-up's
    baseline tokenizer), and only rows that can run here."""
    from pathlib import Path

    from gear import ablations

    r = ablations.find(params, row)
    own_warmup = ablations.layout(params, r).warmup != Path(".")
    for flag in ("variant", "arm"):
        if extra.get(flag) not in (None, "gear") and not (flag == "arm" and extra[flag] == "baseline" and own_warmup):
            raise ParamsError(f"--ablation {row} runs the GEAR arm: --{flag} must be gear, got {extra[flag]!r}")
    reason = ablations.skip_reason(params, r)
    if reason:
        raise ParamsError(f"ablation row {row} is skipped here: {reason}")


def run_stage(stage: str, params, params_file: str, extra: dict, row: str | None) -> None:
    """One stage as a job of the DAG (gear/dag.py): its inputs checked against the current params
    (gear/provenance.py), one writer for its outputs, the stage given only its declared params
    and its row's paths, and its outputs stamped with what made them."""
    import contextlib

    from gear import dag, paths, provenance
    from gear.guard import ParamsView
    module = importlib.import_module(STAGES[stage][0])
    if row is not None:
        check_ablation(params, row, extra)
    job = dag.job_for(stage, extra, row, params)
    if job is None:  # not a job of the DAG (e.g. a bad --arm: the stage says why)
        module.run(params, **extra)
        return
    stage_params, layout = dag.layout_for(params, row)
    audit = os.environ.get("GEAR_AUDIT_READS")  # a file: record what the stage reads instead of refusing
    declared = dag.declared(job.stage, job.mode)
    view = ParamsView(stage_params, None if audit else declared, job.stage, free=FREE | (SAID - declared))
    if hasattr(module, "precheck"):  # the stage's own cheap checks of params and named files first
        module.precheck(stage_params, **extra)  # (checks only: what they read makes no output)
    provenance.check_inputs(job, params, params_file)
    main = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0
    lock = provenance.output_lock(job, params, params_file) if main else contextlib.nullcontext()
    with lock, paths.using(layout):
        module.run(view, **extra)
        if main:
            provenance.write(job, params, view.reads)  # the keys it read, exactly
    if audit:
        with open(audit, "a") as f:
            f.write(json.dumps({"stage": job.stage, "reads": sorted(view.reads)}) + "\n")


def write_params(params, args) -> int:
    """`gear params`: the merged params on stdout, or as a complete file (--out; everything was
    read before, so --out params.yaml replaces the defaults safely)."""
    import yaml

    from gear.config import params_yaml
    from gear.io import atomic_path

    from gear.models.perceptual import check_perceptual

    check_perceptual(params.tokenizer)  # lpips without its weight files: refused here too, not only at run time
    if args.out is None:
        print(yaml.safe_dump(params.to_dict(), sort_keys=False), end="")
        return 0
    with atomic_path(args.out) as tmp:
        tmp.write_text(params_yaml(params, args.params, args.overrides, args.out))
    print(f"gear params: wrote {args.out} ({args.params} merged over params.yaml)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gear.data.shard import DataError
    from gear.io import ArtifactError
    from gear.train.state import NonFiniteLossError

    try:
        params = load_params(args.params, args.overrides)
        if args.stage == "params":
            return write_params(params, args)
        if args.stage == "dag":
            from gear.dvcfile import DVC_FILES, write_dvc_files

            stale = write_dvc_files(params, check=args.check)
            verb = "out of date" if args.check else "written"
            everything = ", ".join(map(str, DVC_FILES.values()))
            print(f"{', '.join(map(str, stale)) or everything}: {verb if stale else 'up to date'}")
            return 1 if args.check and stale else 0
        extra = {k: v for k, v in vars(args).items() if k not in ("stage", "params", "overrides")}
        row = extra.pop("ablation", None)
        run_stage(args.stage, params, args.params, extra, row)
    except (ParamsError, ArtifactError, DataError, OSError, NonFiniteLossError) as e:  # expected: not a bug
        print(f"gear {args.stage}: error: {e}", file=sys.stderr)
        return 3 if isinstance(e, NonFiniteLossError) else 2  # 2: bad input; 3: training diverged
    return 0


if __name__ == "__main__":
    sys.exit(main())
