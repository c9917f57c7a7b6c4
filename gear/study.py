"""The seed dimension of a study: which seed a stage runs, and the params it runs under.

A *study seed* (one of params.study.seeds) replaces compute.seed in every stage a seed changes
(tune, freeze, tokenize, train-ar, sample, evaluate of the tuned arms and of every AR), so the
stage code keeps reading compute.seed; the shared stages (shard, teacher, tokenizer-init,
evaluate real, and everything of the baseline tokenizer) keep compute.seed. Paths carry the
seed (gear/paths.py).
"""
from __future__ import annotations

import copy

from gear.config import ParamsError


def resolve_seed(params, seed: int | None) -> int:
    """The study seed of a run: `--seed`, or the only seed of study.seeds when omitted."""
    seeds = params.study.seeds
    if seed is None:
        if len(seeds) == 1:
            return seeds[0]
        raise ParamsError(f"--seed is required: study.seeds lists {seeds}")
    if seed not in seeds:
        raise ParamsError(f"--seed {seed}: not one of study.seeds {seeds}")
    return seed


def seeded(params, seed: int):
    """A copy of params whose compute.seed is the study seed (the caller's params stay as they are)."""
    if hasattr(params, "with_seed"):  # a stage's read-only view (gear/guard.py)
        return params.with_seed(seed)
    out = copy.deepcopy(params)
    out.compute.seed = seed
    return out
