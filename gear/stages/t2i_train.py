"""`gear t2i-train --arm A [--seed N]`: a fresh caption-conditioned AR on the frozen tokenizer of
arm A (the seed's "LlamaGen-REPA-1.0B vs GEAR-1.0B": only the tokenizer differs between arms).

Recipe, as the class-conditional train-ar: L = CE(next token) + t2i.ar.align_weight * REPA at
block t2i.ar.align_layer (teacher features of the pair's image, computed online), caption dropout
to the null caption (CFG); the one AR (gear/models/ar.py, caption condition) trained by the one AR
trainer (gear/train/ar_trainer.py: AdamW, warm-up then constant lr, EMA, gradient accumulation,
DDP or FSDP2). No augmentation (captions say left and right). t2i.ar.batch_size is the global
batch per optimizer step.

EMA snapshots at t2i.ar.eval_steps are what t2i-sample and t2i-evaluate measure (the seed's
table is at 50k .. 390k steps); they are written into the resumable state folder as training
passes them and copied into the output at the end.

Metrics (t2i/metrics/train/seed<N>/A/, dvclive) every compute.log_every steps: ntp, align, lr,
grad_norm, tokens_per_s (wall clock) and val_ntp: next-token CE of the EMA AR (eval mode,
captioned) on the first 512 val pairs. These curves give the steps-to-baseline speed-ups of the
report (the seed's 2.5x NTP, 11.1x REPA).

Outputs (atomic) in t2i/models/ar/seed<N>/A/: ar.safetensors (final EMA), ar_raw.safetensors,
projector.safetensors, ema_step<S>.safetensors per eval step, config.json. Resumable state in
<state_dir>/t2i/train/seed<N>/A/.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from gear.data.loader import TrainStream, eval_batches
from gear.io import ArtifactError, atomic_dir, save_tensors, write_json
from gear.models.ar import GPT, GPTConfig, Projector
from gear.runtime import seed_everything, setup, teardown
from gear.study import resolve_seed, seeded
from gear.t2i import paths
from gear.t2i.data import TokenSample, arm_seed, check_arm, pattern, snapshot_name, tokens_manifest
from gear.teachers import load_teacher
from gear.train.ar_objective import first_rows, val_ntp
from gear.train.ar_trainer import ARTrainer, micro_batch
from gear.train.loop import Loop

STAGE = "t2i_train"
VAL_PAIRS = 512
EVAL_BATCH = 128


def val_pairs(params, folder: Path, text_len: int, limit: int = VAL_PAIRS):
    """(tokens, captions, masks) of the first `limit` val pairs."""
    batches = eval_batches(params, "val", EVAL_BATCH, pattern=pattern(folder), decode=TokenSample(text_len))
    return first_rows((batch[1:] for batch in batches), limit)


def run(params, arm: str, seed: int | None = None) -> None:
    check_arm(arm)
    study_seed = resolve_seed(params, seed)
    tok_seed = arm_seed(params, arm, seed)
    params = seeded(params, study_seed)  # the AR's init, data order, dropout
    man = tokens_manifest(params, arm, tok_seed)  # missing or stale tokens: one line, before any compute
    a = params.t2i.ar
    rt = setup(params)
    micro = micro_batch(a, rt, "t2i.ar")
    grid, L = man["grid"], man["grid"] ** 2
    folder = paths.tokens_dir(arm, tok_seed)
    teacher = load_teacher(params, rt.device)

    seed_everything(params.compute.seed)  # the same initial weights on every process
    cfg = GPTConfig.from_size(a.size, man["codebook_size"], grid, params=params, text_dim=man["text_dim"],
                              text_len=man["text_len"], caption_dropout=a.caption_dropout, token_dropout=a.token_dropout,
                              resid_dropout=a.resid_dropout, ffn_dropout=a.ffn_dropout)
    ar = GPT(cfg).to(rt.device)
    ar.grad_checkpointing = params.compute.grad_checkpointing
    proj = Projector(cfg.dim, teacher.dim, hidden=a.projector_hidden).to(rt.device)
    trainer = ARTrainer(params, rt, ar, proj, a, steps=a.steps, warmup=a.warmup_steps)
    stream = TrainStream(params, "train", micro, rank=rt.rank, world=rt.world, augment=False,
                         pattern=pattern(folder), decode=TokenSample(cfg.text_len))
    val_tokens, *val_cond = (v.to(rt.device) for v in val_pairs(params, folder, cfg.text_len))
    seed_everything(params.compute.seed + rt.rank)  # dropout masks differ across processes

    state_dir = paths.state_dir(params, arm, study_seed)
    loop = Loop(params, rt, name=f"t2i-train[{arm}]", steps=a.steps, state_dir=state_dir, compat={
                    "t2i_gpt": cfg.to_dict(), "projector_hidden": a.projector_hidden, "teacher": params.teacher,
                    "align": [a.align_weight, a.align_layer], "tokenizer_sha256": man["tokenizer_sha256"],
                    "captions_digest": man["captions_digest"], "eval_steps": a.eval_steps, **trainer.compat(),
                    "seed": params.compute.seed},
                metrics_dir=paths.train_metrics_dir(arm, study_seed), parts=trainer.parts(stream))

    def val(model: nn.Module) -> float:
        return val_ntp(model, val_tokens, val_cond, rt, EVAL_BATCH)

    def step_fn(step: int):
        out = trainer.step(step, stream, teacher, grid, a.align_layer, a.align_weight, loop)
        if step + 1 in a.eval_steps:  # every process joins the gather; rank 0 writes
            sd = trainer.dp.state_dict(trainer.ema.model)
            if rt.is_main:
                save_tensors(state_dir / f"{snapshot_name(step + 1)}.safetensors", sd)
        return out

    ar.train(); proj.train()
    loop.run(step_fn, lambda step, out: trainer.row(step, out, loop, a.batch_size * L, val), show=("ntp", "val_ntp"))

    final = trainer.finish(loop, val, f"t2i-train[{arm}]", unigram_entropy=man["unigram_entropy"])
    weights = trainer.weights()
    if rt.is_main:
        missing = [s for s in a.eval_steps if not (state_dir / f"{snapshot_name(s)}.safetensors").is_file()]
        if missing:
            raise ArtifactError(f"EMA snapshots of steps {missing} are missing from {state_dir} (deleted during the "
                                f"run?); delete {loop.ckpt.path} and rerun "
                                f"`gear t2i-train --arm {arm} --seed {study_seed}`")
        with atomic_dir(paths.ar_dir(arm, study_seed)) as out:
            for name, sd in weights.items():
                save_tensors(out / f"{name}.safetensors", sd)
            for s in a.eval_steps:
                shutil.copyfile(state_dir / f"{snapshot_name(s)}.safetensors", out / f"{snapshot_name(s)}.safetensors")
            write_json(out / "config.json", {
                "arm": arm, "seed": study_seed, "t2i_gpt": cfg.to_dict(), "size": a.size,
                "align_layer": a.align_layer, "align_weight": a.align_weight, "teacher": teacher.name,
                "teacher_dim": teacher.dim, "projector_hidden": a.projector_hidden, "eval_steps": a.eval_steps,
                "snapshots": {str(s): snapshot_name(s) for s in a.eval_steps}, "encoder": man["encoder"],
                "tokenizer_dir": man["tokenizer_dir"], "tokenizer_sha256": man["tokenizer_sha256"],
                "captions_digest": man["captions_digest"], "steps": a.steps, "batch_size": a.batch_size,
                "final": final})
        for s in a.eval_steps:
            (state_dir / f"{snapshot_name(s)}.safetensors").unlink(missing_ok=True)
    loop.finish()
    teardown(rt)
