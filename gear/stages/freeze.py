"""`gear freeze --arm A`: export a tokenizer EMA as the standalone frozen artifact.

A = baseline reads models/tokenizer_init/ (shared by every seed), any other arm reads
models/tune/seed<N>/A/ (--seed N). Writes models/frozen/[seed<N>/]A/{tokenizer.safetensors, config.json} (quantizer, codebook size, tau, the
source it came from) and metrics/freeze/[seed<N>/]A.json: codebook statistics over the
val split (usage, entropy, effective size, index histogram).
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from gear import paths
from gear.artifacts import check_tokenizer_matches, load_tokenizer, read_config, write_tokenizer
from gear.config import ParamsError
from gear.data.loader import eval_batches, read_manifest
from gear.io import atomic_dir, write_json
from gear.metrics.codebook import CodebookAccumulator
from gear.runtime import setup
from gear.study import resolve_seed


def run(params, arm: str, seed: int | None = None, size: str | None = None) -> None:
    if arm not in paths.tokenizer_arms(params):
        raise ParamsError(f"--arm {arm!r}: must be one of {', '.join(paths.tokenizer_arms(params))}")
    seed = resolve_seed(params, seed) if paths.tokenizer_seeded(arm) else None
    read_manifest(params)
    src = paths.freeze_source_dir(arm, seed, size)
    src_cfg = read_config(src, "tokenizer")
    check_tokenizer_matches(src_cfg, params, src)
    rt = setup(params)
    tok = load_tokenizer(src, device=rt.device)

    acc = CodebookAccumulator(tok.codebook_size)
    with torch.no_grad():
        for x, _ in tqdm(eval_batches(params, "val", params.metrics.batch_size), desc=f"freeze[{arm}]"):
            with rt.conv_autocast():
                _, q = tok.encode(x.to(rt.device))
            acc.update(q.indices)
    stats = acc.result()

    with atomic_dir(paths.frozen_dir(arm, seed, size)) as out:
        write_tokenizer(out, tok, {
            "arm": arm, "seed": seed, "source": str(src), "quantizer": tok.config.quantizer,
            "codebook_size": tok.codebook_size, "tau": src_cfg.get("tau"), "e2e_mode": src_cfg.get("e2e_mode")})
    # what made it: provenance.json (gear/provenance.py), written by the stage runner
    write_json(paths.freeze_stats_json(arm, seed, size), {"arm": arm, "seed": seed, **{k: (v.tolist() if torch.is_tensor(v) else v)
                                                             for k, v in stats.items()}})
    print(f"freeze[{arm}]: usage {stats['usage']:.3f}, effective size {stats['effective_size']:.1f} "
          f"of {tok.codebook_size}")
