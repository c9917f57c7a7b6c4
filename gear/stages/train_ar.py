"""`gear train-ar --arm A --size S`: a fresh AR on the frozen tokenizer of arm A (reference stage 2);
under stage2 = ar-init the GEAR arm's AR instead continues the stage-1 AR of size S for
ar.steps - tune.steps (`budget`, `load_stage1`; gear/stage2.py).

Recipe (LlamaGen-REPA): L = CE(next token) + align_weight_ar * (-cos(P(h_l), y)) at the tap layer
l = ar.align_layer_for(S), with teacher features y computed online from the shard's image (see
gear/train/ar_objective.py), bf16 autocast; the optimizer, schedule, EMA, gradient accumulation
and DDP / FSDP2 (compute.fsdp: saved state and outputs are the same full tensors either way) are
gear/train/ar_trainer.py's, shared with t2i-train.

Data: the token shards of `gear tokenize`. Augmentation is the horizontal flip only: a coin
flip from the loader's per-sample rng picks the mirrored image *and* its mirrored token grid, so
tokens and teacher targets always describe the same pixels (tokens exist for the center crop
only, so no random crop). ar.batch_size is the global batch per optimizer step:
per-process micro-batch = batch_size / (processes * grad_accum).

Metrics (metrics/train_ar/seed<N>/A/S/) every compute.log_every steps: ntp, align, lr, grad_norm,
tokens_per_s (wall clock, the one non-reproducible column) and val_ntp: next-token CE of the EMA
AR (eval mode, conditional) on the first 512 val images, tokenized once at start with the frozen
tokenizer. At the end: val_ntp, val_ntp_raw (the raw AR) and unigram_entropy, the entropy in
nats of the train tokens' histogram: the CE of a model that ignores all context, which val_ntp
should end below.

Outputs (atomic) in models/ar/seed<N>/A/S/ (--seed N): ar.safetensors (EMA), ar_raw.safetensors,
projector.safetensors, config.json. Resumable state in <state_dir>/train_ar/seed<N>/A/S/.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gear import paths
from gear.artifacts import check_arm, load_tokenizer, load_weights, read_config, read_tokens_manifest
from gear.config import ParamsError
from gear.data.loader import TrainStream, augment, decode_image, decode_label, eval_batches, to_tensor
from gear.io import ArtifactError, atomic_dir, save_tensors, sha256_file, write_json
from gear.runtime import Runtime, seed_everything, setup, teardown
from gear.stage2 import continued_steps
from gear.study import resolve_seed, seeded
from gear.teachers import load_teacher
from gear.train.ar_objective import build_ar, first_rows, val_ntp
from gear.train.ar_trainer import ARTrainer, micro_batch
from gear.train.loop import Loop

STAGE = "train_ar"
VAL_IMAGES = 512
EVAL_BATCH = 128


class TokenDecoder:
    """(image (3, H, W) in [-1, 1], tokens (L,) int64, label) of a token-shard sample; with an
    rng, a coin-flip mirror flips the image and selects the flipped token grid together."""

    def __init__(self, hflip: bool):
        self.hflip = hflip

    def __call__(self, sample: dict, rng) -> tuple:
        img, flip = decode_image(sample), False
        if rng is not None:
            img, flip = augment(img, rng, random_crop=False, hflip=self.hflip)
        views = np.load(io.BytesIO(sample["tokens.npy"]))
        return to_tensor(img), torch.from_numpy(views[int(flip)].reshape(-1).astype(np.int64)), decode_label(sample)


def budget(params, arm: str) -> tuple[int, int]:
    """(steps this run trains, its warm-up steps). Under stage2 = ar-init the GEAR arm's AR continues
    the stage-1 AR of its size: the stage-1 steps count toward ar.steps (the release: 400k of 4M, so
    3.6M here) and the run keeps its lr from the first step (stage 1 warmed it up; the release's
    src/train_ar.py has no schedule). Every other AR trains fresh for ar.steps after ar.warmup_steps."""
    a = params.ar
    if arm == "gear" and paths.sized():
        steps = continued_steps(params)
        if steps <= 0:
            raise ParamsError(f"stage2 = ar-init: ar.steps ({a.steps}) must exceed tune.steps ({params.tune.steps})")
        return steps, 0
    return a.steps, a.warmup_steps


def load_stage1(ar: nn.Module, proj: nn.Module, directory: Path, size: str) -> dict:
    """The stage-1 AR (its EMA, as the release's --ar-init-ckpt reads `ema` first) and projector of
    `gear tune` into fresh modules: weights only (the optimizer starts fresh, as in the release).
    An AR of another size or shape is refused in one line before any tensor is read."""
    cfg = read_config(directory, "tuned tokenizer")
    have, want = cfg.get("ar") or {}, ar.cfg.to_dict()
    if have != want:
        shape = lambda c: f"{c.get('n_layer')} layers x {c.get('dim')}"  # noqa: E731
        diff = next(k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k))
        raise ArtifactError(f"{directory} holds a stage-1 AR of {shape(have)} ({diff} = {have.get(diff)!r}), not "
                            f"the {size} AR of {shape(want)} ({diff} = {want.get(diff)!r}) that stage2 = ar-init "
                            f"continues; remake it: `gear tune --variant gear --size {size}`")
    load_weights(ar, directory / "ar.safetensors", "stage-1 AR weights")
    load_weights(proj, directory / "projector.safetensors", "stage-1 projector weights")
    return cfg


@torch.no_grad()
def val_tokens(params, tok: nn.Module, rt: Runtime, limit: int = VAL_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (N, L) and labels (N,) of the first `limit` val images (center crops, no flip)."""
    def encoded():
        for x, y in eval_batches(params, "val", EVAL_BATCH):
            with rt.autocast():
                _, q = tok.encode(x.to(rt.device))
            yield q.indices.flatten(1), y.to(rt.device)
    return tuple(first_rows(encoded(), limit))


def run(params, arm: str, size: str, seed: int | None = None) -> None:
    check_arm(arm)
    if size not in params.ar.sizes:
        raise ParamsError(f"--size {size!r}: not in ar.sizes {params.ar.sizes} (add it there, e.g. "
                          f"--set 'ar.sizes=[{size}]')")
    seed = resolve_seed(params, seed)
    params = seeded(params, seed)  # the AR's init, data order and dropout
    man = read_tokens_manifest(params, arm, seed, size)  # missing or stale tokens: error before any compute
    a = params.ar
    steps, warmup = budget(params, arm)
    warm = arm == "gear" and paths.sized()  # stage2 = ar-init: continue the stage-1 AR of this size
    rt = setup(params)
    micro = micro_batch(a, rt, "ar")
    grid, L = man["grid"], man["grid"] ** 2
    align_layer = a.align_layer_for(size, params.align_layer)
    teacher = load_teacher(params, rt.device)
    tok = load_tokenizer(paths.frozen_dir(arm, seed, size), device=rt.device)

    seed_everything(params.compute.seed)  # the same initial weights on every process
    ar, proj = build_ar(params, size, man["codebook_size"], grid, man["num_classes"], teacher.dim,
                        init=a.init, init_key=a.init_key)  # ar.init: a released GPT (steps 0: as is)
    stage1 = paths.tune_dir("gear", seed, size) if warm else None
    if warm:  # before the EMA is copied: it starts from the stage-1 weights too
        load_stage1(ar, proj, stage1, size)
    ar, proj = ar.to(rt.device), proj.to(rt.device)
    ar.grad_checkpointing = params.compute.grad_checkpointing
    trainer = ARTrainer(params, rt, ar, proj, a, steps=steps, warmup=warmup)
    stream = TrainStream(params, "train", micro, rank=rt.rank, world=rt.world, augment=True,
                         pattern=str(paths.tokens_dir(arm, seed, size) / "{split}-*.tar"),
                         decode=TokenDecoder(man["hflip"]))
    val_x, val_y = val_tokens(params, tok, rt)
    del tok
    seed_everything(params.compute.seed + rt.rank)  # dropout masks differ across processes

    loop = Loop(params, rt, name=f"{STAGE}[{arm}/{size}]", steps=steps,
                state_dir=paths.state_dir(params, STAGE, paths.seed_part(seed), arm, size), compat={
                    "ar": ar.cfg.to_dict(), "projector_hidden": a.projector_hidden, "teacher": params.teacher,
                    "align": [params.align_weight_ar, align_layer], "tokenizer_sha256": man["tokenizer_sha256"],
                    **trainer.compat(), "seed": params.compute.seed,
                    **({"stage1": sha256_file(stage1 / "ar.safetensors"), "steps": steps} if warm else {})},
                metrics_dir=paths.train_ar_metrics_dir(arm, size, seed), parts=trainer.parts(stream))

    def val(model: nn.Module) -> float:
        return val_ntp(model, val_x, (val_y,), rt, EVAL_BATCH)

    ar.train(); proj.train()
    loop.run(lambda step: trainer.step(step, stream, teacher, grid, align_layer, params.align_weight_ar, loop),
             lambda step, out: trainer.row(step, out, loop, a.batch_size * L, val), show=("ntp", "val_ntp"))

    final = trainer.finish(loop, val, f"train-ar[{arm}/{size}]", unigram_entropy=man["unigram_entropy"])
    weights = trainer.weights()
    if rt.is_main:
        with atomic_dir(paths.ar_dir(arm, size, seed)) as out:
            for name, sd in weights.items():
                save_tensors(out / f"{name}.safetensors", sd)
            write_json(out / "config.json", {
                "arm": arm, "size": size, "seed": seed, "gpt": ar.cfg.to_dict(), "align_layer": align_layer,
                "align_weight_ar": params.align_weight_ar, "teacher": teacher.name, "teacher_dim": teacher.dim,
                "projector_hidden": a.projector_hidden, "tokenizer_dir": man["tokenizer_dir"],
                "tokenizer_sha256": man["tokenizer_sha256"],
                "tokenizer_config_digest": hashlib.sha256(
                    json.dumps(man["tokenizer_config"], sort_keys=True).encode()).hexdigest()[:16],
                "steps": steps, "batch_size": a.batch_size, "final": final, "init": a.init,
                **({"stage2": params.stage2, "init": str(stage1), "budget": a.steps} if warm else {})})
    loop.finish()
    teardown(rt)
