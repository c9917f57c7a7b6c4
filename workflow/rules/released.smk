# The public checkpoints of params `released:` against their published numbers (gear/released.py):
# target `released`, not part of `all`.
#   snakemake --profile local released
# Its rules are built from gear/dag.py with the others (stages.smk); released/dvc.yaml is generated
# from the same declarations. An entry left null runs in an instant and is reported "not downloaded".

from gear import released as released_catalogue


rule released:
    input:
        [f"reports/{name}" for name in released_catalogue.REPORT_NAMES],
