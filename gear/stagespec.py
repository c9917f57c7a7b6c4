"""What a stage declaration is (gear/dag.py holds the table): its outputs (Out), its inputs (Dep
on a producer stage), the Stage itself, and the groups of params keys stages share.

This module imports no torch: the Snakefile parses in a second.
"""
from __future__ import annotations

from dataclasses import dataclass

GUIDE = "@guide"  # Dep.fix value: the guide size (tune.ar_size) of a reader that has no size of its own
SEEDED = "seed"  # the wildcard a study seed fills; it replaces compute.seed in the stage (gear/study.py)


@dataclass(frozen=True)
class Out:
    path: str              # template
    kind: str = "dir"      # dir | file
    dvc: str = "outs"      # outs | metrics | plots (how dvc.yaml declares it)
    cache: bool = True     # dvc `cache: false` (small metrics files kept in git)


def live(folder: str) -> tuple[Out, Out]:
    """A training stage's dvclive folder: metrics.json and its plots folder (DVC plots: `dvc plots
    diff` compares experiments' curves). DVC's metrics are the headline files alone (reports/
    headline.json, cached: reports/ is git-ignored, and an experiment's row reads it from the
    cache), so `dvc exp show --only-changed` stays one screen wide."""
    return (Out(f"{folder}/metrics.json", "file"), Out(f"{folder}/plots/metrics", "dir", "plots"))


@dataclass(frozen=True)
class Dep:
    stage: str
    fix: tuple = ()        # ((wildcard, value), ...) set on the producer; others carry over by name
    read_if: str | None = None  # name of a NEEDS predicate: the stage reads this input only when it holds

    def wildcards(self, wc: dict, mode: str = "fresh", guide: str | None = None) -> dict:
        """The producer's wildcards (a fixed value GUIDE is the guide size: params tune.ar_size)."""
        fixed = {k: guide if v == GUIDE else v for k, v in self.fix}
        from gear.dag import table  # the table is built from these types

        want = table(mode)[self.stage].wildcards
        return {k: fixed.get(k, wc.get(k)) for k in want}


@dataclass(frozen=True)
class Stage:
    name: str              # rule / DVC stage name
    cli: str               # the gear command and its fixed arguments, with {wildcard} fields
    keys: tuple            # params it reads (dotted; a section name covers everything below it)
    outs: tuple            # Out, the first is the one that carries the provenance record
    deps: tuple = ()       # Dep on producer stages
    wildcards: tuple = ()  # e.g. ("seed", "variant")
    code: tuple = ()       # extra DVC code deps (a stage whose code defines its output format)
    root: str = "global"   # layout root of its outputs: global | teacher | warmup | tuned | real (gear/paths.py)
    heavy: bool = True     # training resources and launcher (else the light ones)
    launch: bool = True    # may run under torchrun (several processes)
    room: str = "main"     # main (dvc.yaml, `all`) | t2i | released | scaling (own dvc.yaml and target) | report
    axes: tuple = ()       # ((wildcard, values), ...) where a wildcard takes fewer values than its default

    @property
    def seeded(self) -> bool:
        """Runs with compute.seed replaced by its study seed (gear/study.py `seeded`): the stages whose
        randomness a seed changes. The evaluations keep compute.seed, so every seed and arm is
        measured on the same images and patches."""
        return SEEDED in self.wildcards and not self.name.startswith(("evaluate", "t2i_evaluate", "freeze",
                                                                       "tokenize", "t2i_tokenize"))


def by_name(*stages: Stage) -> dict[str, Stage]:
    return {s.name: s for s in stages}


SEED = "seed{seed}"
# Keys a stage may read without their value entering its record: they pick the job or how it runs,
# never the model it writes. The seed, size and arm lists (the value is in the job's wildcards and
# paths: adding a seed reruns nothing of the others); where state, shards and logs go, how often
# the state is saved (resume equals no-kill, tested) and the metrics logged, how many loader
# processes decode and how many images an evaluation forward takes. study.reseed_upstream picks the
# scaling room's rows (their seed is in their paths), so it enters no record either.
FREE = frozenset({"study.seeds", "study.reseed_upstream", "ar.sizes", "tune.ablations", "data.shard_dir",
                  "compute.state_dir", "compute.save_every", "compute.log_every", "compute.val_every", "compute.workers",
                  "metrics.batch_size"})
# Keys a stage that does not declare them may read only to say in one line that they do not apply
# to it (compute.fsdp: teacher and tokenizer-init train replicated, gear/train/parallel.py
# `replicated`). Never recorded: they rerun nothing.
SAID = frozenset({"compute.fsdp"})
# the shards' manifest is checked against the whole data section (gear/data/loader.py)
DATA_IN = ("data",)
RUN = ("compute.device", "compute.precision")
SEEDED_RUN = RUN + ("compute.seed",)  # stages that draw random numbers (init, data order, noise)
TRAIN = SEEDED_RUN
TEACHER = ("teacher", "teachers", "data.resolution")  # what loading the alignment teacher reads
AR_RECIPE = ("align_weight_ar", "align_layer", "ar", "compute.fsdp", "compute.compile", "compute.grad_checkpointing")
METRICS = ("metrics",)


def fresh_ar(arm: str, tokens: Dep, frozen: Dep, room: str = "main") -> tuple[Stage, Stage, Stage]:
    """An arm's fresh AR, per seed and AR size: train-ar on its tokens, sample, evaluate the samples."""
    train = Stage(f"train_ar_{arm}", f"train-ar --arm {arm} --size {{size}} --seed {{seed}}",
                  AR_RECIPE + ("quantizer", "tokenizer") + TEACHER + DATA_IN + TRAIN,
                  (Out(f"models/ar/{SEED}/{arm}/{{size}}"), *live(f"metrics/train_ar/{SEED}/{arm}/{{size}}")),
                  (tokens, frozen, Dep("teacher")), ("seed", "size"), root="tuned", room=room)
    sample = Stage(f"sample_{arm}", f"sample --arm {arm} --size {{size}} --seed {{seed}}",
                   ("sample", "quantizer", "tokenizer") + SEEDED_RUN,
                   (Out(f"samples/{SEED}/{arm}/{{size}}"),), (Dep(train.name), frozen), ("seed", "size"),
                   root="tuned", room=room)
    evaluate = Stage(f"evaluate_samples_{arm}", f"evaluate samples --arm {arm} --size {{size}} --seed {{seed}}",
                     METRICS + ("align_layer", "ar.align_layers") + TEACHER + DATA_IN + RUN,
                     (Out(f"eval/samples/{SEED}/{arm}/{{size}}.json", "file"),),
                     (Dep(sample.name), Dep(train.name), frozen, Dep("teacher"),
                      Dep("evaluate_real", read_if="own_real_stats"), Dep("shard")), ("seed", "size"), root="tuned",
                     room=room)
    return train, sample, evaluate
