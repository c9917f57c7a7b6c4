"""`gear teacher`: train the offline `demo` alignment teacher on the shards.

The demo teacher (gear/models/demo_teacher.py) is a small ViT classifier with one patch per
tokenizer token. Recipe: AdamW (betas 0.9/0.999, weight decay 0.05 on matrices), lr
teachers.demo_lr with a linear warm-up over the first 5% of steps then cosine decay to 0, label
smoothing 0.1, grad clip 1.0, bf16 autocast, the loader's augmentation (random crop + flip);
DDP when launched on several processes (demo_batch_size is the global batch).

Outputs, atomically in models/teacher/: model.safetensors and config.json (architecture, classes,
val_acc). Metrics (dvclive) in metrics/teacher/: train_loss / train_acc (mean over the last
log_every steps), lr, and val_acc at the end. Resumable state in <state_dir>/teacher/ every
save_every steps and on SIGTERM / SIGUSR1.

The demo teacher is trained when anything reads it: params.teacher = demo (alignment targets)
or metrics.feature_space = demo (FID / IS space). Otherwise the hub teacher needs no training:
the stage only writes config.json saying so, which keeps the pipeline's DAG the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gear import paths
from gear.ablations import demo_needed
from gear.data.loader import TrainStream, eval_batches, read_manifest
from gear.io import atomic_dir, save_tensors, write_json
from gear.models.demo_teacher import DemoViT
from gear.runtime import Runtime, seed_everything, setup, teardown
from gear.train.loop import Loop, part, untrained_metrics
from gear.train.parallel import replicated
from gear.train.schedule import lr_at

STAGE = "teacher"
LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 0.05
GRAD_CLIP = 1.0


def build_demo(params, manifest: dict) -> DemoViT:
    t = params.teachers
    return DemoViT(image_size=manifest["resolution"], patch=t.demo_patch, dim=t.demo_dim, depth=t.demo_depth,
                   heads=t.demo_heads, num_classes=len(manifest["classes"]))


def make_optimizer(model: DemoViT, lr: float) -> torch.optim.AdamW:
    no_decay = {"pos_embed", "cls_token"}
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n not in no_decay]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 or n in no_decay]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999))


@torch.no_grad()
def evaluate(params, model: DemoViT, rt: Runtime) -> float:
    """Top-1 accuracy on the val split (every sample once, summed over ranks)."""
    model.eval()
    counts = torch.zeros(2, device=rt.device)
    for x, y in eval_batches(params, "val", 256, rank=rt.rank, world=rt.world):
        x, y = x.to(rt.device), y.to(rt.device)
        with rt.autocast():
            pred = model(x).argmax(-1)
        counts += torch.stack([(pred == y).sum(), torch.tensor(len(y), device=rt.device)]).float()
    if rt.distributed:
        torch.distributed.all_reduce(counts)
    model.train()
    return (counts[0] / counts[1].clamp(min=1)).item()


def run(params) -> None:
    t = params.teachers
    if not demo_needed(params):
        rt = setup(params)
        if rt.is_main:
            print(f"gear teacher: hub teacher {params.teacher} needs no training "
                  f"(the demo teacher is not used: metrics.feature_space = {params.metrics.feature_space})")
            with atomic_dir(paths.teacher_dir()) as out:
                write_json(out / "config.json", {"teacher": params.teacher, "trained": False,
                                                 "note": "hub teacher: loaded from the hub or teachers.weights"})
        # the stage's declared metrics exist either way
        untrained_metrics(paths.metrics_dir(STAGE), rt, staging=paths.state_dir(params, STAGE) / "dvclive")
        teardown(rt)
        return
    manifest = read_manifest(params)  # clear error before any compute if shards are missing
    rt = setup(params)
    if t.demo_batch_size % rt.world:
        raise ValueError(f"teachers.demo_batch_size = {t.demo_batch_size}: must be divisible by the "
                         f"{rt.world} processes")
    seed_everything(params.compute.seed)  # same initial weights on every rank
    model = build_demo(params, manifest).to(rt.device)
    ddp = replicated(rt, params.compute.fsdp, STAGE, "demo ViT").wrap(model)  # small: nothing worth sharding
    opt = make_optimizer(model, t.demo_lr)
    stream = TrainStream(params, "train", t.demo_batch_size // rt.world, rank=rt.rank, world=rt.world, augment=True)
    window = torch.zeros(3, device=rt.device)  # loss sum, correct, samples since the last log

    loop = Loop(params, rt, name=STAGE, steps=t.demo_steps, state_dir=paths.state_dir(params, STAGE),
                compat={"architecture": model.config, "classes": manifest["classes"], "steps": t.demo_steps,
                        "batch_size": t.demo_batch_size, "lr": t.demo_lr, "seed": params.compute.seed},
                metrics_dir=paths.metrics_dir(STAGE), count_done=True,
                parts={"model": model, "opt": opt, "data": stream, "window": part(window.cpu, window.copy_)})

    def step_fn(step: int) -> float:
        x, y = next(stream)
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        lr = lr_at(step, t.demo_steps, t.demo_lr, warmup=max(1, t.demo_steps // 20), decay="cosine")
        for group in opt.param_groups:
            group["lr"] = lr
        with rt.autocast():
            logits = ddp(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=LABEL_SMOOTHING)
        loop.check_finite(step, loss=loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        window.add_(torch.stack([loss.detach() * len(y), (logits.argmax(-1) == y).sum().float(),
                                 torch.tensor(float(len(y)), device=rt.device)]))
        return lr

    def row_fn(step: int, lr: float) -> dict:
        totals = window.clone()
        if rt.distributed:
            torch.distributed.all_reduce(totals)
        window.zero_()
        return {"train_loss": (totals[0] / totals[2]).item(), "train_acc": (totals[1] / totals[2]).item(), "lr": lr}

    model.train()
    loop.run(step_fn, row_fn, show=("train_loss", "train_acc"))

    val_acc = evaluate(params, model, rt)
    if rt.is_main:
        loop.log.log(t.demo_steps, val_acc=val_acc)
        print(f"gear teacher: val accuracy {val_acc:.4f} over {len(manifest['classes'])} classes")
        with atomic_dir(paths.teacher_dir()) as out:
            save_tensors(out / "model.safetensors", model.state_dict())
            write_json(out / "config.json", {
                "teacher": "demo", "trained": True, "architecture": model.config, "classes": manifest["classes"],
                "val_acc": val_acc, "steps": t.demo_steps})
    loop.finish()
    teardown(rt)
