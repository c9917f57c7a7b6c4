# Alignment teacher, warm-up tokenizer, GEAR end-to-end tuning, frozen tokenizer artifacts.
# Shared by every seed: teacher, tokenizer_init and the frozen baseline tokenizer. Per study seed
# ({seed} wildcard, paths under seed<N>/): tune and the frozen tuned tokenizers. Seeded rules
# take their seed from the wildcard and no params digest of study.seeds, so adding a seed to
# params runs that seed's jobs and leaves the others' outputs as they are.

rule teacher:
    input:
        SHARDS,
    output:
        directory(paths.teacher_dir()),
        *dvclive("teacher"),
    params:
        digest=P.digest("teacher", "teachers"),
        seed=P.compute.seed,
    log:
        logfile("teacher"),
    benchmark:
        benchfile("teacher")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear teacher --params {PARAMS_FILE} > {log} 2>&1"


rule tokenizer_init:
    input:
        SHARDS,
        paths.teacher_dir(),
    output:
        directory(paths.tokenizer_init_dir()),
        *dvclive("tokenizer_init"),
    params:
        digest=P.digest("quantizer", "teacher", "tokenizer"),
        seed=P.compute.seed,
    log:
        logfile("tokenizer_init"),
    benchmark:
        benchfile("tokenizer_init")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear tokenizer-init --params {PARAMS_FILE} > {log} 2>&1"


rule tune:
    input:
        SHARDS,
        paths.teacher_dir(),
        paths.tokenizer_init_dir(),
    output:
        directory(str(paths.tune_dir("{variant}", "{seed}"))),
        *dvclive("tune", paths.seed_part("{seed}"), "{variant}"),
    params:
        digest=P.digest("tau", "align_weight", "align_weight_ar", "align_layer", "teacher", "quantizer",
                        "e2e_mode", "tokenizer", "ar", "tune"),
    log:
        logfile("tune", "seed", "variant"),
    benchmark:
        benchfile("tune", "seed", "variant")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear tune --params {PARAMS_FILE} --variant {wildcards.variant} --seed {wildcards.seed}"
        " > {log} 2>&1"


rule freeze_baseline:
    input:
        paths.tokenizer_init_dir(),
        SHARDS,
    output:
        directory(str(paths.frozen_dir("baseline"))),
        str(paths.freeze_stats_json("baseline")),
    log:
        logfile("freeze_baseline"),
    benchmark:
        benchfile("freeze_baseline")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear freeze --params {PARAMS_FILE} --arm baseline > {log} 2>&1"


rule freeze:
    input:
        str(paths.tune_dir("{variant}", "{seed}")),
        SHARDS,
    output:
        directory(str(paths.frozen_dir("{variant}", "{seed}"))),
        str(paths.freeze_stats_json("{variant}", "{seed}")),
    log:
        logfile("freeze", "seed", "variant"),
    benchmark:
        benchfile("freeze", "seed", "variant")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear freeze --params {PARAMS_FILE} --arm {wildcards.variant} --seed {wildcards.seed} > {log} 2>&1"
