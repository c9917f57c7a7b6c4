"""Every stage of the pipeline, declared once: its command, the params keys it reads, its inputs
and its outputs. Nothing else in the project writes these down.

    STAGES["tune"]                         # the declaration
    Job("tune", {"seed": 0, "variant": "gear"}) # one run of it (`gear tune --variant gear --seed 0`)
    jobs(params, "all")                    # every job of a target, with its row (ablations)

- The Snakemake rules are built from this table (workflow/rules/stages.smk), dvc.yaml and
  t2i/dvc.yaml are generated from it (`gear dag`, gear/dvcfile.py; tests/test_dag.py checks that the
  committed files equal the generated ones).
- A stage reads only its declared keys (`keys`): the CLI hands it a read-only view that refuses
  any other key (gear/guard.py), so the params a stage records in its outputs (gear/provenance.py),
  the keys DVC reruns it on and the digest Snakemake reruns it on are the same, at leaf level.
- Paths are templates with {seed}, {variant}, {arm}, {size} (Snakemake wildcards, DVC
  ${item.*}); `{shard_dir}` is params.data.shard_dir. A stage's outputs sit under one root of
  its job's Layout (gear/paths.py): the main DAG's is the repository root, an ablation row's is
  ablations/<row>/ for what the row changes (gear/ablations.py).

The types (Out, Dep, Stage) and the shared key groups are in gear/stagespec.py; the rooms beside
the main DAG (t2i, released, scaling) are declared in gear/rooms.py and joined into STAGES here.
This module imports no torch: the Snakefile parses in a second.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from gear import rooms, scaling
from gear.paths import tune_variants
from gear.schema import STAGE2_MODES
from gear.stagespec import (DATA_IN, METRICS, RUN, SEED, SEEDED_RUN, TEACHER, TRAIN, Dep, Out, Stage, by_name,
                            fresh_ar, live)

GEAR_ARM = (("variant", "gear"),)  # the GEAR arm of the tuned variants
TRAIN_AR, SAMPLE, EVALUATE_SAMPLES = zip(fresh_ar("baseline", Dep("tokenize_baseline"), Dep("freeze_baseline")),
                                         fresh_ar("gear", Dep("tokenize", GEAR_ARM), Dep("freeze", GEAR_ARM)))

STAGES: dict[str, Stage] = by_name(
    Stage("shard", "shard", ("data",), (Out("{shard_dir}"),),
          code=("gear/stages/shard.py", "gear/data/shard.py", "gear/data/embedded.py"), heavy=False, launch=False),
    Stage("teacher", "teacher", TEACHER + DATA_IN + TRAIN + ("metrics.feature_space",),
          (Out("models/teacher"), *live("metrics/teacher")), (Dep("shard"),), root="teacher"),
    Stage("tokenizer_init", "tokenizer-init", ("quantizer", "tokenizer") + TEACHER + DATA_IN + TRAIN,
          (Out("models/tokenizer_init"), *live("metrics/tokenizer_init")),
          (Dep("shard"), Dep("teacher", read_if="teacher_perceptual")), root="warmup"),
    Stage("tune", "tune --variant {variant} --seed {seed}",
          ("tau", "align_weight", "align_weight_ar", "align_layer", "e2e_mode", "quantizer", "tokenizer", "tune",
           "ar.class_dropout", "ar.token_dropout", "ar.projector_hidden", "ar.custom_layers", "ar.custom_dim",
           "ar.custom_heads", "ar.resid_dropout", "ar.ffn_dropout", "compute.grad_checkpointing", "compute.fsdp")
          + TEACHER + DATA_IN + TRAIN,
          (Out(f"models/tune/{SEED}/{{variant}}"), *live(f"metrics/tune/{SEED}/{{variant}}")),
          (Dep("shard"), Dep("teacher"), Dep("tokenizer_init")), ("seed", "variant"), root="tuned"),
    Stage("freeze_baseline", "freeze --arm baseline", ("quantizer", "tokenizer") + DATA_IN + RUN,
          (Out("models/frozen/baseline"), Out("metrics/freeze/baseline.json", "file")),
          (Dep("tokenizer_init"), Dep("shard")), root="warmup", heavy=False, launch=False),
    Stage("freeze", "freeze --arm {variant} --seed {seed}", ("quantizer", "tokenizer") + DATA_IN + RUN,
          (Out(f"models/frozen/{SEED}/{{variant}}"), Out(f"metrics/freeze/{SEED}/{{variant}}.json", "file")),
          (Dep("tune"), Dep("shard")), ("seed", "variant"), root="tuned", heavy=False, launch=False),
    Stage("tokenize_baseline", "tokenize --arm baseline", ("quantizer", "tokenizer") + DATA_IN + RUN,
          (Out("data/tokens/baseline"),), (Dep("freeze_baseline"), Dep("shard")), root="warmup", heavy=False,
          launch=False),
    Stage("tokenize", "tokenize --arm {variant} --seed {seed}", ("quantizer", "tokenizer") + DATA_IN + RUN,
          (Out(f"data/tokens/{SEED}/{{variant}}"),), (Dep("freeze"), Dep("shard")), ("seed", "variant"),
          root="tuned", heavy=False, launch=False, axes=(("variant", ("gear",)),)),
    *TRAIN_AR, *SAMPLE,
    Stage("evaluate_real", "evaluate real", METRICS + TEACHER + DATA_IN + SEEDED_RUN, (Out("eval/real"),),
          (Dep("shard"), Dep("teacher")), root="real"),
    Stage("evaluate_tokenizer_baseline", "evaluate tokenizer --arm baseline",
          METRICS + ("quantizer", "tokenizer", "tau") + TEACHER + DATA_IN + RUN,
          (Out("eval/tokenizer/baseline.json", "file"),),
          (Dep("freeze_baseline"), Dep("shard"), Dep("teacher"), Dep("evaluate_real")), root="warmup"),
    Stage("evaluate_tokenizer", "evaluate tokenizer --arm {variant} --seed {seed}",
          METRICS + ("quantizer", "tokenizer", "tau") + TEACHER + DATA_IN + RUN,
          (Out(f"eval/tokenizer/{SEED}/{{variant}}.json", "file"),),
          (Dep("freeze"), Dep("shard"), Dep("teacher"), Dep("evaluate_real")), ("seed", "variant"), root="tuned"),
    *EVALUATE_SAMPLES,
    Stage("report", "report", ("study", "teacher", "quantizer", "tau", "align_weight", "align_weight_ar", "tune.steps",
                               "tune.ablations", "ar.sizes", "ar.steps", "stage2", "tune.ar_size",
                               "tokenizer.codebook_size", "metrics.pr_k"),
          (Out("reports/claims.json", "file", cache=False), Out("reports/figures"), Out("reports/index.md", "file"),
           Out("reports/index.html", "file"), Out("reports/headline.json", "file", "metrics")),
          code=("gear/report",), heavy=False, launch=False, room="report"),
)

STAGES.update(by_name(*rooms.t2i_stages(), *rooms.released_stages(), *rooms.control_stages(STAGES["report"].keys)))


# When a stage reads an input only under some params. Both tools still order the DAG by every
# declared input (the teacher runs before the warm-up whatever its losses); the check before a
# stage runs looks at the inputs it will read.
NEEDS = {"teacher_perceptual": lambda p: p.tokenizer.perceptual == "teacher" and p.tokenizer.perceptual_weight > 0,
         "own_real_stats": lambda p: p.metrics.reference is None,  # else ADM's reference batch
         "demo_space": lambda p: p.metrics.feature_space == "demo"}

# ----------------------------------------------------------------------------------------------
# stage 2's ar-init mode (params `stage2`; the release's default, scripts/train/train_ar_gear.sh of
# Tencent-Hunyuan/GEAR): stage 1 runs once per AR size, guided by an AR of that size tapped at its
# entry of ar.align_layers, and the GEAR arm's AR continues that stage-1 AR (train_ar_gear reads
# the tune output of its size and tune.steps: its budget is ar.steps - tune.steps). The tuned
# arms' tokenizer stages gain the size wildcard: seed<N>/<size>/<variant>, beside fresh's
# seed<N>/<variant> and never inside it, so switching modes deletes nothing. The baseline and
# every path of stage2 = fresh stay as they are (gear/stage2.py).

def _by_size(s: Stage, keys: tuple = ()) -> Stage:
    sized = lambda p: p.replace("{variant}", "{size}/{variant}")  # noqa: E731  (beside fresh's folders)
    return dataclasses.replace(s, cli=s.cli + " --size {size}", keys=s.keys + keys,
                               outs=tuple(dataclasses.replace(o, path=sized(o.path)) for o in s.outs),
                               wildcards=s.wildcards + ("size",))


AR_INIT: dict[str, Stage] = {
    "tune": _by_size(STAGES["tune"], ("ar.align_layers",)),  # the guide's tap is its size's
    **{n: _by_size(STAGES[n]) for n in ("freeze", "tokenize", "evaluate_tokenizer")},
    "train_ar_gear": dataclasses.replace(
        STAGES["train_ar_gear"], keys=STAGES["train_ar_gear"].keys + ("stage2", "tune.steps"),
        deps=STAGES["train_ar_gear"].deps + (Dep("tune", GEAR_ARM),)),
}


def table(mode: str = "fresh") -> dict[str, Stage]:
    """The stage table of a stage-2 mode (params `stage2`): STAGES, or STAGES with AR_INIT laid over."""
    if mode not in STAGE2_MODES:
        raise ValueError(f"stage-2 mode {mode!r}: not one of {STAGE2_MODES}")
    return STAGES if mode == "fresh" else {**STAGES, **AR_INIT}


# dvc.yaml's matrix axes (a seed in each seeded stage's name and command, never in its params:
# adding a seed runs only that seed's stages)
AXES_DVC = {"seed": "${study.seeds}", "size": "${ar.sizes}"}


@dataclass(frozen=True)
class Job:
    """One run of a stage: its wildcards, the ablation row it belongs to (None: the main DAG) and
    the stage-2 mode whose table declares it (params `stage2`)."""
    stage: str
    wc: tuple = ()         # sorted ((wildcard, value), ...)
    row: str | None = None
    mode: str = "fresh"

    @classmethod
    def of(cls, stage: str, wc: dict | None = None, row: str | None = None, mode: str = "fresh") -> "Job":
        want = table(mode)[stage].wildcards
        wc = wc or {}
        missing = [k for k in want if wc.get(k) is None]
        if missing:
            raise ValueError(f"job {stage}: wildcards {missing} missing")
        return cls(stage, tuple((k, wc[k]) for k in want), row, mode)

    @property
    def wildcards(self) -> dict:
        return dict(self.wc)

    @property
    def decl(self) -> Stage:
        return table(self.mode)[self.stage]

    def command(self, params_file: str = "params.yaml") -> str:
        """The command that (re)makes this job's outputs."""
        row = f" --ablation {self.row}" if self.row else ""
        pf = "" if params_file == "params.yaml" else f" --params {params_file}"
        return f"gear {self.decl.cli.format(**self.wildcards)}{pf}{row}"

    def __str__(self) -> str:
        parts = [self.stage, *(f"{k}={v}" for k, v in self.wc)] + ([f"row={self.row}"] if self.row else [])
        return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# paths


def benchfile(mode: str, rule: str, parts: list[str]) -> str:
    """benchmarks/out/[<mode>/]<rule>/<parts>.tsv (run.tsv without parts): a stage-2 mode other than
    fresh keeps its own files, so `make scaling`'s second pass does not overwrite the first's. The
    Snakefile's rules pass wildcards, benchmarks/study_cost.py a job's values."""
    prefix = "" if mode == "fresh" else f"{mode}/"
    return f"benchmarks/out/{prefix}{rule}/{'/'.join(parts) or 'run'}.tsv"


def layout_for(params, row: str | None):
    """(the row's params, its Layout): the main DAG's for row None (gear/ablations.py)."""
    from gear import paths

    ar_init = params.stage2 == "ar-init"  # the tuned arms' folders are per size; `guide`: see paths.Layout
    if row is None:
        return params, paths.Layout(guide=params.tune.ar_size if ar_init else None)
    from gear import ablations

    r = ablations.find(params, row)  # a row runs its GEAR arm at the eval size only: that is its guide
    guide = ablations.eval_size(params) if ar_init else None
    return ablations.row_params(params, r), dataclasses.replace(ablations.layout(params, r), guide=guide)


def roots(layout) -> dict:
    """A declaration's `root` -> its folder in `layout` (any other root: the repository root)."""
    return {"teacher": layout.teacher, "warmup": layout.warmup, "tuned": layout.tuned, "real": layout.real}


def render(template: str, params, wc: dict) -> str:
    return template.replace("{shard_dir}", str(params.data.shard_dir)).format(**wc)


def outputs(job: Job, params) -> list[Path]:
    """The job's declared outputs (paths under its layout root)."""
    rp, layout = layout_for(params, job.row)
    root = roots(layout).get(job.decl.root, Path("."))
    return [root / render(o.path, rp, job.wildcards) for o in job.decl.outs]


def read_deps(job: Job, params) -> list[Job]:
    """The inputs the job will read under these params (its declared inputs, less those read
    only under params that do not hold): what the stage runner checks before the stage runs."""
    if job.stage in REPORTS:
        return deps(job, params)
    rp, _ = layout_for(params, job.row)
    keep = [d.read_if is None or NEEDS[d.read_if](rp) for d in job.decl.deps]
    return [j for j, k in zip(deps(job, params), keep) if k]


def primary(job: Job, params) -> Path:
    return outputs(job, params)[0]


def deps(job: Job, params) -> list[Job]:
    """The jobs whose outputs this one reads. In an ablation row a producer stays in the row when
    the row owns that root, else it is the main DAG's (the shared teacher / warm-up / data)."""
    if job.stage in REPORTS:
        return REPORTS[job.stage](params)
    _, layout = layout_for(params, job.row)
    out = []
    for d in job.decl.deps:
        prod = table(job.mode)[d.stage]
        own = job.row is not None and roots(layout).get(prod.root, Path(".")) != Path(".")
        out.append(Job.of(d.stage, d.wildcards(job.wildcards, job.mode, layout.guide), job.row if own else None,
                          job.mode))
    return out


# ----------------------------------------------------------------------------------------------
# which jobs a target holds


def main_jobs(params) -> list[Job]:
    seeds, sizes, variants, mode = params.study.seeds, params.ar.sizes, tune_variants(params), params.stage2
    # the tuned arms' tokenizer stages: once per seed, or under ar-init once per seed and AR size
    guides = sizes if mode == "ar-init" else [None]
    jobs = [Job.of(s, mode=mode) for s in ("shard", "teacher", "tokenizer_init", "freeze_baseline",
                                           "tokenize_baseline", "evaluate_real", "evaluate_tokenizer_baseline")]
    for seed in seeds:
        for g in guides:
            for v in variants:
                jobs += [Job.of(s, {"seed": seed, "variant": v, "size": g}, mode=mode)
                         for s in ("tune", "freeze", "evaluate_tokenizer")]
            jobs.append(Job.of("tokenize", {"seed": seed, "variant": "gear", "size": g}, mode=mode))
        for size in sizes:
            for arm in ("baseline", "gear"):
                jobs += [Job.of(f"{s}_{arm}", {"seed": seed, "size": size}, mode=mode)
                         for s in ("train_ar", "sample", "evaluate_samples")]
    return jobs


def report_deps(params) -> list[Job]:
    """What `gear report` reads: every job of the main DAG but the data and the tokens."""
    return [j for j in main_jobs(params) if j.stage not in ("shard", "tokenize", "tokenize_baseline")]


def t2i_jobs(params) -> list[Job]:
    m = params.stage2  # the GEAR tokenizer they read is the guide size's under ar-init
    jobs = [Job.of(s, mode=m) for s in ("t2i_shard", "t2i_encode", "t2i_judge", "t2i_tokenize_baseline",
                                        "t2i_evaluate_real")]
    for seed in params.study.seeds:
        jobs.append(Job.of("t2i_tokenize", {"seed": seed}, mode=m))
        for arm in ("baseline", "gear"):
            jobs += [Job.of(f"t2i_{s}_{arm}", {"seed": seed}, mode=m) for s in ("train", "sample", "evaluate")]
    return jobs


def released_jobs(params) -> list[Job]:
    """Every job of the `released` target but its report (one per entry, downloaded or not)."""
    return [Job.of(s.name) for s in STAGES.values() if s.room == "released" and s.name != "released_report"]


def t2i_report_deps(params) -> list[Job]:
    return [j for j in t2i_jobs(params) if j.stage.startswith(("t2i_train", "t2i_sample", "t2i_evaluate", "t2i_judge"))]


# the report stages: what each reads (every job it summarises)
REPORTS = {"report": report_deps, "t2i_report": t2i_report_deps, "scaling_report": scaling.report_deps}


def job_for(cli_stage: str, args: dict, row: str | None, params) -> Job | None:
    """The declared job a `gear <cli_stage> ...` command runs; None for a command outside the DAG
    or arguments that name no job (an unknown arm: the stage itself says why)."""
    job = _job_for(cli_stage, args, row, params)
    return None if job is None else dataclasses.replace(job, mode=params.stage2)


def _job_for(cli_stage: str, args: dict, row: str | None, params) -> Job | None:
    from gear.config import ParamsError
    from gear.study import resolve_seed

    arm, what, mode = args.get("arm"), args.get("what"), params.stage2
    seed = lambda: resolve_seed(params, args.get("seed"))  # noqa: E731  (a ParamsError names a bad --seed)
    name = cli_stage.replace("-", "_")

    def tuned(stage: str, variant: str) -> Job:
        """A tuned arm's tokenizer job: --size names its stage-1 guide under ar-init, and only there."""
        size = args.get("size")
        regen = "; a dvc.yaml made for the other mode: regenerate it, `gear dag`"
        if mode == "ar-init" and size not in params.ar.sizes:
            raise ParamsError(f"--size {size!r}: stage2 = ar-init tunes the GEAR arm once per AR size, "
                              f"name one of ar.sizes {params.ar.sizes}{regen}")
        if mode == "fresh" and size is not None:
            raise ParamsError(f"--size {size!r}: the tuned arms have a size only under stage2 = ar-init "
                              f"(stage2 = fresh: one guide, tune.ar_size){regen}")
        return Job.of(stage, {"seed": seed(), "variant": variant, "size": size}, row, mode)

    if cli_stage == "tune":
        variant = args.get("variant") or "gear"
        return tuned("tune", variant) if variant in tune_variants(params) else None
    if cli_stage in ("freeze", "tokenize") or (cli_stage == "evaluate" and what == "tokenizer"):
        base = "evaluate_tokenizer" if cli_stage == "evaluate" else name
        if arm == "baseline":
            return Job.of(f"{base}_baseline", {}, row)
        if base == "tokenize":
            if arm == "continue" and row is None and arm in tune_variants(params) and mode == "fresh":
                return Job.of("tokenize_continue", {"seed": seed()})
            return tuned(base, "gear") if arm == "gear" else None
        return tuned(base, arm) if arm in tune_variants(params) else None
    if cli_stage in ("train-ar", "sample") or (cli_stage == "evaluate" and what == "samples"):
        base = "evaluate_samples" if cli_stage == "evaluate" else name
        if arm not in ("baseline", "gear", "continue") or args.get("size") not in params.ar.sizes:
            return None
        if arm == "continue" and (row is not None or arm not in tune_variants(params) or mode != "fresh"):
            return None  # the control runs in the main DAG's folders only, when tune.ablations lists it
        return Job.of(f"{base}_{arm}", {"seed": seed(), "size": args["size"]}, row, mode)
    if cli_stage == "evaluate":
        return Job.of("evaluate_real", {}, row) if what == "real" else None
    if cli_stage.startswith("released-") and cli_stage != "released-report":
        name = f"{name}_{args.get('name')}"
        return Job.of(name, {}, row) if name in STAGES else None  # an unknown --name: the stage says why
    if cli_stage.startswith("t2i-") and name not in ("t2i_evaluate",) and arm is None:
        return Job.of(name, {}, row) if name in STAGES else None
    if cli_stage == "t2i-evaluate" and what == "real":
        return Job.of("t2i_evaluate_real", {}, row)
    if cli_stage.startswith("t2i-"):
        base = "t2i_" + cli_stage[4:]
        if arm == "baseline" and base == "t2i_tokenize":
            return Job.of("t2i_tokenize_baseline", {}, row)
        if arm not in ("baseline", "gear"):
            return None
        return Job.of(base if base == "t2i_tokenize" else f"{base}_{arm}", {"seed": seed()}, row)
    if name in STAGES and not STAGES[name].wildcards:
        return Job.of(name, {}, row)
    return None


def leaves(keys) -> list[str]:
    """Declared keys without those a declared section already covers, in declaration order."""
    keys = list(dict.fromkeys(keys))
    return [k for k in keys if not any(k.startswith(o + ".") for o in keys if o != k)]


def declared(stage: str, mode: str = "fresh") -> frozenset[str]:
    return frozenset(table(mode)[stage].keys)


def load_params(path="params.yaml", overrides: list[str] | None = None):
    """The edge loader of the CLI and the Snakefile: params validated, and every ablation row of
    the grid built and validated too (gear/ablations.py), one line for the first problem."""
    from gear import ablations, config, scaling

    params = config.load_params(path, overrides)
    ablations.check_grid(params)
    scaling.check(params)
    if params.stage2 == "ar-init" and params.tune.ar_size not in params.ar.sizes:  # (rows: their eval size)
        raise config.ParamsError(f"tune.ar_size = {params.tune.ar_size!r}: must be one of ar.sizes {params.ar.sizes} "
                                 f"under stage2 = ar-init (the size whose tuned tokenizer the size-free readers "
                                 f"take: the report's tokenizer tables, the t2i room)")
    return params
