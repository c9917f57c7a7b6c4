"""`gear train-ar --arm A --size S`: a fresh AR on the frozen tokenizer of arm A (reference stage 2);
under stage2 = ar-init the GEAR arm's AR instead continues the stage-1 AR of size S for
ar.steps - tune.steps (`budget`, `load_stage1`; gear/stage2.py).

Recipe (LlamaGen-REPA): L = CE(next token) + align_weight_ar * (-cos(P(h_l), y)) at the tap layer
l = ar.align_layer_for(S), with teacher features y computed online from the shard's image (see
gear/train/ar_objective.py). AdamW (nanoGPT decay groups) over AR + projector, linear warm-up
over ar.warmup_steps then constant lr, grad clipping, EMA of the AR, bf16 autocast, optional
torch.compile, gradient accumulation (no_sync on non-final micro-steps under DDP). Under torchrun
the AR and projector train with DDP, or with compute.fsdp sharded by FSDP2 (gear/train/parallel.py:
parameters, gradients, AdamW state and the EMA split across processes; saved state and outputs
are the same full tensors either way).

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
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gear import paths
from gear.artifacts import load_tokenizer, load_weights, read_config
from gear.config import ParamsError
from gear.data.loader import TrainStream, augment, decode_image, decode_label, eval_batches, to_tensor
from gear.io import ArtifactError, atomic_dir, save_tensors, sha256_file, write_json
from gear.models.ar import GPT, GPTConfig, configure_optimizer
from gear.runtime import Runtime, all_reduce_mean, seed_everything, setup, teardown
from gear.stages.tokenize import check_arm, read_tokens_manifest
from gear.stage2 import continued_steps
from gear.study import resolve_seed, seeded
from gear.teachers import load_teacher
from gear.train.ar_objective import accumulate_grads, build_ar, train_micro_step, val_ntp
from gear.train.ema import EMA
from gear.train.logger import MetricsLog
from gear.train.parallel import DataParallel
from gear.train.state import Checkpointer, StopRequest, check_finite, restores_stop_signals

STAGE = "train_ar"
VAL_IMAGES = 512
EVAL_BATCH = 128


def load_ar(directory: str | Path, device: str | torch.device = "cpu", name: str = "ar") -> tuple[GPT, dict]:
    """(AR in eval mode, frozen; its config.json) from a folder written by train-ar.
    name: `ar` (EMA) or `ar_raw`."""
    cfg = read_config(directory, "AR")
    if "gpt" not in cfg:
        raise ArtifactError(f"{directory}/config.json holds no AR config")
    model = GPT(GPTConfig.from_dict(cfg["gpt"]))
    load_weights(model, Path(directory) / f"{name}.safetensors", "AR weights")
    return model.to(device).eval().requires_grad_(False), cfg


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


def lr_at(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then constant."""
    return peak * (step + 1) / warmup if step < warmup else peak


@torch.no_grad()
def val_tokens(params, tok: nn.Module, rt: Runtime, limit: int = VAL_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (N, L) and labels (N,) of the first `limit` val images (center crops, no flip)."""
    toks, labels, n = [], [], 0
    for x, y in eval_batches(params, "val", EVAL_BATCH):
        with rt.autocast():
            _, q = tok.encode(x.to(rt.device))
        toks.append(q.indices.flatten(1))
        labels.append(y.to(rt.device))
        n += len(y)
        if n >= limit:
            break
    return torch.cat(toks)[:limit], torch.cat(labels)[:limit]


@restores_stop_signals
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
    if a.batch_size % (rt.world * a.grad_accum):
        raise ParamsError(f"ar.batch_size = {a.batch_size}: must be divisible by processes ({rt.world}) x "
                          f"ar.grad_accum ({a.grad_accum})")
    micro = a.batch_size // (rt.world * a.grad_accum)
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
    ema = EMA(ar, a.ema_decay)  # copied before sharding (a sharded module cannot be copied)
    dp = DataParallel(rt, fsdp=params.compute.fsdp)
    ar_w, proj_w = dp.wrap(ar), dp.wrap(proj)
    dp.shard_copy(ema.model)
    trained = nn.ModuleList([ar, proj])
    opt = configure_optimizer(trained, a.lr, a.betas, a.weight_decay)  # over the shards under FSDP
    fwd = torch.compile(ar_w) if params.compute.compile else ar_w
    stream = TrainStream(params, "train", micro, rank=rt.rank, world=rt.world, augment=True,
                         pattern=str(paths.tokens_dir(arm, seed, size) / "{split}-*.tar"),
                         decode=TokenDecoder(man["hflip"]))
    val_x, val_y = val_tokens(params, tok, rt)
    del tok
    seed_everything(params.compute.seed + rt.rank)  # dropout masks differ across processes

    ckpt = Checkpointer(paths.state_dir(params, STAGE, paths.seed_part(seed), arm, size), rt, compat={
        "ar": ar.cfg.to_dict(), "projector_hidden": a.projector_hidden, "teacher": params.teacher,
        "align": [params.align_weight_ar, align_layer], "tokenizer_sha256": man["tokenizer_sha256"],
        "optim": [a.lr, list(a.betas), a.weight_decay, a.warmup_steps, a.grad_clip, a.ema_decay],
        "batch_size": a.batch_size, "grad_accum": a.grad_accum, "seed": params.compute.seed,
        **({"stage1": sha256_file(stage1 / "ar.safetensors"), "steps": steps} if warm else {})})
    state = ckpt.load()
    start = 0
    if state is not None:
        for key, module in (("ar", ar), ("proj", proj), ("ema", ema.model)):
            dp.load_state_dict(module, state[key])
        dp.load_optim_state_dict(trained, opt, state["opt"])
        stream.load_state_dict(state["data"])
        start = state["step"]
    log = MetricsLog(paths.train_ar_metrics_dir(arm, size, seed), rt, state["metrics"] if state else None,
                    staging=ckpt.path.parent / "dvclive")
    stop = StopRequest()

    params_all = [*ar.parameters(), *proj.parameters()]
    ar.train(); proj.train()
    t_window, steps_window = time.perf_counter(), 0
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"{STAGE}[{arm}/{size}]",
               disable=not rt.is_main)
    for step in bar:
        lr = lr_at(step, a.lr, warmup)
        for group in opt.param_groups:
            group["lr"] = lr

        def micro_step():
            loss, logs = train_micro_step(fwd, proj_w, next(stream), teacher, grid, align_layer,
                                          params.align_weight_ar, rt)
            check_finite(f"{STAGE}[{arm}/{size}]", step, ckpt.path, loss=loss)
            return loss, logs

        sums = accumulate_grads(a.grad_accum, dp, (ar_w, proj_w), micro_step)
        grad_norm = dp.clip_grad_norm_(params_all, a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(ar)
        steps_window += 1

        if step % params.compute.log_every == 0 or step == steps - 1:
            row = {k: all_reduce_mean(v, rt).item() for k, v in sums.items()}
            row.update(lr=lr, grad_norm=grad_norm.item(),
                       tokens_per_s=steps_window * a.batch_size * L / (time.perf_counter() - t_window))
            row["val_ntp"] = val_ntp(ema.model, val_x, (val_y,), rt, EVAL_BATCH)
            log.log(step, **row)
            bar.set_postfix(ntp=f"{row['ntp']:.3f}", val=f"{row['val_ntp']:.3f}")
            t_window, steps_window = time.perf_counter(), 0
        stopping = stop.agreed(rt)  # every process saves at the same step
        if (step + 1) % params.compute.save_every == 0 or stopping:
            ckpt.save({"step": step + 1, "ar": dp.state_dict(ar), "proj": dp.state_dict(proj),
                       "ema": dp.state_dict(ema.model), "opt": dp.optim_state_dict(trained, opt),
                       "data": stream.state_dict(), "metrics": log.state_dict()})
            if stopping:
                stop.exit_after_save(f"{STAGE}[{arm}/{size}]", step + 1, rt)
    bar.close()

    final = {"val_ntp": val_ntp(ema.model, val_x, (val_y,), rt, EVAL_BATCH),
             "val_ntp_raw": val_ntp(ar, val_x, (val_y,), rt, EVAL_BATCH),
             "unigram_entropy": man["unigram_entropy"]}
    weights = {"ar": dp.state_dict(ema.model), "ar_raw": dp.state_dict(ar), "projector": dp.state_dict(proj)}
    if rt.is_main:
        log.log(steps, **final)
        final.update({k: log.last(k) for k in ("ntp", "align") if log.last(k) is not None})
        print(f"train-ar[{arm}/{size}]: ntp {final.get('ntp', float('nan')):.4f}, val_ntp {final['val_ntp']:.4f} (EMA), "
              f"{final['val_ntp_raw']:.4f} (raw), unigram entropy {final['unigram_entropy']:.4f} nats, "
              f"{rt.world} process{'es' if rt.world > 1 else ''} on {rt.device.type}")
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
    log.close()
    ckpt.clear()
    teardown(rt)
