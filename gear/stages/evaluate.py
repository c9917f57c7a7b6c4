"""`gear evaluate real | tokenizer --arm T | samples --arm A --size S`: the metrics JSONs.

Feature space (params.metrics.feature_space), used for every FID / IS / precision / recall:
  demo       the demo teacher: pooled CLS feature for FID and precision / recall, its classifier
             logits for IS (models/teacher/)
  inception  torch-fidelity's TF-FID Inception-v3 (metrics.inception_weights or the torch cache)
  dinov2     timm DINOv2 CLS token: FID in this space is FDD (teachers.weights when the teacher
             is a DINOv2, else the hub)
Numbers from different spaces are never comparable: every JSON names its space and its counts.

  real       features + FID statistics of metrics.real_split (at most metrics.max_real images,
             a seeded uniform subset when the split is larger) cached in eval/real/, with
             summary.json (space, weights fingerprint, counts, cache key).
  tokenizer  eval/tokenizer/[seed<N>/]<T>.json (seed<N>/ for every arm but the shared baseline): rFID of the val reconstructions against the cached real
             statistics (and against the val originals), PSNR, SSIM, codebook statistics, and
             linear CKA / CKNNA of the pre- and post-quantization latents with teacher patches.
  samples    eval/samples/seed<N>/<A>/<S>.json: gFID, IS, precision, recall of
             samples/seed<N>/<A>/<S>/samples.npz
             against the cached real statistics, or, with metrics.reference (Inception only), against
             ADM's reference batch as ADM's evaluator scores (gear/metrics/reference.py: its mu /
             sigma, the features of its arr_0 images, IS over splits of 5000, sFID), and linear CKA / CKNNA of every AR block output
             (EMA weights, teacher-forced on val tokens of the frozen tokenizer <A>) with teacher
             patches: the hidden state at position k (it has seen tokens < k) against patch k.
Patch similarities use metrics.max_patches patches drawn uniformly with a fixed seed. The study
seed (--seed) picks the artifacts only: every seed and arm is measured on the same images, patches
and real statistics (compute.seed), so paired differences compare like with like.

Processes: one, or N under torchrun / SLURM (gloo on CPU, nccl on GPU). A pass is a plan of
metrics.batch_size batches that every rank derives alike; rank r runs batches r, r + N, ...; rank 0
gathers features, per-image values and patch subsets in batch order, computes every metric
(torch-fidelity's feature-level functions: gear/metrics/features.py) and alone writes. A batch holds
the same images whatever N, so N processes give the numbers of one (the plumbing:
gear/metrics/evaluation.py).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gear import paths
from gear.artifacts import load_tokenizer
from gear.config import ParamsError
from gear.data.loader import read_manifest
from gear.io import ArtifactError, atomic_dir, sha256_file, write_json
from gear.metrics.codebook import CodebookAccumulator, histogram_stats, soft_assignment_stats
from gear.metrics.evaluation import (ISC_SPLITS, ar_layer_similarity, batch_plan, check_real, feature_model, finish,
                                     in_order, my_batches, real_summary, samples_to_score, score_samples)
from gear.metrics.features import (FeatureModel, concat, feature_extractor, fid_statistics, frechet_distance,
                                   space_fingerprint, write_real_cache)
from gear.metrics import reference
from gear.metrics.patches import PatchSample, patches
from gear.metrics.recon import psnr, ssim
from gear.runtime import gather_to_main, setup
from gear.study import resolve_seed
from gear.teachers import load_teacher
from gear.train.recon_check import to_uint8


def precheck(params, what: str, **_) -> None:
    """Before the inputs are checked (gear/cli.py): a wrong reference batch is one line at once."""
    if what == "samples":
        reference.check(params)


def run(params, what: str, arm: str | None = None, size: str | None = None, seed: int | None = None) -> None:
    if what == "real":
        if arm is not None or size is not None or seed is not None:
            raise ParamsError("gear evaluate real takes no --arm / --size / --seed")
        evaluate_real(params)
    elif what == "tokenizer":
        sized = paths.sized() and paths.tokenizer_seeded(arm)  # stage2 = ar-init: a tuned arm per AR size
        if arm not in paths.tokenizer_arms(params) or (size is not None) != sized:
            raise ParamsError(f"gear evaluate tokenizer needs --arm in {', '.join(paths.tokenizer_arms(params))} "
                              f"and {'--size (stage2 = ar-init)' if sized else 'no --size'} "
                              f"(got --arm {arm}, --size {size})")
        evaluate_tokenizer(params, arm, resolve_seed(params, seed) if paths.tokenizer_seeded(arm) else None, size)
    elif what == "samples":
        if arm not in paths.FRESH_AR_ARMS or size not in params.ar.sizes:
            raise ParamsError(f"gear evaluate samples needs --arm in {', '.join(paths.FRESH_AR_ARMS)} and --size in "
                              f"{', '.join(params.ar.sizes)} (got --arm {arm}, --size {size})")
        evaluate_samples(params, arm, size, resolve_seed(params, seed))
    else:
        raise ParamsError(f"gear evaluate {what!r}: must be real, tokenizer or samples")


# ----------------------------------------------------------------------------------------------
# real statistics


def evaluate_real(params) -> dict | None:
    m = params.metrics
    fingerprint = space_fingerprint(params)
    plan = batch_plan(params, m.real_split, m.max_real)
    rt = setup(params)
    fm = FeatureModel(feature_extractor(params, rt.device), rt.device, params.data.resolution)
    if fm.isc_layer is not None and sum(map(len, plan)) < ISC_SPLITS:
        raise ParamsError(f"IS of the real set needs at least {ISC_SPLITS} images; the {m.real_split} split "
                          f"has {sum(map(len, plan))}")
    mine = [(k, fm(to_uint8(x))) for k, x, _ in my_batches(params, rt, m.real_split, plan, "evaluate real")]
    parts, summary = gather_to_main(mine, rt), None
    if rt.is_main:
        feats = concat(in_order(parts))
        num_real, res = len(feats[fm.ext.fid_layer]), params.data.resolution
        key = f"{m.real_split}-{num_real}-{res}px"
        with atomic_dir(paths.real_stats_dir()) as out:
            stats = write_real_cache(out, key, fm, feats, ISC_SPLITS)
            summary = {**stats, **fingerprint, "cache_key": key, "real_split": m.real_split, "max_real": m.max_real,
                       "resolution": res}
            write_json(out / "summary.json", summary)
        print(f"evaluate real: {num_real} {m.real_split} images in the {fingerprint['feature_space']} space "
              f"({fm.ext.name}) cached in {paths.real_stats_dir()}")
    finish(rt)
    return summary


def _check_val(params, grid: int) -> None:
    """Enough val images and patches for every metric, checked before any compute."""
    n, m = read_manifest(params)["splits"]["val"]["count"], params.metrics
    need = max(ISC_SPLITS, m.pr_k + 1)
    if n < need:
        raise ParamsError(f"the val split has {n} images; IS and precision / recall (metrics.pr_k = {m.pr_k}) "
                          f"need at least {need}")
    patch_count = min(m.max_patches, n * grid * grid)
    if patch_count <= m.cknna_k or patch_count < 4:
        raise ParamsError(f"{patch_count} patches for CKNNA with metrics.cknna_k = {m.cknna_k}: need more patches "
                          "than k (raise metrics.max_patches)")


def _finite(d: dict) -> dict:
    """nan / inf (e.g. CKA of a collapsed latent) as null: JSON readers reject NaN."""
    return {k: (_finite(v) if isinstance(v, dict) else
                None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------
# tokenizer


@torch.no_grad()
def evaluate_tokenizer(params, arm: str, seed: int | None, size: str | None = None) -> dict | None:
    m = params.metrics
    summary = real_summary(params)
    directory = paths.frozen_dir(arm, seed, size)
    rt = setup(params)
    tok = load_tokenizer(directory, device=rt.device)
    teacher = load_teacher(params, rt.device)
    fm = FeatureModel(feature_extractor(params, rt.device), rt.device, params.data.resolution, logits=False)
    real = check_real(summary, fm.ext)
    grid = tok.grid_size(params.data.resolution)
    _check_val(params, grid)

    codes, sample, mine = CodebookAccumulator(tok.codebook_size), PatchSample(m.max_patches), []
    for k, x, _ in my_batches(params, rt, "val", batch_plan(params, "val"), f"evaluate tokenizer[{arm}]",
                              skip=lambda n: sample.skip(n * grid * grid)):
        with rt.autocast():
            z_pre, q = tok.encode(x)
            recon = tok.decode(q.z_q)
        originals, recons = to_uint8(x), to_uint8(recon)
        codes.update(q.indices)
        sample.add(teacher=teacher.features(x, grid), z_pre=patches(z_pre), z_q=patches(q.z_q))
        mine.append((k, {"recon": fm(recons), "original": fm(originals), "psnr": psnr(originals, recons),
                         "ssim": ssim(originals, recons), "tokens": q.indices.numel(),
                         "soft": soft_assignment_stats(q.dist.float(), params.tau)}))
    parts, hists, sample = gather_to_main(mine, rt), gather_to_main(codes.hist, rt), sample.gather(rt)
    result = None
    if rt.is_main:
        batches = in_order(parts)
        layer = fm.ext.fid_layer
        gen = fid_statistics(concat([b["recon"] for b in batches])[layer])
        val = fid_statistics(concat([b["original"] for b in batches])[layer])
        rfid, stats, soft = frechet_distance(gen, real.stats), histogram_stats(sum(hists)), {}
        for b in batches:  # token-weighted means, summed in batch order
            for key, value in b["soft"].items():
                soft[key] = soft.get(key, 0.0) + value * b["tokens"]
        per_image = {key: np.concatenate([b[key] for b in batches]) for key in ("psnr", "ssim")}
        pre, post = sample.similarity("z_pre", "teacher", m.cknna_k), sample.similarity("z_q", "teacher", m.cknna_k)
        result = _finite({
            "arm": arm, "seed": seed, "tokenizer": str(directory), "split": "val", "num_images": len(per_image["psnr"]),
            "feature_space": summary["feature_space"], "extractor": fm.ext.name,
            "real_split": summary["real_split"], "num_real": real.num_real,
            "rfid": rfid, "rfid_val": frechet_distance(gen, val),
            "val_fid": frechet_distance(val, real.stats),
            "psnr": float(np.mean(per_image["psnr"])), "ssim": float(np.mean(per_image["ssim"])),
            "codebook_size": tok.codebook_size, "usage": stats["usage"], "entropy": stats["entropy"],
            "effective_size": stats["effective_size"], "num_tokens": stats["num_tokens"], "tau": params.tau,
            **{k: v / stats["num_tokens"] for k, v in soft.items()},
            "teacher": params.teacher, "num_patches": len(sample.keys), "cknna_k": m.cknna_k,
            "cka_pre": pre["cka"], "cknna_pre": pre["cknna"], "cka_post": post["cka"], "cknna_post": post["cknna"]})
        write_json(paths.eval_tokenizer_json(arm, seed, size), result)
        print(f"evaluate tokenizer[{arm}]: rFID {rfid:.3f} ({summary['feature_space']}), PSNR "
              f"{result['psnr']:.2f}, SSIM {result['ssim']:.4f}, usage {stats['usage']:.3f}, CKA pre/post "
              f"{pre['cka']:.3f}/{post['cka']:.3f}")
    finish(rt)
    return result


# ----------------------------------------------------------------------------------------------
# samples


def evaluate_samples(params, arm: str, size: str, seed: int) -> dict | None:
    from gear.artifacts import load_ar

    m = params.metrics
    ref, summary, images = samples_to_score(params, paths.samples_dir(arm, size, seed))
    rt = setup(params)
    fm, real = feature_model(params, rt, images, ref, summary)
    tok = load_tokenizer(paths.frozen_dir(arm, seed, size), device=rt.device)
    ar, ar_cfg = load_ar(paths.ar_dir(arm, size, seed), rt.device)
    ar.eval()
    if ar_cfg.get("tokenizer_sha256") != sha256_file(paths.frozen_dir(arm, seed, size) / "tokenizer.safetensors"):
        raise ArtifactError(f"the AR in {paths.ar_dir(arm, size, seed)} was trained on other tokens than the frozen "
                            f"tokenizer {paths.frozen_dir(arm, seed, size)}; rerun `gear train-ar --arm {arm} --size {size} --seed {seed}`")
    _check_val(params, tok.grid_size(params.data.resolution))
    teacher = load_teacher(params, rt.device)

    layers = ar_layer_similarity(params, ar, tok, teacher, rt, f"evaluate samples[{arm}/{size}]")
    gen = score_samples(params, fm, images, ref, summary, real, rt)
    result = None
    if rt.is_main:
        result = _finite({
            "arm": arm, "size": size, "seed": seed, "samples": str(paths.samples_dir(arm, size, seed) / "samples.npz"),
            "ar": str(paths.ar_dir(arm, size, seed)), "tokenizer": str(paths.frozen_dir(arm, seed, size)),
            "extractor": fm.ext.name, "num_samples": len(images), **gen,
            "teacher": params.teacher, "cknna_k": m.cknna_k, **layers})
        write_json(paths.eval_samples_json(arm, size, seed), result)
        cka = ", ".join(f"{v:.3f}" for v in layers["ar_cka"].values())
        print(f"evaluate samples[{arm}/{size}]: gFID {gen['fid']:.3f} ({result['feature_space']}, against "
              f"{ref.path if ref else 'eval/real'}, {len(images)} samples), precision {gen['precision']:.3f}, "
              f"recall {gen['recall']:.3f}; CKA per layer {cka}")
    finish(rt)
    return result
