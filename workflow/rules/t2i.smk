# The text-to-image room (gear/t2i/): target `t2i`, not part of `all` (README: its own wall time).
#   snakemake --profile local t2i
# Its rules are built from gear/dag.py with the others (stages.smk); t2i/dvc.yaml is generated from
# the same declarations. The frozen tokenizers come from the class-conditional rules.

from gear.t2i import paths as t2i_paths


rule t2i:
    input:
        [str(p) for p in t2i_paths.report_files().values()],
