# reports/: tables and loss curves from every metrics file, sample grids.

rule report:
    input:
        paths.real_stats_dir(),
        expand(str(paths.eval_tokenizer_json("{arm}")), arm=TOKENIZER_ARMS),
        expand(str(paths.eval_samples_json("{arm}", "{size}")), arm=AR_ARMS, size=SIZES),
        dvclive("teacher")[0],
        dvclive("tokenizer_init")[0],
        expand(dvclive("tune", "{variant}")[0], variant=TUNE_VARIANTS),
        expand(str(paths.freeze_stats_json("{arm}")), arm=TOKENIZER_ARMS),
        expand(dvclive("train_ar", "{arm}", "{size}")[0], arm=AR_ARMS, size=SIZES),
        expand(str(paths.samples_dir("{arm}", "{size}")), arm=AR_ARMS, size=SIZES),
    output:
        directory(paths.REPORTS_DIR),
    log:
        logfile("report"),
    benchmark:
        benchfile("report")
    threads: LIGHT_THREADS
    resources:
        **LIGHT,
    shell:
        "gear report --params {PARAMS_FILE} > {log} 2>&1"
