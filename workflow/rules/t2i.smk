# The text-to-image room (gear/t2i/): target `t2i`, not part of `all` (README: its own wall time).
#   snakemake --profile local t2i
# The frozen tokenizers come from the class-conditional rules (freeze_baseline, freeze); the
# baseline one is shared by every seed, the GEAR one is per seed. The same DAG is in t2i/dvc.yaml
# (tests/test_t2i_pipeline.py keeps them in step). Params digests use dotted keys (t2i.ar, ...).

from gear.t2i import paths as t2i_paths

T2I_SHARDS = str(t2i_paths.SHARD_DIR)
T2I_CAPTIONS = str(t2i_paths.CAPTIONS_DIR)


rule t2i:
    input:
        [str(p) for p in t2i_paths.report_files().values()],


rule t2i_shard:
    output:
        directory(T2I_SHARDS),
    params:
        digest=P.digest("data.resolution", "data.image_format", "t2i.data"),
    log:
        logfile("t2i_shard"),
    benchmark:
        benchfile("t2i_shard")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear t2i-shard --params {PARAMS_FILE} > {log} 2>&1"


rule t2i_encode:  # a 1.7B text encoder at full scale: a GPU, one process
    input:
        T2I_SHARDS,
    output:
        directory(T2I_CAPTIONS),
    params:
        digest=P.digest("t2i.text", "compute.precision"),
    log:
        logfile("t2i_encode"),
    benchmark:
        benchfile("t2i_encode")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "gear t2i-encode --params {PARAMS_FILE} > {log} 2>&1"


rule t2i_judge:
    input:
        T2I_SHARDS,
    output:
        directory(str(t2i_paths.JUDGE_DIR)),
        str(t2i_paths.judge_metrics_dir() / "metrics.json"),
        directory(str(t2i_paths.judge_metrics_dir() / "plots" / "metrics")),
    params:
        digest=P.digest("t2i.judge", "compute.seed"),
    log:
        logfile("t2i_judge"),
    benchmark:
        benchfile("t2i_judge")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear t2i-judge --params {PARAMS_FILE} > {log} 2>&1"


rule t2i_tokenize_baseline:
    input:
        str(paths.frozen_dir("baseline")),
        T2I_CAPTIONS,
    output:
        directory(str(t2i_paths.tokens_dir("baseline"))),
    log:
        logfile("t2i_tokenize_baseline"),
    benchmark:
        benchfile("t2i_tokenize_baseline")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear t2i-tokenize --params {PARAMS_FILE} --arm baseline > {log} 2>&1"


rule t2i_tokenize:
    input:
        str(paths.frozen_dir("gear", "{seed}")),
        T2I_CAPTIONS,
    output:
        directory(str(t2i_paths.tokens_dir("gear", "{seed}"))),
    log:
        logfile("t2i_tokenize", "seed"),
    benchmark:
        benchfile("t2i_tokenize", "seed")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear t2i-tokenize --params {PARAMS_FILE} --arm gear --seed {wildcards.seed} > {log} 2>&1"


def t2i_tokens(w):
    return str(t2i_paths.tokens_dir(w.arm, int(w.seed)))


rule t2i_train:
    input:
        t2i_tokens,
        frozen,
        paths.teacher_dir(),
    output:
        directory(str(t2i_paths.ar_dir("{arm}", "{seed}"))),
        str(t2i_paths.train_metrics_dir("{arm}", "{seed}") / "metrics.json"),
        directory(str(t2i_paths.train_metrics_dir("{arm}", "{seed}") / "plots" / "metrics")),
    params:
        digest=P.digest("teacher", "teachers", "t2i.ar"),
    log:
        logfile("t2i_train", "seed", "arm"),
    benchmark:
        benchfile("t2i_train", "seed", "arm")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear t2i-train --params {PARAMS_FILE} --arm {wildcards.arm} --seed {wildcards.seed} > {log} 2>&1"


rule t2i_sample:
    input:
        str(t2i_paths.ar_dir("{arm}", "{seed}")),
        frozen,
        T2I_CAPTIONS,
    output:
        directory(str(t2i_paths.samples_dir("{arm}", "{seed}"))),
    params:
        digest=P.digest("t2i.sample"),
    log:
        logfile("t2i_sample", "seed", "arm"),
    benchmark:
        benchfile("t2i_sample", "seed", "arm")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "{TRAIN_LAUNCH}gear t2i-sample --params {PARAMS_FILE} --arm {wildcards.arm} --seed {wildcards.seed} > {log} 2>&1"


rule t2i_evaluate_real:  # one process (gear/t2i/evaluate.py)
    input:
        T2I_SHARDS,
        paths.teacher_dir(),
    output:
        directory(str(t2i_paths.REAL_DIR)),
    params:
        digest=P.digest("metrics", "t2i.feature_space"),
    log:
        logfile("t2i_evaluate_real"),
    benchmark:
        benchfile("t2i_evaluate_real")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "gear t2i-evaluate real --params {PARAMS_FILE} > {log} 2>&1"


rule t2i_evaluate:
    input:
        str(t2i_paths.samples_dir("{arm}", "{seed}")),
        str(t2i_paths.ar_dir("{arm}", "{seed}")),
        str(t2i_paths.JUDGE_DIR),
        str(t2i_paths.REAL_DIR),
        T2I_CAPTIONS,
        paths.teacher_dir(),
    output:
        str(t2i_paths.eval_json("{arm}", "{seed}")),
    params:
        digest=P.digest("metrics", "t2i.feature_space"),
    log:
        logfile("t2i_evaluate", "seed", "arm"),
    benchmark:
        benchfile("t2i_evaluate", "seed", "arm")
    threads: TRAIN_THREADS
    resources:
        **TRAIN,
    shell:
        "gear t2i-evaluate samples --params {PARAMS_FILE} --arm {wildcards.arm} --seed {wildcards.seed} > {log} 2>&1"


rule t2i_report:
    input:
        [str(p) for p in t2i_paths.report_producers(P)],
    output:
        *[str(p) if p.suffix else directory(str(p)) for p in t2i_paths.report_files().values()],
    params:
        digest=P.digest("study"),
    log:
        logfile("t2i_report"),
    benchmark:
        benchfile("t2i_report")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear t2i-report --params {PARAMS_FILE} > {log} 2>&1"
