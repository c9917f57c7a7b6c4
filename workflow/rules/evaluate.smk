# Metrics JSONs: real-image statistics, tokenizer quality per arm, sample quality per (arm, size).
# Feature extraction is distributed (rank r takes batches r, r+N, ...; rank 0 gathers and writes),
# so these rules get the training GPUs and launcher: 50k samples through Inception need them.

rule evaluate_real:
    input:
        SHARDS,
        paths.teacher_dir(),
    output:
        directory(paths.real_stats_dir()),
    params:
        digest=P.digest("metrics"),
    log:
        logfile("evaluate_real"),
    benchmark:
        benchfile("evaluate_real")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear evaluate real --params {PARAMS_FILE} > {log} 2>&1"


rule evaluate_tokenizer:
    input:
        str(paths.frozen_dir("{arm}")),
        SHARDS,
        paths.teacher_dir(),
        paths.real_stats_dir(),
    output:
        str(paths.eval_tokenizer_json("{arm}")),
    params:
        digest=P.digest("metrics"),
    log:
        logfile("evaluate_tokenizer", "arm"),
    benchmark:
        benchfile("evaluate_tokenizer", "arm")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear evaluate tokenizer --params {PARAMS_FILE} --arm {wildcards.arm} > {log} 2>&1"


rule evaluate_samples:
    input:
        str(paths.samples_dir("{arm}", "{size}")),
        str(paths.ar_dir("{arm}", "{size}")),
        str(paths.frozen_dir("{arm}")),
        paths.teacher_dir(),
        paths.real_stats_dir(),
        SHARDS,
    output:
        str(paths.eval_samples_json("{arm}", "{size}")),
    params:
        digest=P.digest("metrics"),
    log:
        logfile("evaluate_samples", "arm", "size"),
    benchmark:
        benchfile("evaluate_samples", "arm", "size")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear evaluate samples --params {PARAMS_FILE} --arm {wildcards.arm} --size {wildcards.size} > {log} 2>&1"
        " > {log} 2>&1"
