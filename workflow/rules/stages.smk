# Every rule of the DAG, built from the one stage table (gear/dag.py): outputs, inputs, params and
# commands are the declaration's, so the rules, dvc.yaml, t2i/dvc.yaml and released/dvc.yaml cannot drift apart.
#
# Per stage one rule for the main DAG, and (for the stages an ablation row runs) one for the rows:
# the same declaration under the path prefix ablations/{row}/, its inputs taken from the row's
# layout (its own teacher / warm-up only when the row changes them; gear/ablations.py).
#
# Every rule also reads a stamp per job (gear/provenance.py `stamp`): it is touched when the job's
# existing output was made with other params (by DVC, by hand, or by this tool under another
# params file), so Snakemake reruns exactly those jobs and what follows, though it holds no
# metadata for files it did not make.

from pathlib import Path

from gear import ablations as AB
from gear import dag, provenance
from gear import scaling as SC

# the grid's rows and the scaling ladder's (gear/scaling.py): one set of row rules serves both
AB_ROWS = {r.name: r for r in [*AB.runnable(P), *SC.rows(P)]}
AB_COPIED = [n for n, r in AB_ROWS.items() if AB.reuses_ste_variant(P, r)]
AB_STAGES = ("teacher", "tokenizer_init", "tune", "freeze", "tokenize", "train_ar_gear", "sample_gear",
             "evaluate_tokenizer", "evaluate_samples_gear",
             # the scaling study's upstream rows (own teacher and warm-up): their baseline and real statistics
             "freeze_baseline", "evaluate_tokenizer_baseline", "evaluate_real")


def st_rows_regex(names):
    return "|".join(re.escape(n) for n in names) or "(?!x)x"  # no rows: a pattern that never matches


def st_row_owns(row: str, root: str) -> bool:
    return dag.roots(AB.layout(P, AB_ROWS[row]))[root] != Path(".")


def st_wc(stage, wildcards):
    return {k: (int(wildcards[k]) if k == "seed" else wildcards[k]) for k in stage.wildcards}


def st_job(stage, wildcards, row):
    return dag.Job.of(stage.name, st_wc(stage, wildcards), row, P.stage2)


def st_pattern(template: str, prefix: str) -> str:
    return prefix + dag.render(template, P, {k: "{" + k + "}" for k in ("seed", "variant", "size", "arm")})


def st_declare(o, prefix):
    path = st_pattern(o.path, prefix)
    return directory(path) if o.kind == "dir" else path


def st_inputs(stage, row_rule):
    def inputs(w):
        job = st_job(stage, w, w.row if row_rule else None)
        return [str(dag.primary(d, P)) for d in dag.deps(job, P)] + [str(provenance.stamp_path(job, P))]
    return inputs


def st_row_jobs():
    """Every job the ablation rows run (their GEAR arm, the eval AR size, every study seed)."""
    size = AB.eval_size(P)
    for name in [r.name for r in AB.runnable(P)]:
        for stage in ("teacher", "tokenizer_init"):
            if st_row_owns(name, dag.STAGES[stage].root):
                yield dag.Job.of(stage, {}, name, P.stage2)
        for seed in SEEDS:
            for stage in ("tune", "freeze", "evaluate_tokenizer", "tokenize", "train_ar_gear", "sample_gear",
                          "evaluate_samples_gear"):
                if not (stage == "tune" and name in AB_COPIED):
                    yield dag.Job.of(stage, {"seed": seed, "variant": "gear", "size": size}, name, P.stage2)


# Every job's stamp is made (or touched) here, before Snakemake builds its DAG: a file that an
# input function created while Snakemake was already listing folders can read as missing.
for st_stamped in [*dag.main_jobs(P), dag.Job.of("report", mode=P.stage2), *dag.t2i_jobs(P),
                   dag.Job.of("t2i_report", mode=P.stage2), *dag.released_jobs(P), dag.Job.of("released_report"),
                   *st_row_jobs(), *SC.jobs(P), dag.Job.of("scaling_report", mode=P.stage2)]:
    provenance.stamp(st_stamped, P)


def st_digest(stage, row_rule):
    return lambda w: provenance.values(st_job(stage, w, w.row if row_rule else None), P)


def st_command(stage, row_rule):
    """The job's command (a rule param: a `shell:` expression would be evaluated again when the job
    runs, after this loop has moved on, and give every rule the last stage's command). Its
    launcher is a resource (`launch`), not part of it: a param change reruns a job, and asking for
    more GPUs must not. Nor is the params file's name (st_resources)."""
    def command(w):
        args = {k: w[k] for k in stage.wildcards}
        row = f" --ablation {w.row}" if row_rule else ""
        return f"gear {stage.cli.format(**args)}", row
    return command


def st_resources(stage):
    res = TRAIN if stage.heavy else LIGHT
    # the params file's name is a resource too: neither a param nor the shell line's code, both rerun
    # triggers, so `--config params=<a copy>` reruns nothing (the digest param follows the values)
    return {**res, "launch": TRAIN_LAUNCH if stage.heavy and stage.launch else "", "params_file": PARAMS_FILE}


def st_constraints(stage, row_rule):
    if not row_rule:  # a wildcard with fewer values than its default (tokenize: gear; continue has its own rule)
        return {w: "|".join(re.escape(v) for v in vals) for w, vals in stage.axes}
    rows = [n for n in AB_ROWS if (stage.root == "tuned" or st_row_owns(n, stage.root))
            and not (stage.name == "tune" and n in AB_COPIED)]
    return {"row": st_rows_regex(rows), "variant": "gear", "size": re.escape(AB.eval_size(P))}


# the stage-2 mode's table (params stage2): under ar-init the tuned arms' stages run per AR size
for st_stage, st_row_rule in [(s, r) for s in dag.table(P.stage2).values() for r in (False, True)
                          if not r or (r and s.name in AB_STAGES)]:
    st_name = f"ablation_{st_stage.name}" if st_row_rule else st_stage.name
    st_wcs = ["row"] * st_row_rule + list(st_stage.wildcards)

    rule:
        name: st_name
        input: st_inputs(st_stage, st_row_rule)
        output: *[st_declare(o, "ablations/{row}/" if st_row_rule else "") for o in st_stage.outs]
        params: digest=st_digest(st_stage, st_row_rule), cmd=st_command(st_stage, st_row_rule)
        wildcard_constraints: **st_constraints(st_stage, st_row_rule)
        log: logfile(st_name, *st_wcs)
        benchmark: benchfile(st_name, *st_wcs)
        threads: TRAIN_THREADS if st_stage.heavy else LIGHT_THREADS
        resources: **st_resources(st_stage)
        shell: "{resources.launch}{params.cmd[0]} --params {resources.params_file:q}{params.cmd[1]} > {log} 2>&1"
