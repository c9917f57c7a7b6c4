# Final comparison: a fresh AR per (seed, AR arm, size) on pre-extracted tokens, then sampling.
# The baseline's tokens are shared by every seed; the GEAR arm's come from that seed's tuning.

def tokens(w):
    return str(paths.tokens_dir(w.arm, int(w.seed)))


def frozen(w):
    return str(paths.frozen_dir(w.arm, int(w.seed)))


rule tokenize_baseline:
    input:
        str(paths.frozen_dir("baseline")),
        SHARDS,
    output:
        directory(str(paths.tokens_dir("baseline"))),
    params:
        hflip=P.data.hflip,
    log:
        logfile("tokenize_baseline"),
    benchmark:
        benchfile("tokenize_baseline")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear tokenize --params {PARAMS_FILE} --arm baseline > {log} 2>&1"


rule tokenize:
    input:
        str(paths.frozen_dir("{variant}", "{seed}")),
        SHARDS,
    output:
        directory(str(paths.tokens_dir("{variant}", "{seed}"))),
    params:
        hflip=P.data.hflip,
    log:
        logfile("tokenize", "seed", "variant"),
    benchmark:
        benchfile("tokenize", "seed", "variant")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear tokenize --params {PARAMS_FILE} --arm {wildcards.variant} --seed {wildcards.seed} > {log} 2>&1"


rule train_ar:
    input:
        tokens,
        frozen,
        paths.teacher_dir(),
    output:
        directory(str(paths.ar_dir("{arm}", "{size}", "{seed}"))),
        *dvclive("train_ar", paths.seed_part("{seed}"), "{arm}", "{size}"),
    params:
        digest=P.digest("align_weight_ar", "align_layer", "teacher", "teachers", "ar"),
    log:
        logfile("train_ar", "seed", "arm", "size"),
    benchmark:
        benchfile("train_ar", "seed", "arm", "size")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear train-ar --params {PARAMS_FILE} --arm {wildcards.arm} --size {wildcards.size}"
        " --seed {wildcards.seed} > {log} 2>&1"


rule sample:
    input:
        str(paths.ar_dir("{arm}", "{size}", "{seed}")),
        frozen,
    output:
        directory(str(paths.samples_dir("{arm}", "{size}", "{seed}"))),
    params:
        digest=P.digest("sample"),
    log:
        logfile("sample", "seed", "arm", "size"),
    benchmark:
        benchfile("sample", "seed", "arm", "size")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear sample --params {PARAMS_FILE} --arm {wildcards.arm} --size {wildcards.size}"
        " --seed {wildcards.seed} > {log} 2>&1"
