"""The rooms beside the main DAG, declared as gear/dag.py declares it: text-to-image (gear/t2i/,
target `t2i`, t2i/dvc.yaml), the public checkpoints (gear/released.py, target `released`,
released/dvc.yaml) and the scaling study (gear/scaling.py, target `scaling`, scaling/dvc.yaml).
None is part of `all`; each reads the main DAG's frozen tokenizers, teacher and shards.

This module imports no torch: the Snakefile parses in a second.
"""
from __future__ import annotations

from gear.stagespec import (DATA_IN, GUIDE, METRICS, RUN, SEED, SEEDED_RUN, TEACHER, TRAIN, Dep, Out, Stage,
                            fresh_ar, live)

# The text-to-image room (gear/t2i/): its own target and DVC file; the frozen tokenizers are the
# class-conditional DAG's.
T2I_TEACHER = TEACHER
FROZEN_GEAR = Dep("freeze", (("variant", "gear"), ("size", GUIDE)))  # size fixed only under ar-init (its guide)


def _t2i_arm(arm: str) -> tuple:
    tokens = Dep("t2i_tokenize_baseline") if arm == "baseline" else Dep("t2i_tokenize")
    frozen = Dep("freeze_baseline") if arm == "baseline" else FROZEN_GEAR
    train = Stage(f"t2i_train_{arm}", f"t2i-train --arm {arm} --seed {{seed}}",
                  ("t2i.ar", "t2i.text", "quantizer", "tokenizer", "ar.custom_layers", "ar.custom_dim", "ar.custom_heads")
                  + T2I_TEACHER + TRAIN + ("compute.fsdp", "compute.compile", "compute.grad_checkpointing"),
                  (Out(f"t2i/models/ar/{SEED}/{arm}"), *live(f"t2i/metrics/train/{SEED}/{arm}")),
                  (tokens, frozen, Dep("teacher")), ("seed",), room="t2i")
    sample = Stage(f"t2i_sample_{arm}", f"t2i-sample --arm {arm} --seed {{seed}}",
                   ("t2i.sample", "quantizer", "tokenizer") + SEEDED_RUN,
                   (Out(f"t2i/samples/{SEED}/{arm}"),), (Dep(f"t2i_train_{arm}"), frozen, Dep("t2i_encode")), ("seed",),
                   room="t2i")
    evaluate = Stage(f"t2i_evaluate_{arm}", f"t2i-evaluate samples --arm {arm} --seed {{seed}}",
                     METRICS + ("t2i.feature_space", "t2i.sample", "t2i.text.encoder", "data.resolution")
                     + T2I_TEACHER + RUN,
                     (Out(f"t2i/eval/{SEED}/{arm}.json", "file"),),
                     (Dep(f"t2i_sample_{arm}"), Dep(f"t2i_train_{arm}"), Dep("t2i_judge"), Dep("t2i_evaluate_real"),
                      Dep("t2i_encode"), Dep("teacher")), ("seed",), room="t2i")
    return train, sample, evaluate


T2I_TOKENIZE = ("quantizer", "tokenizer", "t2i.text", "t2i.data.samples_per_shard", "data.resolution") + RUN

def t2i_stages() -> list[Stage]:
    return [
        Stage("t2i_shard", "t2i-shard", ("data.resolution", "data.image_format", "t2i.data"), (Out("t2i/data/shards"),),
              code=("gear/stages/t2i_shard.py", "gear/t2i/shard.py", "gear/t2i/scenes.py"), heavy=False, launch=False,
              room="t2i"),
        Stage("t2i_encode", "t2i-encode", ("t2i.text", "t2i.data.samples_per_shard", "compute.precision", "compute.device"),
              (Out("t2i/data/captions"),),
              (Dep("t2i_shard"),), launch=False, room="t2i"),
        Stage("t2i_judge", "t2i-judge", ("t2i.judge", "data.resolution") + SEEDED_RUN,
              (Out("t2i/models/judge"), *live("t2i/metrics/judge")), (Dep("t2i_shard"),), heavy=False, launch=False,
              room="t2i"),
        Stage("t2i_tokenize_baseline", "t2i-tokenize --arm baseline", T2I_TOKENIZE,
              (Out("t2i/data/tokens/baseline"),), (Dep("freeze_baseline"), Dep("t2i_encode")), heavy=False, launch=False,
              room="t2i"),
        Stage("t2i_tokenize", "t2i-tokenize --arm gear --seed {seed}", T2I_TOKENIZE,
              (Out(f"t2i/data/tokens/{SEED}/gear"),), (FROZEN_GEAR, Dep("t2i_encode")), ("seed",),
              heavy=False, launch=False, room="t2i"),
        *_t2i_arm("baseline"), *_t2i_arm("gear"),
        Stage("t2i_evaluate_real", "t2i-evaluate real", METRICS + ("t2i.feature_space", "data.resolution") + T2I_TEACHER + RUN,
              (Out("t2i/eval/real"),), (Dep("t2i_shard"), Dep("teacher")), launch=False, room="t2i"),
        Stage("t2i_report", "t2i-report", ("study", "t2i.ar.eval_steps", "t2i.ar.align_weight", "t2i.ar.align_layer",
                                           "t2i.ar.steps", "t2i.sample.cfg_scale", "t2i.feature_space", "metrics.pr_k"),
              (Out("reports/t2i.json", "file", cache=False), Out("reports/t2i_figures"), Out("reports/t2i.md", "file"),
               Out("reports/t2i.html", "file")), code=("gear/report",), heavy=False, launch=False,
              room="t2i"),
    ]


# The public checkpoints (gear/released.py): target `released`, released/dvc.yaml, not part of
# `all`. One stage per entry, each reading its own entry's keys: setting one path reruns that
# entry's jobs alone. An entry left null runs too and records "not downloaded" at once.


def released_stages() -> list[Stage]:
    from gear import released as rel  # no torch

    scored = METRICS + TEACHER + RUN
    teacher = Dep("teacher", read_if="demo_space")  # the demo feature space is the trained teacher
    out = [Stage(f"released_tokenizer_{name}", f"released-tokenizer --name {name}",
                 (f"released.tokenizers.{name}", f"released.archs.{family}") + scored + DATA_IN,
                 (Out(str(rel.tokenizer_json(name)), "file"),), (Dep("shard"), teacher), room="released")
           for name, (family, _) in rel.TOKENIZERS.items()]
    for name in rel.GPTS:
        out.append(Stage(f"released_sample_{name}", f"released-sample --name {name}",
                         (f"released.gpts.{name}", f"released.tokenizers.{rel.GPT_TOKENIZER}",
                          f"released.archs.{rel.TOKENIZERS[rel.GPT_TOKENIZER][0]}", "released.num_classes",
                          "released.per_class", "released.eval_size", "released.batch_size") + SEEDED_RUN,
                         (Out(str(rel.samples_dir(name))),), room="released"))
        out.append(Stage(f"released_evaluate_{name}", f"released-evaluate --name {name}",
                         ("released.eval_size",) + scored, (Out(str(rel.gpt_json(name)), "file"),),
                         (Dep(f"released_sample_{name}"), teacher, Dep("evaluate_real", read_if="own_real_stats")),
                         room="released"))
    measured = tuple(Dep(s.name) for s in out if not s.name.startswith("released_sample"))
    out.append(Stage("released_report", "released-report", (),
                     tuple(Out(f"reports/{n}", "file", cache=not n.endswith(".json")) for n in rel.REPORT_NAMES),
                     measured, code=("gear/report",), heavy=False, launch=False, room="released"))
    return out




# The scaling study (issue 31, gear/scaling.py): target `scaling`, scaling/dvc.yaml, not part of
# `all`. The equal-compute control `continue` is a tune variant (tune, freeze and its tokenizer
# evaluation are the main DAG's stages); its tokens, fresh AR, samples and their evaluation are
# declared here, as the GEAR arm's are above. The ladder's rows run the main tune / freeze /
# evaluate tokenizer declarations under ablations/<row>/.


def control_stages(report_keys: tuple) -> list[Stage]:
    """The control arm's stages and the study's report (`report_keys`: what `gear report` reads)."""
    arm, frozen = "continue", Dep("freeze", (("variant", "continue"),))
    tok_keys = ("quantizer", "tokenizer") + DATA_IN + RUN
    return [
        Stage(f"tokenize_{arm}", f"tokenize --arm {arm} --seed {{seed}}", tok_keys,
              (Out(f"data/tokens/{SEED}/{arm}"),), (frozen, Dep("shard")), ("seed",), root="tuned", heavy=False,
              launch=False, room="scaling"),
        *fresh_ar(arm, Dep(f"tokenize_{arm}"), frozen, room="scaling"),
        # it reads what `gear report` reads (the same results and claims), and the study's own keys
        # (compute.seed: which study seed's upstream row is the main DAG's own)
        Stage("scaling_report", "scaling-report",
              tuple(dict.fromkeys(report_keys + ("scaling", "stage2", "tune.ar_size", "align_layer",
                                                          "ar.align_layers", "compute.seed"))),
              (Out("reports/scaling.json", "file", cache=False), Out("reports/scaling_figures"),
               Out("reports/scaling.md", "file"), Out("reports/scaling.html", "file")),
              code=("gear/report",), heavy=False, launch=False, room="scaling"),
    ]


