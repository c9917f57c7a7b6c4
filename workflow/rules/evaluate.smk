# Metrics JSONs: real-image statistics, tokenizer quality per arm (per seed for the tuned arms),
# sample quality per (seed, arm, size). Feature extraction is distributed (rank r takes batches
# r, r+N, ...; rank 0 gathers and writes), so these rules get the training GPUs and launcher: 50k
# samples through Inception need them.

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


rule evaluate_tokenizer_baseline:
    input:
        str(paths.frozen_dir("baseline")),
        SHARDS,
        paths.teacher_dir(),
        paths.real_stats_dir(),
    output:
        str(paths.eval_tokenizer_json("baseline")),
    params:
        digest=P.digest("metrics"),
    log:
        logfile("evaluate_tokenizer_baseline"),
    benchmark:
        benchfile("evaluate_tokenizer_baseline")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear evaluate tokenizer --params {PARAMS_FILE} --arm baseline > {log} 2>&1"


rule evaluate_tokenizer:
    input:
        str(paths.frozen_dir("{variant}", "{seed}")),
        SHARDS,
        paths.teacher_dir(),
        paths.real_stats_dir(),
    output:
        str(paths.eval_tokenizer_json("{variant}", "{seed}")),
    params:
        digest=P.digest("metrics"),
    log:
        logfile("evaluate_tokenizer", "seed", "variant"),
    benchmark:
        benchfile("evaluate_tokenizer", "seed", "variant")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear evaluate tokenizer --params {PARAMS_FILE} --arm {wildcards.variant}"
        " --seed {wildcards.seed} > {log} 2>&1"


rule evaluate_samples:
    input:
        str(paths.samples_dir("{arm}", "{size}", "{seed}")),
        str(paths.ar_dir("{arm}", "{size}", "{seed}")),
        frozen,
        paths.teacher_dir(),
        paths.real_stats_dir(),
        SHARDS,
    output:
        str(paths.eval_samples_json("{arm}", "{size}", "{seed}")),
    params:
        digest=P.digest("metrics"),
    log:
        logfile("evaluate_samples", "seed", "arm", "size"),
    benchmark:
        benchfile("evaluate_samples", "seed", "arm", "size")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear evaluate samples --params {PARAMS_FILE} --arm {wildcards.arm} --size {wildcards.size}"
        " --seed {wildcards.seed} > {log} 2>&1"
