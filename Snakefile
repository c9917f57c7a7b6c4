# GEAR pipeline (Snakemake). Each rule runs one `gear <stage>`; the same DAG is in dvc.yaml.
#   snakemake --profile local all                                   # embedded default, CPU
#   snakemake --profile slurm all --config params=presets/imagenet256.yaml
# Editing the params file reruns exactly the rules whose params (digests below) changed.

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/ar.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/ablations.smk"  # target `ablations`, not part of `all`
include: "workflow/rules/t2i.smk"        # target `t2i` (text-to-image), not part of `all`


rule all:
    input:
        [str(p) for p in paths.report_files().values()],
    default_target: True
