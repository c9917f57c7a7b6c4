"""`gear released-sample --name B|L|XL`: class-conditional samples of a public LlamaGen c2i GPT
(gear/released.py) with its published sampling settings (released.gpts.N: cfg_scale, temperature,
top_k, top_p), released.per_class per class, decoded by the VQ-16 `vq_original` and resized bicubic
to released.eval_size, drawn as `gear sample` draws (gear/draw.py `draw`: batch b from
its own generator of compute.seed, any number of processes). Writes released/samples/N/
(samples.npz in ADM's layout, config.json); when the GPT or the VQ-16 is not downloaded, only a
config.json saying so."""
from __future__ import annotations

import numpy as np
import torch

from gear import released
from gear.config import ParamsError
from gear.draw import draw
from gear.guard import as_dict
from gear.io import atomic_dir, write_json
from gear.npz import save_npz
from gear.runtime import setup, teardown


def precheck(params, name: str, **_) -> None:
    if name not in released.GPTS:
        raise ParamsError(f"--name {name!r}: must be one of {', '.join(released.GPTS)}")
    released.gpt_path(params, name)
    released.tokenizer_path(params, released.GPT_TOKENIZER)
    codebook = released.tokenizer_config(params, released.GPT_TOKENIZER).codebook_size
    top_k = getattr(params.released.gpts, name).top_k
    if top_k > codebook:
        raise ParamsError(f"released.gpts.{name}.top_k = {top_k}: must be <= the codebook size {codebook}")


def run(params, name: str) -> None:
    precheck(params, name)
    r, g = params.released, getattr(params.released.gpts, name)
    missing = [key for key, p in ((f"released.gpts.{name}.path", released.gpt_path(params, name)),
                                  (f"released.tokenizers.{released.GPT_TOKENIZER}",
                                   released.tokenizer_path(params, released.GPT_TOKENIZER))) if p is None]
    record = {"name": name, "public_file": released.GPTS[name], "settings": as_dict(g)}
    if missing:
        with atomic_dir(released.samples_dir(name)) as out:
            write_json(out / "config.json", {**record, "status": released.NOT_DOWNLOADED, "missing": missing})
        print(f"released-sample[{name}]: {released.NOT_DOWNLOADED} ({', '.join(missing)} null)")
        return
    rt = setup(params)
    tok = released.load_tokenizer(params, released.GPT_TOKENIZER, rt.device)
    model = released.load_gpt(params, name, tok, rt.device)
    labels = torch.arange(r.num_classes).repeat_interleave(r.per_class)
    knobs = dict(cfg_scale=g.cfg_scale, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p)
    drawn = draw(model, tok, (labels,), r.batch_size, params.compute.seed, rt, knobs, f"released-sample[{name}]",
                 post=lambda x: released.resize(x, r.eval_size))
    if rt.is_main:
        images, indices = drawn
        with atomic_dir(released.samples_dir(name)) as out:
            save_npz(out / "samples.npz", arr_0=images, arr_1=labels.numpy().astype(np.int64), indices=indices)
            write_json(out / "config.json", {**record, "status": "sampled", "count": len(images),
                                             "per_class": r.per_class, "num_classes": r.num_classes,
                                             "eval_size": r.eval_size, "resize": "bicubic",
                                             "seed": params.compute.seed, "precision": rt.precision})
        print(f"released-sample[{name}]: {len(images)} images at {r.eval_size} px -> {released.samples_dir(name)}")
    teardown(rt)
