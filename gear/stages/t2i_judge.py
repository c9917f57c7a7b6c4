"""`gear t2i-judge`: train the prompt-following judge that scores generated images.

The embedded pairs draw one shape of one colour at one position, and each sample's json member
says which (the manifest lists the values). The judge (gear/models/judge.py) is a small CNN with
a head per attribute, trained here on the train pairs and measured on the val pairs; the evaluate
stage then asks it whether a generated image shows what its prompt asked for. It is a measuring
instrument, so its recipe is fixed and plain: AdamW at t2i.judge.lr with a short warm-up then
cosine decay, the sum of the heads' cross-entropies, fp32, seeded by compute.seed. The only
augmentation is the loader's random crop (a few pixels of shift): no flip, which would swap left
and right, and no colour jitter. One process trains it (under torchrun the other ranks wait),
resumably (state in <state_dir>/t2i/judge/, gear/train/loop.py).
At the params.yaml defaults (32 px, 3000 train pairs, 400 steps) it reads all 480 val pairs
right (seeds 0 and 1) in ~35 s on 2 CPU cores, and stays >= 0.99 under blur, 2x down-up
sampling or noise of std 20 levels.

Outputs, atomically in t2i/models/judge/: judge.safetensors and config.json (vocab, architecture,
val accuracy per attribute and of all three together, pairs_sha256 = the pair shards it was
trained on). Metrics (dvclive) in t2i/metrics/judge/: train_loss, train_acc (all heads right),
lr, then the val accuracies. Pairs without attributes (a folder or JSONL source) have no judge:
config.json then says {"available": false, "reason": ...} and load_judge gives None.

    from gear.models.judge import prompt_accuracy
    from gear.t2i.data import load_judge
    judge = load_judge("cuda")                                # None: no attributes to judge
    prompt_accuracy(judge, images_uint8, [{"shape": "circle", "colour": "red", "position": "top left"}, ...])
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gear.data.loader import TrainStream, augment, decode_image, eval_batches, to_tensor
from gear.data.shard import DataError
from gear.io import atomic_dir, save_tensors, write_json
from gear.models.judge import ARCH, ATTRIBUTES, Judge, attribute_indices, predict_indices
from gear.runtime import Runtime, barrier, seed_everything, setup, teardown
from gear.t2i import paths
from gear.t2i.data import read_pairs_manifest, shards_digest
from gear.train.loop import Loop, part, untrained_metrics
from gear.train.schedule import lr_at
from gear.train.state import NonFiniteLossError

STAGE = "t2i-judge"
WEIGHT_DECAY = 0.01
EVAL_BATCH = 256
METRICS_DIR = paths.judge_metrics_dir()


# ----------------------------------------------------------------------------------------------
# the pairs: manifest, digest, decoding


def vocab_of(manifest: dict) -> dict[str, list[str]] | None:
    """The attribute values of the pairs, or None when the source has none (folder / JSONL)."""
    attrs = manifest.get("attributes")
    if attrs is None:
        return None
    if not isinstance(attrs, dict) or any(not isinstance(attrs.get(a), list) or len(attrs[a]) < 2 for a in ATTRIBUTES):
        raise DataError(f"{paths.manifest()}: 'attributes' must list two or more values of each of "
                        f"{', '.join(ATTRIBUTES)}; run `gear t2i-shard` again")
    return {a: [str(v) for v in attrs[a]] for a in ATTRIBUTES}


class AttributeDecoder:
    """decode hook: (image (3, H, W) in [-1, 1], attribute indices (3,)). A class, not a closure:
    DataLoader workers pickle it."""

    def __init__(self, vocab: dict[str, list[str]]):
        self.vocab = vocab

    def __call__(self, sample: dict, rng: random.Random | None) -> tuple[torch.Tensor, torch.Tensor]:
        img = decode_image(sample)
        if rng is not None:  # a few pixels of shift only: a flip would swap left and right
            img, _ = augment(img, rng, random_crop=True, hflip=False)
        y = attribute_indices(self.vocab, json.loads(sample["json"]))
        return to_tensor(img), torch.tensor(y, dtype=torch.long)


def _pattern() -> str:
    return str(paths.SHARD_DIR / "{split}-*.tar")


# ----------------------------------------------------------------------------------------------
# the stage


@torch.no_grad()
def evaluate(params, judge: Judge) -> tuple[dict[str, float], int]:
    """Val accuracy per attribute and of all three together (every val pair once), and the count."""
    images, labels = [], []
    for x, y in eval_batches(params, "val", EVAL_BATCH, pattern=_pattern(), decode=AttributeDecoder(judge.vocab)):
        # back to the uint8 pixels the shards hold (exact: x = u / 127.5 - 1), scored through the
        # public API so the recorded accuracy is the one prompt_accuracy gives on the same images
        images.append(((x.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().astype(np.uint8))
        labels.append(y.numpy())
    want = np.concatenate(labels)
    hit = predict_indices(judge, np.concatenate(images)) == want
    acc = {a: float(hit[:, i].mean()) for i, a in enumerate(ATTRIBUTES)}
    return {**acc, "all": float(hit.all(1).mean())}, len(want)


def _write_unavailable(reason: str, digest: str) -> None:
    print(f"gear t2i-judge: no judge: {reason}")
    with atomic_dir(paths.JUDGE_DIR) as out:
        write_json(out / "config.json", {"available": False, "reason": reason, "pairs_sha256": digest})


def _state_dir(params) -> Path:
    """Resumable state, and the live metrics until they are published with the judge."""
    return Path(params.compute.state_dir) / paths.ROOT / "judge"


def run(params) -> None:
    j = params.t2i.judge
    manifest = read_pairs_manifest()  # clear errors before any compute
    digest = shards_digest(manifest)
    vocab = vocab_of(manifest)
    rt = setup(params)
    if vocab is None:
        if rt.is_main:
            _write_unavailable(f"the {manifest.get('source', '?')} pairs carry no shape / colour / position "
                               f"attributes (only the embedded source does)", digest)
        # the declared metrics exist either way
        untrained_metrics(METRICS_DIR, rt, staging=_state_dir(params) / "dvclive")
        teardown(rt)
        return
    resolution = manifest.get("resolution", params.data.resolution)
    if resolution != params.data.resolution:
        raise DataError(f"pairs in {paths.SHARD_DIR} are {resolution} px but data.resolution = "
                        f"{params.data.resolution}; run `gear t2i-shard` again")
    if not rt.is_main:  # a small model: one process trains it, the others wait
        barrier(rt)
        teardown(rt)
        return

    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # same weights every run
    seed_everything(params.compute.seed)
    judge = rt.prepare_conv(Judge(image_size=resolution, vocab=vocab, **ARCH))
    decay = [p for p in judge.parameters() if p.ndim >= 2]
    rest = [p for p in judge.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                            lr=j.lr, betas=(0.9, 0.999))
    stream = TrainStream(params, "train", j.batch_size, augment=True, pattern=_pattern(),
                         decode=AttributeDecoder(vocab))
    window = torch.zeros(3)  # loss sum, all-heads-right count, samples
    alone = Runtime(device=rt.device, precision=rt.precision)  # the loop of this one process
    loop = Loop(params, alone, name=STAGE, steps=j.steps, state_dir=_state_dir(params), count_done=True,
                compat={"arch": judge.config, "steps": j.steps, "batch_size": j.batch_size, "lr": j.lr,
                        "seed": params.compute.seed, "pairs_sha256": digest},
                metrics_dir=METRICS_DIR,
                parts={"judge": judge, "opt": opt, "data": stream, "window": part(window.cpu, window.copy_)})

    def step_fn(step: int) -> float:
        x, y = next(stream)
        x = x.to(rt.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(rt.device, non_blocking=True)
        lr = lr_at(step, j.steps, j.lr, warmup=max(1, j.steps // 20), decay="cosine")
        for group in opt.param_groups:
            group["lr"] = lr
        logits = judge(x)
        loss = sum(F.cross_entropy(logits[a], y[:, i]) for i, a in enumerate(ATTRIBUTES))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{STAGE}: non-finite loss at step {step}; lower t2i.judge.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        right = torch.stack([logits[a].argmax(-1) == y[:, i] for i, a in enumerate(ATTRIBUTES)], 1).all(1)
        window.add_(torch.tensor([loss.item() * len(y), right.sum().item(), len(y)]))
        return lr

    def row_fn(step: int, lr: float) -> dict:
        row = {"train_loss": window[0] / window[2], "train_acc": window[1] / window[2], "lr": lr}
        window.zero_()
        return row

    judge.train()
    loop.run(step_fn, row_fn, show=("train_loss", "train_acc"))

    val, n_val = evaluate(params, judge)
    loop.log.log(j.steps, **{f"val_acc_{k}": v for k, v in val.items()})
    with atomic_dir(paths.JUDGE_DIR) as out:
        save_tensors(out / "judge.safetensors", judge.state_dict())
        write_json(out / "config.json", {
            "available": True, "attributes": vocab, "arch": judge.config, "steps": j.steps,
            "batch_size": j.batch_size, "lr": j.lr, "seed": params.compute.seed, "val_accuracy": val,
            "val_count": n_val, "pairs_sha256": digest})
    loop.finish()  # metrics published with the model, never before it
    print(f"gear t2i-judge: val accuracy all {val['all']:.4f} (shape {val['shape']:.4f}, colour {val['colour']:.4f}, "
          f"position {val['position']:.4f}) after {j.steps} steps -> {paths.JUDGE_DIR}")
    barrier(rt)
    teardown(rt)
