"""`gear t2i-evaluate real | samples --arm A [--seed N]`: the T2I table's metrics.

  real     features of the val pairs' images (at most metrics.max_real, in shard order) in the
           feature space t2i.feature_space, cached in t2i/eval/real/ (features.pt, summary.json)
  samples  t2i/eval/seed<N>/A.json: per EMA snapshot and CFG scale (1 and t2i.sample.cfg_scale),
           FDD = Frechet distance between the samples' and the real features (in DINOv2 space at
           full scale, as the seed; in the demo teacher's space on the embedded default, so only
           directions compare with the seed's numbers), precision / recall (k = metrics.pr_k,
           torch-fidelity's), and prompt accuracy: the share of samples in which the judge
           (gear/stages/t2i_judge.py) sees the prompt's shape, colour and position (each, and all three)

Every arm and seed is measured against the same real features, so paired differences compare like
with like. One process does the work (features of a few thousand images: seconds to minutes).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from gear.artifacts import npz_array
from gear.config import ParamsError
from gear.data.loader import eval_batches
from gear.io import ArtifactError, atomic_dir, load_torch, read_json, write_json
from gear.metrics.features import (FeatureModel, feature_extractor, fid_statistics, frechet_distance, precision_recall,
                                   space_fingerprint)
from gear.models.judge import prompt_accuracy
from gear.runtime import setup, teardown
from gear.study import resolve_seed
from gear.t2i import paths
from gear.t2i.data import check_arm, load_judge, pattern, read_prompts
from gear.train.recon_check import to_uint8

FEATURES = "features.pt"


def space_params(params):
    """params whose metrics.feature_space is the T2I one (the class-conditional extractor builds it)."""
    out = copy.deepcopy(params)
    out.metrics.feature_space = params.t2i.feature_space
    return out


def real_images(params) -> np.ndarray:
    """uint8 (N, H, W, 3) of the first metrics.max_real val pairs."""
    from gear.data.loader import decode_image, to_tensor

    parts, n = [], 0
    for x in eval_batches(params, "val", params.metrics.batch_size, pattern=pattern(paths.SHARD_DIR),
                          decode=lambda sample, rng: to_tensor(decode_image(sample))):
        parts.append(to_uint8(x))
        n += len(x)
        if n >= params.metrics.max_real:
            break
    return np.concatenate(parts)[:params.metrics.max_real]


def evaluate_real(params) -> None:
    sp = space_params(params)
    fingerprint = space_fingerprint(sp)
    if not paths.manifest().is_file():
        raise ArtifactError(f"image-caption shards {paths.manifest()} not found; run `gear t2i-shard` first")
    images = real_images(params)
    if len(images) <= params.metrics.pr_k:
        raise ParamsError(f"the T2I val split has {len(images)} images; precision / recall (metrics.pr_k = "
                          f"{params.metrics.pr_k}) needs more")
    rt = setup(params)
    if rt.is_main:
        fm = FeatureModel(feature_extractor(sp, rt.device), rt.device, images.shape[1:3], logits=False)
        feats = fm.extract(images, params.metrics.batch_size)[fm.ext.fid_layer]
        with atomic_dir(paths.REAL_DIR) as out:
            torch.save(feats, out / FEATURES)
            write_json(out / "summary.json", {**fingerprint, "extractor": fm.ext.name, "num_real": len(feats),
                                              "max_real": params.metrics.max_real, "split": "val",
                                              "resolution": params.data.resolution})
        print(f"t2i-evaluate real: {len(feats)} val images in the {fingerprint['feature_space']} space -> {paths.REAL_DIR}")
    teardown(rt)


def read_real(params) -> tuple[dict, torch.Tensor]:
    summary = read_json(paths.REAL_DIR / "summary.json", "T2I real-feature summary")
    now = {**space_fingerprint(space_params(params)), "max_real": params.metrics.max_real}
    for key, value in now.items():
        if summary.get(key) != value:
            raise ArtifactError(f"{paths.REAL_DIR} was computed with {key}={summary.get(key)!r} but params give "
                                f"{value!r}; rerun `gear t2i-evaluate real`")
    path = paths.REAL_DIR / FEATURES
    try:
        return summary, load_torch(path, "T2I real features")
    except ArtifactError as e:
        raise ArtifactError(f"{e}; rerun `gear t2i-evaluate real`") from None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate_samples(params, arm: str, seed: int) -> dict:
    m = params.metrics
    summary, real = read_real(params)
    folder = paths.samples_dir(arm, seed)
    if not (folder / "samples.npz").is_file():
        raise ArtifactError(f"T2I samples {folder}/samples.npz not found; run `gear t2i-sample --arm {arm} --seed {seed}`")
    cols = {k: np.asarray(npz_array(folder / "samples.npz", k)) for k in ("prompt", "step", "cfg")}
    images = npz_array(folder / "samples.npz", "images")
    prompts, _, _ = read_prompts(params)
    if cols["prompt"].max() >= len(prompts):
        raise ArtifactError(f"{folder} was sampled from more prompts than t2i.sample.prompts = {len(prompts)}; "
                            f"rerun `gear t2i-sample --arm {arm} --seed {seed}`")
    ar_cfg = read_json(paths.ar_dir(arm, seed) / "config.json", "T2I AR config")
    rt = setup(params)
    result = None
    if rt.is_main:
        fm = FeatureModel(feature_extractor(space_params(params), rt.device), rt.device, images.shape[1:3], logits=False)
        judge = load_judge(rt.device)
        judge_cfg = read_json(paths.JUDGE_DIR / "config.json", "judge config")
        real_stats = fid_statistics(real)
        snapshots = []
        for step in sorted(set(cols["step"].tolist())):
            for cfg in sorted(set(cols["cfg"].tolist())):
                sel = np.flatnonzero((cols["step"] == step) & (cols["cfg"] == cfg))
                if len(sel) <= m.pr_k:
                    raise ParamsError(f"{len(sel)} samples per snapshot: precision / recall (metrics.pr_k = {m.pr_k}) "
                                      "needs more (raise t2i.sample.prompts or per_prompt)")
                imgs = np.asarray(images[sel])
                gen = fm.extract(imgs, m.batch_size)[fm.ext.fid_layer]
                row = {"step": int(step), "cfg_scale": float(cfg), "num_samples": len(sel),
                       "fdd": _finite(frechet_distance(fid_statistics(gen), real_stats)),
                       **precision_recall(gen, real, m.pr_k), "prompt_accuracy": None}
                if judge is not None:
                    attrs = [prompts[i]["attributes"] for i in cols["prompt"][sel]]
                    row["prompt_accuracy"] = prompt_accuracy(judge, imgs, attrs)
                snapshots.append(row)
        result = {"arm": arm, "seed": seed, "feature_space": summary["feature_space"], "extractor": summary["extractor"],
                  "num_real": summary["num_real"], "prompts": len(prompts), "per_prompt": params.t2i.sample.per_prompt,
                  "text_encoder": params.t2i.text.encoder, "ar_size": ar_cfg.get("size"), "pr_k": m.pr_k,
                  "judge": {"available": bool(judge_cfg.get("available")),
                            "val_accuracy": judge_cfg.get("val_accuracy")},
                  "samples": str(folder / "samples.npz"), "snapshots": snapshots}
        write_json(paths.eval_json(arm, seed), result)
        last = [r for r in snapshots if r["step"] == snapshots[-1]["step"]]
        print(f"t2i-evaluate samples[{arm}/seed{seed}]: step {last[-1]['step']}: " + "; ".join(
            f"CFG {r['cfg_scale']:g} FDD {r['fdd']:.3f} P {r['precision']:.3f} R {r['recall']:.3f}"
            + (f" prompt acc {r['prompt_accuracy']['all']:.3f}" if r["prompt_accuracy"] else "") for r in last))
    teardown(rt)
    return result


def run(params, what: str, arm: str | None = None, seed: int | None = None) -> None:
    if what == "real":
        if arm is not None or seed is not None:
            raise ParamsError("`gear t2i-evaluate real` takes no --arm / --seed (one real set for every arm)")
        evaluate_real(params)
        return
    if arm is None:
        raise ParamsError("`gear t2i-evaluate samples` needs --arm baseline | gear")
    check_arm(arm)
    evaluate_samples(params, arm, resolve_seed(params, seed))
