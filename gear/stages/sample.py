"""`gear sample --arm A --size S`: class-conditional samples of the AR trained on arm A.

sample.per_class images for every class, in class order, batched by sample.batch_size. Batch b
draws from its own generator seeded by (compute.seed, b), so the images depend on the seed and
batch size only, not on the number of processes: under DDP process r generates batches r::world
and rank 0 gathers them (gear/draw.py). KV cache, CFG (sample.cfg_scale on sample.cfg_interval), temperature,
top-k, top-p (gear/models/sampling.py); bf16 when compute.precision is bf16. Tokens are decoded
by the frozen tokenizer of the arm (checked to be the one the AR was trained on).

Outputs (atomic) in samples/A/S/:
  samples.npz   arr_0 images uint8 (N, H, W, 3), arr_1 labels int64 (N,), indices int64 (N, L):
                ADM's sample-batch layout, so its evaluator (guided-diffusion evaluations/
                evaluator.py) scores the very same images; written with fixed zip timestamps, so
                the same samples give the same bytes
  grid.png      one row per class (up to 32 classes, evenly spaced), up to 8 samples each
  class_<c>.png the first (up to) 32 samples of class c, 8 per row
  config.json   what produced the samples (AR weights, sampling knobs, seed)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gear.guard import as_dict
from gear import paths
from gear.artifacts import check_arm, frozen_tokenizer, load_ar, load_tokenizer, read_config
from gear.io import ArtifactError, atomic_dir, write_json
from gear.metrics import reference
from gear.draw import draw
from gear.npz import save_npz
from gear.runtime import setup, teardown
from gear.study import resolve_seed, seeded
from gear.train.recon_check import image_grid

GRID_COLS = 8          # samples per class in grid.png, and per row in class_<c>.png
GRID_MAX_CLASSES = 32  # rows of grid.png
CLASS_MAX = 32         # samples shown in class_<c>.png


def write_grids(out: Path, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    shown = (np.arange(num_classes) if num_classes <= GRID_MAX_CLASSES
             else np.linspace(0, num_classes - 1, GRID_MAX_CLASSES).round().astype(int))
    image_grid([images[labels == c][:GRID_COLS] for c in shown]).save(out / "grid.png")
    for c in range(num_classes):
        imgs = images[labels == c][:CLASS_MAX]
        image_grid([imgs[i:i + GRID_COLS] for i in range(0, len(imgs), GRID_COLS)]).save(out / f"class_{c}.png")


def precheck(params, **_) -> None:
    """Before the inputs are checked (gear/cli.py): a wrong reference batch costs no sampling run."""
    reference.check(params)


def run(params, arm: str, size: str, seed: int | None = None) -> None:
    check_arm(arm)
    seed = resolve_seed(params, seed)
    params = seeded(params, seed)  # the sampling generators (the reference batch: `precheck`)
    s = params.sample
    ar_dir, weights = paths.ar_dir(arm, size, seed), "ar" if s.use_ema else "ar_raw"
    ar_cfg = read_config(ar_dir, "AR")  # missing AR or tokenizer: one-line error before any compute
    _, sha = frozen_tokenizer(params, arm, seed, size)
    if ar_cfg.get("tokenizer_sha256") != sha:
        raise ArtifactError(f"AR {ar_dir} was trained on another tokenizer than {paths.frozen_dir(arm, seed, size)}; "
                            f"rerun `gear tokenize` and `gear train-ar --arm {arm} --size {size} --seed {seed}`")
    rt = setup(params)
    model, _ = load_ar(ar_dir, rt.device, weights)
    tok = load_tokenizer(paths.frozen_dir(arm, seed, size), device=rt.device)
    C = model.cfg.num_classes

    labels = torch.arange(C).repeat_interleave(s.per_class)
    knobs = dict(cfg_scale=s.cfg_scale, cfg_interval=tuple(s.cfg_interval), temperature=s.temperature,
                 top_k=s.top_k, top_p=s.top_p, compile=s.compile)
    drawn = draw(model, tok, (labels,), s.batch_size, params.compute.seed, rt, knobs, f"sample[{arm}/{size}]")

    if rt.is_main:
        images, indices = drawn
        labels_np = labels.numpy().astype(np.int64)
        with atomic_dir(paths.samples_dir(arm, size, seed)) as out:
            save_npz(out / "samples.npz", arr_0=images, arr_1=labels_np, indices=indices)  # ADM's keys
            write_grids(out, images, labels_np, C)
            write_json(out / "config.json", {
                "arm": arm, "size": size, "ar_dir": str(ar_dir), "weights": weights, "count": len(images),
                "num_classes": C, "seed": params.compute.seed, "sample": as_dict(params.sample),
                "tokenizer_sha256": sha, "precision": rt.precision})
        print(f"sample[{arm}/{size}]: {len(images)} images ({s.per_class} per class, {C} classes) "
              f"-> {paths.samples_dir(arm, size, seed)}")
    teardown(rt)
