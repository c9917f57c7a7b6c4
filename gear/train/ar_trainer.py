"""The AR training both AR stages run (`gear train-ar`, class-conditional; `gear t2i-train`,
captioned): AR + projector under DDP, or sharded by FSDP2 with compute.fsdp (gear/train/parallel.py),
AdamW with nanoGPT decay groups, linear warm-up then constant lr, gradient accumulation, grad
clipping, an EMA of the AR and optional torch.compile. It gives the training loop
(gear/train/loop.py) its parts, step body and metrics row; the stage keeps its data and outputs.

`recipe` is the stage's AR section (params.ar or params.t2i.ar: the same field names); `steps`
and `warmup` are the run's (the stage decides them: recipe.steps and recipe.warmup_steps for a
fresh AR).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gear.config import ParamsError
from gear.models.ar import configure_optimizer
from gear.runtime import Runtime, all_reduce_mean
from gear.train.ar_objective import accumulate_grads, train_micro_step
from gear.train.ema import EMA
from gear.train.parallel import DataParallel, clip_grad_norm
from gear.train.schedule import lr_at


class ARTrainer:
    def __init__(self, params, rt: Runtime, ar: nn.Module, proj: nn.Module, recipe, *, steps: int, warmup: int):
        self.rt, self.recipe, self.ar, self.proj = rt, recipe, ar, proj
        self.steps, self.warmup = steps, warmup
        self.val_every = params.compute.val_every
        self.ema = EMA(ar, recipe.ema_decay)  # copied before sharding (a sharded module cannot be copied)
        self.dp = DataParallel(rt, fsdp=params.compute.fsdp)
        self.ar_w, self.proj_w = self.dp.wrap(ar), self.dp.wrap(proj)
        self.dp.shard_copy(self.ema.model)
        self.trained = nn.ModuleList([ar, proj])
        self.opt = configure_optimizer(self.trained, recipe.lr, recipe.betas, recipe.weight_decay)  # over the shards
        self.fwd = torch.compile(self.ar_w) if params.compute.compile else self.ar_w

    def compat(self) -> dict:
        """What a resumed state must share with this run's recipe (besides the models)."""
        r = self.recipe
        return {"optim": [r.lr, list(r.betas), r.weight_decay, r.warmup_steps, r.grad_clip, r.ema_decay],
                "batch_size": r.batch_size, "grad_accum": r.grad_accum}

    def parts(self, stream) -> dict:
        """The loop's resumable parts: full (unsharded) state dicts either way."""
        dp = self.dp
        return {"ar": dp.part(self.ar), "proj": dp.part(self.proj), "ema": dp.part(self.ema.model),
                "opt": dp.optim_part(self.trained, self.opt), "data": stream}

    def step(self, step: int, stream, teacher, grid: int, align_layer: int, align_weight: float, loop):
        """One optimizer step over recipe.grad_accum micro-batches; (loss sums, grad norm, lr)."""
        r = self.recipe
        lr = lr_at(step, self.steps, r.lr, self.warmup)
        for group in self.opt.param_groups:
            group["lr"] = lr

        def micro_step():
            loss, logs = train_micro_step(self.fwd, self.proj_w, next(stream), teacher, grid, align_layer,
                                          align_weight, self.rt)
            loop.check_finite(step, loss=loss)
            return loss, logs

        sums = accumulate_grads(r.grad_accum, self.dp, (self.ar_w, self.proj_w), micro_step)
        grad_norm = clip_grad_norm([*self.ar.parameters(), *self.proj.parameters()], r.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.ar)
        return sums, grad_norm, lr

    def row(self, step: int, out, loop, tokens_per_step: int, val: Callable[[nn.Module], float]) -> dict:
        """The metrics row of a log step; `val(model)`: the stage's val next-token CE, every
        compute.val_every steps (it costs a few train steps; the train losses cost nothing)."""
        sums, grad_norm, lr = out
        row = {k: all_reduce_mean(v, self.rt).item() for k, v in sums.items()}
        row.update(lr=lr, grad_norm=grad_norm.item(), tokens_per_s=loop.steps_per_s() * tokens_per_step)
        if not self.val_every or loop.logged(step) % self.val_every == 0:
            row["val_ntp"] = val(self.ema.model)
        return row

    def finish(self, loop, val: Callable[[nn.Module], float], name: str, **extra: float) -> dict:
        """The final metrics (a collective): val CE of the EMA and the raw AR, logged at the last
        step and printed on rank 0 with the last train losses."""
        final = {"val_ntp": val(self.ema.model), "val_ntp_raw": val(self.ar), **extra}
        if self.rt.is_main:
            loop.log.log(self.steps, **final)
            final.update({k: loop.log.last(k) for k in ("ntp", "align") if loop.log.last(k) is not None})
            print(f"{name}: ntp {final.get('ntp', float('nan')):.4f}, val_ntp {final['val_ntp']:.4f} (EMA), "
                  f"{final['val_ntp_raw']:.4f} (raw), unigram entropy {final['unigram_entropy']:.4f} nats, "
                  f"{self.rt.world} process{'es' if self.rt.world > 1 else ''} on {self.rt.device.type}")
        return final

    def weights(self) -> dict[str, dict]:
        """The outputs' state dicts (a collective under FSDP: full tensors on rank 0, {} elsewhere)."""
        dp = self.dp
        return {"ar": dp.state_dict(self.ema.model), "ar_raw": dp.state_dict(self.ar),
                "projector": dp.state_dict(self.proj)}


def micro_batch(recipe, rt: Runtime, section: str) -> int:
    """Per-process micro-batch: recipe.batch_size is the global batch of one optimizer step."""
    if recipe.batch_size % (rt.world * recipe.grad_accum):
        raise ParamsError(f"{section}.batch_size = {recipe.batch_size}: must be divisible by processes ({rt.world}) "
                          f"x {section}.grad_accum ({recipe.grad_accum})")
    return recipe.batch_size // (rt.world * recipe.grad_accum)
