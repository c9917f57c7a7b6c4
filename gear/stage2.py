"""Stage 2's two modes for the GEAR arm (params `stage2`), after the release's
scripts/train/train_ar_gear.sh (Tencent-Hunyuan/GEAR, GEAR_MODE):

  fresh    a fresh AR on the frozen tokenizer for ar.steps (the release's `vq-only`); stage 1 runs
           once per seed with one guide, tune.ar_size, at align_layer.
  ar-init  the release's default: stage 1 runs once per AR size (guide = that size, tapped at its
           entry of ar.align_layers) and the GEAR AR continues that stage-1 AR: its EMA weights and
           projector, a fresh optimizer, no second warm-up (src/train_ar.py --ar-init-ckpt), for
           ar.steps - tune.steps, so that it has seen ar.steps steps in all (400k + 3.6M = 4M).

The baseline trains a fresh AR for ar.steps in both modes. Paths: gear/paths.py (`sized`); the
DAG: gear/dag.py (AR_INIT); the warm start: gear/stages/train_ar.py (`load_stage1`).
"""
from __future__ import annotations


def continued_steps(params) -> int:
    """Steps the ar-init GEAR AR trains in stage 2: the stage-1 steps count toward ar.steps."""
    return params.ar.steps - params.tune.steps


def steps_before(params, arm: str) -> int:
    """AR steps an arm's stage-2 AR has seen before its own first step (its curves' x offset in the
    report): the stage-1 steps for the ar-init GEAR AR, else 0."""
    return params.tune.steps if params.stage2 == "ar-init" and arm == "gear" else 0


def describe(params) -> str:
    """The report's line: the mode and each arm's AR step budget."""
    a, t = params.ar, params.tune
    if params.stage2 == "ar-init":
        return (f"Stage 2: `ar-init` (the release's default). Stage 1 (tune) runs once per AR size, guided by "
                f"that size; the GEAR arm's AR continues the stage-1 AR of its size for "
                f"{continued_steps(params)} steps ({t.steps} in stage 1 + {continued_steps(params)} = {a.steps} in "
                f"all; weights only, fresh optimizer, no second warm-up); the baseline's AR trains fresh for "
                f"{a.steps} steps. Size-free tables read the tokenizer tuned with the {t.ar_size} guide "
                f"(tune.ar_size).")
    return (f"Stage 2: `fresh` (the release's vq-only). Both arms' ARs train fresh on their frozen tokenizer for "
            f"{a.steps} steps; the GEAR tokenizer was tuned once per seed with a {t.ar_size} guide "
            f"(tune.ar_size) for {t.steps} steps.")
