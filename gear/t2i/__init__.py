"""The text-to-image room: the seed's GPIC experiment at any scale.

The frozen baseline and GEAR tokenizers of the class-conditional DAG are transferred, unchanged,
to a fresh caption-conditioned AR (the GPT of gear/models/ar.py) trained per arm and study seed on
image-caption pairs; only the tokenizer differs between arms. Stages, in DAG order:

    t2i-shard     pairs -> webdataset shards + held-out prompts      gear/t2i/shard.py
    t2i-encode    caption embeddings, once per caption               gear/t2i/encode.py
    t2i-judge     prompt-following classifier (embedded set)         gear/t2i/judge.py
    t2i-tokenize  token grids under a frozen tokenizer arm           gear/t2i/tokenize.py
    t2i-train     the caption-conditioned AR (NTP + REPA)            gear/t2i/train.py
    t2i-sample    every EMA snapshot, with and without CFG           gear/t2i/sample.py
    t2i-evaluate  FDD, precision / recall, prompt accuracy           gear/t2i/evaluate.py
    t2i-report    reports/t2i.{md,html,json}                         gear/report/t2i.py

Paths: gear/t2i/paths.py. Params: the `t2i` section of params.yaml (gear/config.py).
"""
