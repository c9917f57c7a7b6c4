# Alignment teacher, warm-up tokenizer, GEAR end-to-end tuning, frozen tokenizer artifacts.

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
        directory(str(paths.tune_dir("{variant}"))),
        *dvclive("tune", "{variant}"),
    params:
        digest=P.digest("tau", "align_weight", "align_weight_ar", "align_layer", "teacher", "quantizer",
                        "e2e_mode", "tokenizer", "ar", "tune"),
        seed=P.compute.seed,
    log:
        logfile("tune", "variant"),
    benchmark:
        benchfile("tune", "variant")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear tune --params {PARAMS_FILE} --variant {wildcards.variant} > {log} 2>&1"


rule freeze:
    input:
        lambda w: str(paths.freeze_source_dir(w.arm)),
        SHARDS,
    output:
        directory(str(paths.frozen_dir("{arm}"))),
        str(paths.freeze_stats_json("{arm}")),
    log:
        logfile("freeze", "arm"),
    benchmark:
        benchfile("freeze", "arm")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear freeze --params {PARAMS_FILE} --arm {wildcards.arm} > {log} 2>&1"
