# Issue 31's scaling study (gear/scaling.py): `snakemake --cores 2 scaling`, not part of `all`.
# The control arm's fresh AR (`continue` in tune.ablations) and the guide ladder's rows run through
# the rules of stages.smk (the `*_continue` rules; the ablation_* rules under ablations/<row>/);
# its report reads the main DAG's outputs too, so `scaling` runs `all`'s jobs as well.


rule scaling:
    input:
        [str(o) for o in dag.outputs(dag.Job.of("scaling_report"), P)],
