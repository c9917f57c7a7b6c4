"""`gear tokenizer-init`: the warm-up tokenizer (reference stage 0) and the baseline arm.

Trains the tokenizer for reconstruction (+ perceptual, PatchGAN hinge, quantizer losses) from
scratch or from a checkpoint (LlamaGen layout or ours), with AdamW, grad clipping, EMA and bf16
autocast. Outputs (atomically, in models/tokenizer_init/): tokenizer.safetensors (EMA),
tokenizer_raw.safetensors, discriminator.safetensors, config.json, recon.png; metrics in
metrics/tokenizer_init/ (dvclive). Resumable state lives in <state_dir>/tokenizer_init/.
"""
from __future__ import annotations

from gear import paths
from gear.artifacts import write_model, write_tokenizer
from gear.data.loader import TrainStream, read_manifest
from gear.io import atomic_dir
from gear.models.perceptual import check_perceptual
from gear.runtime import seed_everything, setup, teardown
from gear.train.ema import EMA
from gear.train.logger import WindowMean
from gear.train.loop import Loop
from gear.train.parallel import replicated
from gear.train.recon_check import reconstruction_check
from gear.train.schedule import lr_at
from gear.train.tokenizer_objective import (CodebookWindow, TokenizerObjective, adamw, build_discriminator,
                                            build_perceptual, build_tokenizer, clip_and_step)

STAGE = "tokenizer_init"


def precheck(params, **_) -> None:
    """Before the inputs are checked (gear/cli.py): lpips without its weights is one line at once."""
    check_perceptual(params.tokenizer)


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
    dp = replicated(rt, params.compute.fsdp, "tokenizer-init", "conv tokenizer")  # no transformer blocks to shard by
    tok_ddp, disc_ddp = dp.wrap(tok), dp.wrap(disc)
    objective = TokenizerObjective(params, perceptual, disc_ddp)
    opt_g = adamw(tok.parameters(), t.lr, t.betas, t.weight_decay)
    opt_d = adamw(disc.parameters(), t.disc_lr, t.betas, t.weight_decay)
    stream = TrainStream(params, "train", t.batch_size, rank=rt.rank, world=rt.world, augment=True)
    usage = CodebookWindow(tok.codebook_size, rt.device)
    window = WindowMean(rt.device)  # logged losses are means over the log window, not one batch

    loop = Loop(params, rt, name=STAGE, steps=t.steps, state_dir=paths.state_dir(params, STAGE),
                compat={"tokenizer": tok.config.to_dict(), "disc": [t.disc_ch, t.disc_layers],
                        "batch_size": t.batch_size, "seed": params.compute.seed},
                metrics_dir=paths.metrics_dir(STAGE),
                parts={"tokenizer": tok, "disc": disc, "ema": ema, "opt_g": opt_g, "opt_d": opt_d, "data": stream,
                       "usage": usage, "window": window})
    batches = iter(stream)

    def step_fn(step: int) -> None:
        x, _ = next(batches)
        x = x.to(rt.device, non_blocking=True)
        for group in opt_g.param_groups:
            group["lr"] = lr_at(step, t.steps, t.lr, t.warmup_steps, t.lr_decay)
        tok_ddp.train()
        with rt.conv_autocast():
            out = tok_ddp(x)
            loss_g, logs = objective.generator_loss(x, out, step)
        loop.check_finite(step, loss=loss_g)
        logs["grad_norm_g"] = clip_and_step(loss_g, opt_g, t.grad_clip)
        if objective.gan_active(step):
            with rt.conv_autocast():
                loss_d, logs_d = objective.discriminator_loss(x, out.recon)
            loop.check_finite(step, loss_d=loss_d)
            clip_and_step(loss_d, opt_d, t.grad_clip)
            logs.update(logs_d)
        ema.update(tok)
        usage.update(out.q.indices)
        window.add(logs)

    def row_fn(step: int, _) -> dict:
        row = window.result(rt)
        row.update(usage.result(rt), lr=opt_g.param_groups[0]["lr"])
        return {"loss": row["recon"], **row}

    loop.run(step_fn, row_fn, show=("recon", "usage"))

    check = reconstruction_check(params, ema.model, rt)
    if rt.is_main:
        loop.log.log(t.steps, **{f"val_{k}": v for k, v in check.metrics.items()})
        with atomic_dir(paths.tokenizer_init_dir()) as out_dir:
            write_tokenizer(out_dir, ema.model, {"stage": STAGE, "steps": t.steps, "val": check.metrics})
            write_model(out_dir, "tokenizer_raw", tok)
            write_model(out_dir, "discriminator", disc)
            check.grid.save(out_dir / "recon.png")
    loop.finish()
    teardown(rt)
