# The seed's ablation grid (gear/ablations.py): `snakemake --profile local ablations`.
# A row runs the GEAR arm's stages (tune .. evaluate, one eval AR size) under ablations/<row>/,
# per study seed, with the row's params (`gear <stage> --ablation <row>`). It reads the main
# teacher and warm-up unless its overrides change them (gear.ablations.layout): a tau row shares
# shards, teacher and warm-up; a quantizer row trains its own warm-up. The default row is the main
# DAG's GEAR arm; `training-ste` copies the main DAG's `tune --variant ste` run instead of repeating
# it. Rows whose teacher cannot load here are skipped (the report says why). Not part of `all`.

import re
from pathlib import Path

from gear import ablations as AB

AB_ROWS = {r.name: r for r in AB.runnable(P)}
AB_LAYOUT = {name: AB.layout(P, row) for name, row in AB_ROWS.items()}
AB_PARAMS = {name: AB.row_params(P, row) for name, row in AB_ROWS.items()}
AB_SIZE = AB.eval_size(P)
AB_COPIED = [n for n, r in AB_ROWS.items() if AB.reuses_ste_variant(P, r)]
HERE = Path(".")


def rows_regex(names):
    return "|".join(re.escape(n) for n in names) or "(?!x)x"  # no rows: a pattern that never matches


# Output patterns: every root of the layout under ablations/{row}; each rule's row wildcard is
# constrained to the rows that own that output.
with paths.using(paths.Layout(*(Path(str(paths.ablation_root("{row}"))),) * 3)):
    AB_TEACHER = str(paths.teacher_dir())
    AB_TEACHER_LIVE = dvclive("teacher")
    AB_INIT = str(paths.tokenizer_init_dir())
    AB_INIT_LIVE = dvclive("tokenizer_init")
    AB_TUNE = str(paths.tune_dir("gear", "{seed}"))
    AB_TUNE_LIVE = dvclive("tune", paths.seed_part("{seed}"), "gear")
    AB_FROZEN = str(paths.frozen_dir("gear", "{seed}"))
    AB_FREEZE_STATS = str(paths.freeze_stats_json("gear", "{seed}"))
    AB_TOKENS = str(paths.tokens_dir("gear", "{seed}"))
    AB_AR = str(paths.ar_dir("gear", AB_SIZE, "{seed}"))
    AB_AR_LIVE = dvclive("train_ar", paths.seed_part("{seed}"), "gear", AB_SIZE)
    AB_SAMPLES = str(paths.samples_dir("gear", AB_SIZE, "{seed}"))
    AB_EVAL_TOK = str(paths.eval_tokenizer_json("gear", "{seed}"))
    AB_EVAL_SAMPLES = str(paths.eval_samples_json("gear", AB_SIZE, "{seed}"))


def row_teacher(w):
    with paths.using(AB_LAYOUT[w.row]):
        return str(paths.teacher_dir())


def row_warmup(w):
    with paths.using(AB_LAYOUT[w.row]):
        return str(paths.tokenizer_init_dir())


def row_digest(*sections):
    return lambda w: AB_PARAMS[w.row].digest(*sections)


def ab_cmd(stage, *args):
    """`gear <stage> --ablation {row} ...`, logged per row and seed."""
    return f"gear {stage} --params {{PARAMS_FILE}} --ablation {{wildcards.row}} {' '.join(args)} > {{log}} 2>&1"


rule ablation_teacher:
    input:
        SHARDS,
    output:
        directory(AB_TEACHER),
        *AB_TEACHER_LIVE,
    wildcard_constraints:
        row=rows_regex([n for n, l in AB_LAYOUT.items() if l.teacher != HERE]),
    params:
        digest=row_digest("teacher", "teachers"),
    log:
        logfile("ablation_teacher", "row"),
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}" + ab_cmd("teacher")


rule ablation_tokenizer_init:
    input:
        SHARDS,
        row_teacher,
    output:
        directory(AB_INIT),
        *AB_INIT_LIVE,
    wildcard_constraints:
        row=rows_regex([n for n, l in AB_LAYOUT.items() if l.warmup != HERE]),
    params:
        digest=row_digest("quantizer", "teacher", "tokenizer"),
    log:
        logfile("ablation_tokenizer_init", "row"),
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}" + ab_cmd("tokenizer-init")


rule ablation_tune:
    input:
        SHARDS,
        row_teacher,
        row_warmup,
    output:
        directory(AB_TUNE),
        *AB_TUNE_LIVE,
    wildcard_constraints:
        row=rows_regex([n for n in AB_ROWS if n not in AB_COPIED]),
    params:
        digest=row_digest("tau", "align_weight", "align_weight_ar", "align_layer", "teacher", "quantizer",
                          "e2e_mode", "tokenizer", "ar", "tune"),
    log:
        logfile("ablation_tune", "row", "seed"),
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}" + ab_cmd("tune", "--seed {wildcards.seed}")


rule ablation_tune_copy_ste:
    # training-ste is the main DAG's `tune --variant ste` run (same params but e2e_mode, which the
    # variant sets): copy it rather than train it twice.
    input:
        str(paths.tune_dir("ste", "{seed}")),
    output:
        directory(AB_TUNE),
    wildcard_constraints:
        row=rows_regex(AB_COPIED),
    log:
        logfile("ablation_tune_copy_ste", "row", "seed"),
    threads: 1
    resources:
        **LIGHT,
    shell:
        "cp -r {input} {output} > {log} 2>&1"


rule ablation_freeze:
    input:
        AB_TUNE,
        SHARDS,
    output:
        directory(AB_FROZEN),
        AB_FREEZE_STATS,
    log:
        logfile("ablation_freeze", "row", "seed"),
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        ab_cmd("freeze", "--arm gear --seed {wildcards.seed}")


rule ablation_tokenize:
    input:
        AB_FROZEN,
        SHARDS,
    output:
        directory(AB_TOKENS),
    params:
        hflip=P.data.hflip,
    log:
        logfile("ablation_tokenize", "row", "seed"),
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        ab_cmd("tokenize", "--arm gear --seed {wildcards.seed}")


rule ablation_train_ar:
    input:
        AB_TOKENS,
        AB_FROZEN,
        row_teacher,
    output:
        directory(AB_AR),
        *AB_AR_LIVE,
    params:
        digest=row_digest("align_weight_ar", "align_layer", "teacher", "teachers", "ar"),
    log:
        logfile("ablation_train_ar", "row", "seed"),
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}" + ab_cmd("train-ar", f"--arm gear --size {AB_SIZE} --seed {{wildcards.seed}}")


rule ablation_sample:
    input:
        AB_AR,
        AB_FROZEN,
    output:
        directory(AB_SAMPLES),
    params:
        digest=row_digest("sample"),
    log:
        logfile("ablation_sample", "row", "seed"),
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}" + ab_cmd("sample", f"--arm gear --size {AB_SIZE} --seed {{wildcards.seed}}")


rule ablation_evaluate_tokenizer:
    input:
        AB_FROZEN,
        SHARDS,
        row_teacher,
        paths.real_stats_dir(),
    output:
        AB_EVAL_TOK,
    params:
        digest=row_digest("metrics"),
    log:
        logfile("ablation_evaluate_tokenizer", "row", "seed"),
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}" + ab_cmd("evaluate tokenizer", "--arm gear --seed {wildcards.seed}")


rule ablation_evaluate_samples:
    input:
        AB_SAMPLES,
        AB_AR,
        AB_FROZEN,
        row_teacher,
        paths.real_stats_dir(),
        SHARDS,
    output:
        AB_EVAL_SAMPLES,
    params:
        digest=row_digest("metrics"),
    log:
        logfile("ablation_evaluate_samples", "row", "seed"),
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}" + ab_cmd("evaluate samples", f"--arm gear --size {AB_SIZE} --seed {{wildcards.seed}}")


def ablation_report_inputs():
    """Every row's (the default's: the main DAG's) per-seed output files, as the rules declare them."""
    rows = [AB.DEFAULT, *AB_ROWS.values()]
    return [str(p) for row in rows for seed in SEEDS for p in AB.outputs(P, row, seed).values()]


rule ablation_report:
    input:
        ablation_report_inputs(),
    output:
        *[str(p) for p in paths.ablation_report_files().values()],
    params:
        digest=P.digest("study", "ablations"),
    log:
        logfile("ablation_report"),
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear ablation-report --params {PARAMS_FILE} > {log} 2>&1"


rule ablations:
    input:
        rules.ablation_report.output,
