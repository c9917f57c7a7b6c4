# Final comparison: a fresh AR per (AR arm, size) on pre-extracted tokens, then sampling.

rule tokenize:
    input:
        str(paths.frozen_dir("{arm}")),
        SHARDS,
    output:
        directory(str(paths.tokens_dir("{arm}"))),
    params:
        hflip=P.data.hflip,
    log:
        logfile("tokenize", "arm"),
    benchmark:
        benchfile("tokenize", "arm")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear tokenize --params {PARAMS_FILE} --arm {wildcards.arm} > {log} 2>&1"


rule train_ar:
    input:
        str(paths.tokens_dir("{arm}")),
        str(paths.frozen_dir("{arm}")),
        paths.teacher_dir(),
    output:
        directory(str(paths.ar_dir("{arm}", "{size}"))),
        *dvclive("train_ar", "{arm}", "{size}"),
    params:
        digest=P.digest("align_weight_ar", "align_layer", "teacher", "teachers", "ar"),
        seed=P.compute.seed,
    log:
        logfile("train_ar", "arm", "size"),
    benchmark:
        benchfile("train_ar", "arm", "size")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear train-ar --params {PARAMS_FILE} --arm {wildcards.arm} --size {wildcards.size}"
        " > {log} 2>&1"


rule sample:
    input:
        str(paths.ar_dir("{arm}", "{size}")),
        str(paths.frozen_dir("{arm}")),
    output:
        directory(str(paths.samples_dir("{arm}", "{size}"))),
    params:
        digest=P.digest("sample"),
        seed=P.compute.seed,
    log:
        logfile("sample", "arm", "size"),
    benchmark:
        benchfile("sample", "arm", "size")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear sample --params {PARAMS_FILE} --arm {wildcards.arm} --size {wildcards.size}"
        " > {log} 2>&1"
