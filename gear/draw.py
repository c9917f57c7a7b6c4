"""Drawing an image set from an AR in batches, in any number of processes: batch b of the
condition draws from its own generator (batch_seed(seed, *keys, b)), so the images depend on the
seed and batch size only; process r draws batches r::world and rank 0 gathers them in batch order.
What `gear sample`, `gear released-sample` (class labels) and `gear t2i-sample` (captions: their
embeddings and mask, keys = the snapshot step and CFG scale) draw with (the sampling knobs:
gear/models/sampling.py)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from gear.models.sampling import generate
from gear.runtime import gather_to_main
from gear.train.recon_check import to_uint8


def batch_seed(seed: int, *keys: int) -> int:
    """Seed of a batch's generator from the run's seed and the batch's keys (its index; text-to-image:
    the snapshot step, the CFG scale x 1000 and the index): well mixed, the same in every process."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def draw(model, tok, cond: tuple[torch.Tensor, ...], batch_size: int, seed: int, rt, knobs: dict, desc: str,
         keys: tuple[int, ...] = (), post=None) -> tuple[np.ndarray, np.ndarray] | None:
    """uint8 images (N, H, W, 3) and token grids (N, L) of the condition `cond` (class labels, or
    caption embeddings and mask: split into batches of batch_size together), batch b drawn from the
    generator batch_seed(seed, *keys, b) with the sampling knobs of `generate`, decoded by `tok`
    (then `post`, e.g. a resize, on the [-1, 1] images). Process r draws batches r::world and rank 0
    gathers them in order (rank 0: the arrays; other ranks: None)."""
    batches = list(zip(*(c.split(batch_size) for c in cond)))
    mine = []
    for b in tqdm(range(rt.rank, len(batches), rt.world), desc=desc, disable=not rt.is_main):
        gen = torch.Generator(device=rt.device).manual_seed(batch_seed(seed, *keys, b))
        idx = generate(model, *(c.to(rt.device) for c in batches[b]), generator=gen, bf16=rt.precision == "bf16",
                       **knobs)
        with torch.no_grad(), rt.autocast():
            img = tok.decode_indices(idx, model.cfg.grid)
            img = img if post is None else post(img)
        mine.append((b, to_uint8(img), idx.cpu().numpy()))
    parts = gather_to_main(mine, rt)
    if not rt.is_main:
        return None
    done = sorted((item for part in parts for item in part), key=lambda item: item[0])
    return np.concatenate([item[1] for item in done]), np.concatenate([item[2] for item in done]).astype(np.int64)
