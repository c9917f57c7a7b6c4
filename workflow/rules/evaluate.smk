# Metrics JSONs: real-image statistics, tokenizer quality per arm, sample quality per (arm, size).

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
    resources:
        **LIGHT,
    shell:
        "gear evaluate real --params {PARAMS_FILE} > {log} 2>&1"


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
    resources:
        **LIGHT,
    shell:
        "gear evaluate tokenizer --params {PARAMS_FILE} --arm {wildcards.arm} > {log} 2>&1"


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
    resources:
        **LIGHT,
    shell:
        "gear evaluate samples --params {PARAMS_FILE} --arm {wildcards.arm} --size {wildcards.size}"
        " > {log} 2>&1"
