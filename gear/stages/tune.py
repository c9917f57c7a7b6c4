"""`gear tune --variant V`: GEAR end-to-end tuning of the tokenizer together with an AR.

Variant `gear` runs params.e2e_mode (default gear); an ablation variant (e.g. `ste`) runs that
mode under the same budget, for the report; `continue` is the equal-compute control (issue 31):
the same budget, data order and seed on the tokenizer's own losses (reconstruction, VQ, GAN), no
AR step, no alignment term (its AR is built, never trained). Each iteration: teacher features (no grad) ->
tokenizer step (L_VQ + lambda L_align^s through the frozen AR, early exit) -> discriminator step
-> AR step (CE + lambda_ar L_align^h on hard indices) -> EMAs. See gear/train/gear_step.py.
Under torchrun the tokenizer and discriminator train with DDP; the guide AR and its projector with
DDP too, or sharded by FSDP2 with compute.fsdp (gear/train/parallel.py: saved state and outputs
are the same full tensors either way).

Under stage2 = ar-init stage 1 runs per AR size (--size S: guide S at its entry of ar.align_layers)
into models/tune/seed<N>/S/V/, and the GEAR arm's train-ar continues that AR (gear/stage2.py).
Per study seed (--seed): outputs (atomic) in models/tune/seed<N>/V/: tokenizer.safetensors (EMA: what `gear freeze` exports),
tokenizer_raw, discriminator, ar (EMA), projector, config.json. Metrics: metrics/tune/seed<N>/V/.
"""
from __future__ import annotations

import torch
from torch import nn

from gear import paths
from gear.artifacts import write_model, write_tokenizer
from gear.config import ParamsError
from gear.data.loader import TrainStream, read_manifest
from gear.io import atomic_dir, save_tensors
from gear.metrics.codebook import soft_assignment_stats
from gear.models.perceptual import check_perceptual
from gear.runtime import seed_everything, setup, teardown
from gear.study import resolve_seed, seeded
from gear.teachers import load_teacher
from gear.train.ar_objective import build_ar
from gear.train.ema import EMA
from gear.train.gear_step import GearKnobs, GearModels, ar_step, ste_joint_step, tokenizer_step
from gear.train.logger import WindowMean
from gear.train.loop import Loop
from gear.train.parallel import DataParallel
from gear.train.recon_check import reconstruction_check
from gear.train.tokenizer_objective import (CodebookWindow, TokenizerObjective, adamw, build_discriminator,
                                            build_perceptual, build_tokenizer, clip_and_step)

STAGE = "tune"


def variant_mode(params, variant: str) -> str:
    if variant == "gear":
        return params.e2e_mode
    if variant not in params.tune.ablations:
        raise ParamsError(f"--variant {variant!r}: must be gear or one of tune.ablations {params.tune.ablations}")
    return variant


def precheck(params, **_) -> None:
    """Before the inputs are checked (gear/cli.py): lpips without its weights is one line at once."""
    check_perceptual(params.tokenizer)


def run(params, variant: str = "gear", seed: int | None = None, size: str | None = None) -> None:
    check_perceptual(params.tokenizer)  # lpips without its weights: one line before any work
    mode = variant_mode(params, variant)
    seed = resolve_seed(params, seed)
    params = seeded(params, seed)  # the AR guide's init, data order, dropout
    manifest = read_manifest(params)
    init = "scratch" if params.tune.init == "scratch" else str(paths.tokenizer_init_dir())
    rt = setup(params)
    seed_everything(params.compute.seed + rt.rank)
    t, tn = params.tokenizer, params.tune
    grid = params.data.resolution // t.downsample
    # stage2 = ar-init (--size): stage 1 runs per AR size, guided by that size at its tap (its entry
    # of ar.align_layers), and stage 2 continues this AR; fresh: one guide, tune.ar_size at align_layer
    guide = size or tn.ar_size
    tap = params.ar.align_layer_for(size, params.align_layer) if size else params.align_layer
    sized = (size,) if size else ()

    teacher = load_teacher(params, rt.device)
    tok = rt.prepare_conv(build_tokenizer(params, init=init))
    disc = rt.prepare_conv(build_discriminator(params))
    if tn.init == "warmup":  # recover the warm-up discriminator too (reference stage 0's purpose)
        from gear.artifacts import load_weights
        load_weights(disc, paths.tokenizer_init_dir() / "discriminator.safetensors", "discriminator weights")
    ar, proj = build_ar(params, guide, tok.codebook_size, grid, len(manifest["classes"]), teacher.dim)
    ar, proj = ar.to(rt.device), proj.to(rt.device)
    ar.grad_checkpointing = params.compute.grad_checkpointing
    ema_tok, ema_ar = EMA(tok, tn.ema_decay), EMA(ar, tn.ema_decay)  # copied before sharding
    # compute.fsdp shards the guide AR and its projector (one optimizer) as train-ar does: the AR
    # is what grows (up to XXL). The conv tokenizer and its discriminator stay DDP: tens of millions
    # of parameters and no transformer blocks to shard by.
    dp, ddp = DataParallel(rt, fsdp=params.compute.fsdp), DataParallel(rt, fsdp=False)
    disc_w = ddp.wrap(disc)
    ar_w, proj_w = dp.wrap(ar), dp.wrap(proj)
    dp.shard_copy(ema_ar.model)
    models = GearModels(ddp.wrap(tok), ar_w, proj_w,
                        TokenizerObjective(params, build_perceptual(params, rt.device), disc_w, gan=tn.gan,
                                           gan_start=tn.gan_start))
    knobs = GearKnobs(mode=mode, tau=params.tau, align_weight=params.align_weight,
                      align_weight_ar=params.align_weight_ar, align_layer=tap,
                      soft_forward=tn.soft_forward, grad_clip=tn.grad_clip)
    betas = tuple(tn.betas)
    opt_tok = adamw(tok.parameters(), tn.lr_tokenizer, betas, tn.weight_decay)
    opt_ar = adamw([*ar.parameters(), *proj.parameters()], tn.lr_ar, betas, tn.weight_decay)
    opt_d = adamw(disc.parameters(), tn.lr_disc, betas, tn.weight_decay)
    stream = TrainStream(params, "train", tn.batch_size, rank=rt.rank, world=rt.world, augment=True)
    usage = CodebookWindow(tok.codebook_size, rt.device)
    window = WindowMean(rt.device)  # logged losses are means over the log window, not one batch

    loop = Loop(params, rt, name=f"{STAGE}[{variant}/seed {seed}]", steps=tn.steps,
                state_dir=paths.state_dir(params, STAGE, paths.seed_part(seed), variant, *sized), compat={
                    "mode": mode, "tokenizer": tok.config.to_dict(), "ar": ar.cfg.to_dict(), "init": tn.init,
                    "tau": params.tau, "align": [params.align_weight, params.align_weight_ar, tap],
                    "teacher": params.teacher, "batch_size": tn.batch_size, "seed": params.compute.seed},
                metrics_dir=paths.tune_metrics_dir(variant, seed, size),
                # the AR's parts are full state dicts either way (gear/train/parallel.py)
                parts={"tokenizer": tok, "disc": disc, "ar": dp.part(ar), "proj": dp.part(proj), "ema_tok": ema_tok,
                       "ema_ar": dp.part(ema_ar.model), "opt_tok": opt_tok,
                       "opt_ar": dp.optim_part(nn.ModuleList([ar, proj]), opt_ar), "opt_d": opt_d, "data": stream,
                       "usage": usage, "window": window})
    batches = iter(stream)

    def step_fn(step: int):
        x, labels = next(batches)
        x, labels = x.to(rt.device), labels.to(rt.device)
        with torch.no_grad(), rt.autocast():
            y = teacher.features(x, grid).float()
        if mode == "ste":
            out, logs = ste_joint_step(models, knobs, opt_tok, opt_ar, x, labels, y, step, rt)
        else:
            if mode in ("gear", "continue"):  # continue: the tokenizer step without its alignment term
                out, logs = tokenizer_step(models, knobs, opt_tok, x, labels, y, step, rt)
            else:  # none: tokenizer frozen, used only to produce indices
                tok.eval()
                with torch.no_grad(), rt.conv_autocast():
                    out = models.tokenizer(x)
                logs = {}
            if mode != "continue":  # the equal-compute control: the tokenizer's own losses, no AR at all
                logs.update(ar_step(models, knobs, opt_ar, out.q.indices, labels, y, rt))
        if mode != "none" and models.objective.gan_active(step):
            with rt.conv_autocast():
                loss_d, logs_d = models.objective.discriminator_loss(x, out.recon)
            clip_and_step(loss_d, opt_d, tn.grad_clip)
            logs.update(logs_d)
        loop.check_finite(step, **{k: v for k, v in logs.items() if v.dim() == 0})
        ema_tok.update(tok); ema_ar.update(ar)
        usage.update(out.q.indices)
        window.add(logs)
        return out

    def row_fn(step: int, out) -> dict:
        row = window.result(rt)
        row.update(usage.result(rt))
        row.update(soft_assignment_stats(out.q.dist.detach().float(), params.tau))
        return row

    loop.run(step_fn, row_fn, show=("usage",) if mode == "continue" else ("ntp", "usage"))

    check = reconstruction_check(params, ema_tok.model, rt)
    ar_sd, proj_sd = dp.state_dict(ema_ar.model), dp.state_dict(proj)  # sharded: a collective, rank 0 holds them
    if rt.is_main:
        loop.log.log(tn.steps, **{f"val_{k}": v for k, v in check.metrics.items()})
        with atomic_dir(paths.tune_dir(variant, seed, size)) as out_dir:
            write_tokenizer(out_dir, ema_tok.model, {
                "stage": STAGE, "variant": variant, "seed": seed, "e2e_mode": mode, "tau": params.tau,
                "align_weight": params.align_weight, "align_layer": tap, "teacher": params.teacher,
                "steps": tn.steps, "ar": ar.cfg.to_dict(), "val": check.metrics})
            write_model(out_dir, "tokenizer_raw", tok)
            write_model(out_dir, "discriminator", disc)
            save_tensors(out_dir / "ar.safetensors", ar_sd)
            save_tensors(out_dir / "projector.safetensors", proj_sd)
            check.grid.save(out_dir / "recon.png")
    loop.finish()
    teardown(rt)
