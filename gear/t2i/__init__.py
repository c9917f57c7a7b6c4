"""The text-to-image room: the seed's GPIC experiment at any scale.

The frozen baseline and GEAR tokenizers of the class-conditional DAG are transferred, unchanged,
to a fresh caption-conditioned AR (the GPT of gear/models/ar.py) trained per arm and study seed on
image-caption pairs; only the tokenizer differs between arms. Stages, in DAG order (each module
holds the stage's run(); this package is their library):

    t2i-shard     pairs -> webdataset shards + held-out prompts      gear/stages/t2i_shard.py
    t2i-encode    caption embeddings, once per caption               gear/stages/t2i_encode.py
    t2i-judge     prompt-following classifier (embedded set)         gear/stages/t2i_judge.py
    t2i-tokenize  token grids under a frozen tokenizer arm           gear/stages/t2i_tokenize.py
    t2i-train     the caption-conditioned AR (NTP + REPA)            gear/stages/t2i_train.py
    t2i-sample    every EMA snapshot, with and without CFG           gear/stages/t2i_sample.py
    t2i-evaluate  FDD, precision / recall, prompt accuracy           gear/stages/t2i_evaluate.py
    t2i-report    reports/t2i.{md,html,json}                         gear/report/t2i.py

Library: paths (gear/t2i/paths.py), the artifacts the stages hand each other (data.py), the
embedded scenes (scenes.py), listing the pairs (shard.py), the text encoders (text_encoders.py).
Params: the `t2i` section of params.yaml (gear/config.py).
"""
