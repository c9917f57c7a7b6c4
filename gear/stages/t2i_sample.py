"""`gear t2i-sample --arm A [--seed N]`: images for the held-out prompts from every EMA snapshot of
the arm's T2I AR, without CFG and with t2i.sample.cfg_scale (the seed's table has both).

The first t2i.sample.prompts prompts of the prompt file, t2i.sample.per_prompt images each, in
prompt order, batched by t2i.sample.batch_size, drawn by gear/draw.py `draw` (the class-conditioned
stages' too) per (snapshot step S, scale c): batch b draws from its own generator seeded by
(seed, S, c, b), so the images depend on the seed and batch size only, not on the number of
processes (rank r takes batches r::world; rank 0 gathers and writes). KV cache, CFG on
t2i.sample.cfg_interval, temperature, top-k, top-p, optionally the compiled decoding step
(t2i.sample.compile): the one sampler of both rooms (gear/models/sampling.py).

Outputs (atomic) in t2i/samples/seed<N>/A/:
  samples.npz   images uint8 (M, H, W, 3), prompt int64 (M,) (line of the prompt file), step int64
                (M,), cfg float32 (M,), indices int64 (M, L); fixed zip timestamps (same bytes)
  grid.png      the final snapshot with CFG: one row per prompt (up to 8), per_prompt columns
  config.json   prompts shown in the grid, snapshots, sampling knobs, seed, the tokenizer's sha256
"""
from __future__ import annotations

import numpy as np
import torch

from gear.guard import as_dict
from gear import paths as main_paths
from gear.artifacts import load_tokenizer
from gear.draw import draw
from gear.io import atomic_dir, write_json
from gear.runtime import setup, teardown
from gear.npz import save_npz
from gear.study import resolve_seed, seeded
from gear.t2i import paths
from gear.t2i.data import arm_seed, check_arm, check_trained_on, load_t2i, read_prompts, snapshot_name
from gear.train.recon_check import image_grid

GRID_PROMPTS = 8


def run(params, arm: str, seed: int | None = None) -> None:
    check_arm(arm)
    seed = resolve_seed(params, seed)
    params = seeded(params, seed)
    s = params.t2i.sample
    ar_cfg = check_trained_on(params, arm, seed)  # missing AR or other tokenizer: one line, before compute
    prompts, emb, mask = read_prompts(params)
    rt = setup(params)
    tok = load_tokenizer(main_paths.frozen_dir(arm, arm_seed(params, arm, seed)), device=rt.device)
    steps = [int(k) for k in ar_cfg["snapshots"]]
    scales = sorted({1.0, s.cfg_scale})
    jobs = [(st, c) for st in steps for c in scales]  # the rows' order: snapshot, scale, batch
    which = torch.arange(len(prompts)).repeat_interleave(s.per_prompt)
    captions = (emb[which], mask[which])  # split into batches together (gear/draw.py)
    drawn = []
    for st in steps:
        model = load_t2i(paths.ar_dir(arm, seed), rt.device, snapshot_name(st))[0]
        for c in scales:
            knobs = dict(cfg_scale=c, cfg_interval=tuple(s.cfg_interval), temperature=s.temperature, top_k=s.top_k,
                         top_p=s.top_p, compile=s.compile)
            drawn.append(draw(model, tok, captions, s.batch_size, params.compute.seed, rt, knobs,
                              f"t2i-sample[{arm}] step {st} cfg {c}", keys=(st, round(c * 1000))))
        del model  # one snapshot in memory
    if rt.is_main:
        images, indices = (np.concatenate(arrays) for arrays in zip(*drawn))
        step_col = np.concatenate([np.full(len(which), st, dtype=np.int64) for st, _ in jobs])
        cfg_col = np.concatenate([np.full(len(which), c, dtype=np.float32) for _, c in jobs])
        prompt_col = np.tile(which.numpy(), len(jobs))
        shown = min(GRID_PROMPTS, len(prompts))
        last = (step_col == steps[-1]) & (cfg_col == np.float32(scales[-1]))
        rows = [images[last & (prompt_col == p)] for p in range(shown)]
        with atomic_dir(paths.samples_dir(arm, seed)) as out:
            save_npz(out / "samples.npz", images=images, prompt=prompt_col, step=step_col, cfg=cfg_col, indices=indices)
            image_grid(rows).save(out / "grid.png")
            write_json(out / "config.json", {
                "arm": arm, "seed": seed, "prompts": [p["caption"] for p in prompts[:shown]],
                "num_prompts": len(prompts), "per_prompt": s.per_prompt, "steps": steps, "cfg_scales": scales,
                "count": len(images), "sample": as_dict(params.t2i.sample),
                "tokenizer_sha256": ar_cfg["tokenizer_sha256"], "precision": rt.precision})
        print(f"t2i-sample[{arm}]: {len(images)} images ({len(prompts)} prompts x {s.per_prompt}, snapshots {steps}, "
              f"CFG {scales}) -> {paths.samples_dir(arm, seed)}")
    teardown(rt)
