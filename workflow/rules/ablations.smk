# The seed's ablation grid (gear/ablations.py): `snakemake --profile local ablations`, not part of
# `all`. A row runs the GEAR arm's stages (tune .. evaluate, one eval AR size) under
# ablations/<row>/, per study seed, through the same rules as the main DAG (stages.smk, the
# ablation_* rules: the declaration under the prefix ablations/{row}/). It reads the main teacher
# and warm-up unless its overrides change them: a tau row shares shards, teacher and warm-up; a
# quantizer row trains its own warm-up. The default row is the main DAG's GEAR arm;
# `training-ste` copies the main DAG's `tune --variant ste` run instead of repeating it. Rows that
# cannot run (a hub teacher while ablations.hub_teachers is false) are skipped, and the report
# says why: the job set follows from params alone.


# under stage2 = ar-init a row's tuning is its eval size's (gear/dag.py layout_for)
with paths.using(paths.Layout(guide=AB.eval_size(P) if P.stage2 == "ar-init" else None)):
    AB_STE_RUN, AB_STE_COPY = str(paths.tune_dir("ste", "{seed}")), str(paths.tune_dir("gear", "{seed}"))


rule ablation_tune_copy_ste:
    # training-ste is the main DAG's `tune --variant ste` run (same params but e2e_mode, which the
    # variant sets): copy it rather than train it twice.
    input:
        AB_STE_RUN,
    output:
        directory(str(paths.ablation_root("{row}") / AB_STE_COPY)),
    wildcard_constraints:
        row=st_rows_regex(AB_COPIED),
    log:
        logfile("ablation_tune_copy_ste", "row", "seed"),
    threads: 1
    resources:
        **LIGHT,
    shell:
        "cp -r {input} {output} > {log} 2>&1"


def ablation_report_inputs():
    """Every row's (the default's: the main DAG's) per-seed output files, as the rules declare them."""
    rows = [AB.DEFAULT, *AB.runnable(P)]  # the grid's rows (AB_ROWS also holds the scaling ladder's)
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
