# GEAR pipeline (Snakemake). Each rule runs one `gear <stage>`; the rules are built from the stage
# table in gear/dag.py, from which dvc.yaml is generated too (`gear dag --write`).
#   snakemake --profile local all                                   # embedded default, CPU
#   snakemake --profile slurm all --config params=presets/imagenet256.yaml
# A job reruns when the params its stage declares change, whichever tool made its outputs
# (gear/provenance.py: every artifact records what made it).

include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"
include: "workflow/rules/ablations.smk"  # target `ablations`, not part of `all`
include: "workflow/rules/t2i.smk"        # target `t2i` (text-to-image), not part of `all`
include: "workflow/rules/released.smk"   # target `released` (public checkpoints), not part of `all`
include: "workflow/rules/scaling.smk"    # target `scaling` (issue 31's study), not part of `all`


rule all:
    input:
        [str(p) for p in paths.report_files().values()],
    default_target: True
