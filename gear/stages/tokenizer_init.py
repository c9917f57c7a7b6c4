"""`gear tokenizer-init`: the warm-up tokenizer (reference stage 0) and the baseline arm.

Trains the tokenizer for reconstruction (+ perceptual, PatchGAN hinge, quantizer losses) from
scratch or from a checkpoint (LlamaGen layout or ours), with AdamW, grad clipping, EMA and bf16
autocast. Outputs (atomically, in models/tokenizer_init/): tokenizer.safetensors (EMA),
tokenizer_raw.safetensors, discriminator.safetensors, config.json, recon.png; metrics in
metrics/tokenizer_init/ (dvclive). Resumable state lives in <state_dir>/tokenizer_init/.
"""
from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from gear import paths
from gear.artifacts import write_model, write_tokenizer
from gear.data.loader import TrainStream, read_manifest
from gear.io import atomic_dir
from gear.models.perceptual import check_perceptual
from gear.runtime import seed_everything, setup, teardown
from gear.train.ema import EMA
from gear.train.logger import MetricsLog, WindowMean
from gear.train.recon_check import reconstruction_check
from gear.train.schedule import lr_at
from gear.train.state import Checkpointer, StopRequest, check_finite, restores_stop_signals
from gear.train.tokenizer_objective import (CodebookWindow, TokenizerObjective, adamw, build_discriminator,
                                            build_perceptual, build_tokenizer, clip_and_step)

STAGE = "tokenizer_init"


def precheck(params, **_) -> None:
    """Before the inputs are checked (gear/cli.py): lpips without its weights is one line at once."""
    check_perceptual(params.tokenizer)


@restores_stop_signals
def run(params) -> None:
    check_perceptual(params.tokenizer)  # lpips without its weights: one line before any work
    read_manifest(params)  # clear error before any compute if shards are missing
    rt = setup(params)
    seed_everything(params.compute.seed + rt.rank)
    t = params.tokenizer
    tok = rt.prepare_conv(build_tokenizer(params, init=t.init))
    disc = rt.prepare_conv(build_discriminator(params))
    perceptual = build_perceptual(params, rt.device)
    ema = EMA(tok, t.ema_decay)
    tok_ddp = DDP(tok) if rt.distributed else tok
    disc_ddp = DDP(disc) if rt.distributed else disc
    objective = TokenizerObjective(params, perceptual, disc_ddp)
    opt_g = adamw(tok.parameters(), t.lr, t.betas, t.weight_decay)
    opt_d = adamw(disc.parameters(), t.disc_lr, t.betas, t.weight_decay)
    stream = TrainStream(params, "train", t.batch_size, rank=rt.rank, world=rt.world, augment=True)

    ckpt = Checkpointer(paths.state_dir(params, STAGE), rt,
                        compat={"tokenizer": tok.config.to_dict(), "disc": [t.disc_ch, t.disc_layers],
                                "batch_size": t.batch_size, "seed": params.compute.seed})
    state = ckpt.load()
    start = 0
    if state is not None:
        tok.load_state_dict(state["tokenizer"]); disc.load_state_dict(state["disc"])
        ema.load_state_dict(state["ema"]); opt_g.load_state_dict(state["opt_g"]); opt_d.load_state_dict(state["opt_d"])
        stream.load_state_dict(state["data"]); start = state["step"]
    log = MetricsLog(paths.metrics_dir(STAGE), rt, state["metrics"] if state else None,
                    staging=ckpt.path.parent / "dvclive")
    usage = CodebookWindow(tok.codebook_size, rt.device)
    window = WindowMean()  # logged losses are means over the log window, not one batch
    if state is not None:
        usage.load_state_dict(state["usage"]); window.load_state_dict(state["window"], rt.device)
    stop = StopRequest()
    batches = iter(stream)

    bar = tqdm(range(start, t.steps), initial=start, total=t.steps, desc=STAGE, disable=not rt.is_main)
    for step in bar:
        x, _ = next(batches)
        x = x.to(rt.device, non_blocking=True)
        for group in opt_g.param_groups:
            group["lr"] = lr_at(step, t.steps, t.lr, t.warmup_steps, t.lr_decay)
        tok_ddp.train()
        with rt.conv_autocast():
            out = tok_ddp(x)
            loss_g, logs = objective.generator_loss(x, out, step)
        check_finite(STAGE, step, ckpt.path, loss=loss_g)
        logs["grad_norm_g"] = clip_and_step(loss_g, opt_g, t.grad_clip)
        if objective.gan_active(step):
            with rt.conv_autocast():
                loss_d, logs_d = objective.discriminator_loss(x, out.recon)
            check_finite(STAGE, step, ckpt.path, loss_d=loss_d)
            clip_and_step(loss_d, opt_d, t.grad_clip)
            logs.update(logs_d)
        ema.update(tok)
        usage.update(out.q.indices)
        window.add(logs)

        if step % params.compute.log_every == 0 or step == t.steps - 1:
            row = window.result(rt)
            row.update(usage.result(rt), lr=opt_g.param_groups[0]["lr"])
            log.log(step, loss=row["recon"], **row)
            bar.set_postfix(recon=f"{row['recon']:.4f}", usage=f"{row['usage']:.2f}")
        stopping = stop.agreed(rt)  # every process saves at the same step
        if (step + 1) % params.compute.save_every == 0 or stopping:
            ckpt.save({"step": step + 1, "tokenizer": tok.state_dict(), "disc": disc.state_dict(),
                       "ema": ema.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                       "data": stream.state_dict(), "metrics": log.state_dict(),
                       "usage": usage.state_dict(), "window": window.state_dict()})
            if stopping:
                stop.exit_after_save(STAGE, step + 1, rt)

    check = reconstruction_check(params, ema.model, rt)
    if rt.is_main:
        log.log(t.steps, **{f"val_{k}": v for k, v in check.metrics.items()})
        with atomic_dir(paths.tokenizer_init_dir()) as out_dir:
            write_tokenizer(out_dir, ema.model, {"stage": STAGE, "steps": t.steps, "val": check.metrics})
            write_model(out_dir, "tokenizer_raw", tok)
            write_model(out_dir, "discriminator", disc)
            check.grid.save(out_dir / "recon.png")
    log.close()
    ckpt.clear()
    teardown(rt)
