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
  tokenizer  eval/tokenizer/<T>.json: rFID of the val reconstructions against the cached real
             statistics (and against the val originals), PSNR, SSIM, codebook statistics, and
             linear CKA / CKNNA of the pre- and post-quantization latents with teacher patches.
  samples    eval/samples/<A>/<S>.json: gFID, IS, precision, recall of samples/<A>/<S>/samples.npz
             against the cached real statistics, and linear CKA / CKNNA of every AR block output
             (EMA weights, teacher-forced on val tokens of the frozen tokenizer <A>) with teacher
             patches: the hidden state at position k (it has seen tokens < k) against patch k.
Patch similarities use metrics.max_patches patches drawn uniformly with a fixed seed.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gear import paths
from gear.artifacts import load_tokenizer
from gear.config import ParamsError
from gear.data.loader import TrainStream, eval_batches, read_manifest
from gear.io import ArtifactError, atomic_dir, read_json, sha256_file, write_json
from gear.metrics.codebook import CodebookAccumulator, soft_assignment_stats
from gear.metrics.fidelity import (DINOV2_ARCH, Extractor, cache_real_statistics, compute_generation_metrics,
                                   make_extractor)
from gear.metrics.recon import psnr, ssim
from gear.metrics.similarity import cknna, linear_cka
from gear.runtime import Runtime, setup
from gear.teachers import HUB_TEACHERS, load_teacher
from gear.train.recon_check import to_uint8

ISC_SPLITS = 10          # torch-fidelity / ADM default
PATCH_SEED = 1234        # which patches enter CKA / CKNNA (fixed: arms are compared on the same draw)
DEMO_EXTRACTOR = "demo-teacher"


def run(params, what: str, arm: str | None = None, size: str | None = None) -> None:
    if what == "real":
        if arm is not None or size is not None:
            raise ParamsError("gear evaluate real takes no --arm / --size")
        evaluate_real(params)
    elif what == "tokenizer":
        if arm not in paths.tokenizer_arms(params) or size is not None:
            raise ParamsError(f"gear evaluate tokenizer needs --arm in {', '.join(paths.tokenizer_arms(params))} "
                              f"and no --size (got --arm {arm}, --size {size})")
        evaluate_tokenizer(params, arm)
    elif what == "samples":
        if arm not in paths.AR_ARMS or size not in params.ar.sizes:
            raise ParamsError(f"gear evaluate samples needs --arm in {', '.join(paths.AR_ARMS)} and --size in "
                              f"{', '.join(params.ar.sizes)} (got --arm {arm}, --size {size})")
        evaluate_samples(params, arm, size)
    else:
        raise ParamsError(f"gear evaluate {what!r}: must be real, tokenizer or samples")


# ----------------------------------------------------------------------------------------------
# feature space


def space_fingerprint(params) -> dict:
    """What the feature space is built from; eval/real is stale when this changes."""
    m, space = params.metrics, params.metrics.feature_space
    if space == "demo":
        weights = str(paths.teacher_dir() / "model.safetensors")
    elif space == "inception":
        weights = m.inception_weights
    else:
        weights = params.teachers.weights if params.teacher.startswith("dinov2") else None
    if weights is not None and not Path(weights).is_file():
        raise ArtifactError(f"feature space {space}: weights file {weights} not found")
    return {"feature_space": space, "weights": weights,
            "weights_sha256": sha256_file(weights) if weights is not None else None}


def feature_extractor(params, device: torch.device) -> Extractor:
    """The params' feature space as a torch-fidelity extractor on `device`."""
    space = params.metrics.feature_space
    try:
        if space == "demo":
            teacher = load_teacher(params, device, name="demo")

            def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                x = x.float() / 127.5 - 1  # the teacher reads [-1, 1] images
                return teacher.pooled(x), teacher.logits(x)
            return make_extractor("custom", fn=fn, name=DEMO_EXTRACTOR)
        if space == "inception":
            return make_extractor("inception", weights_path=params.metrics.inception_weights)
        dino = params.teacher.startswith("dinov2")  # reuse the teacher's DINOv2 and its local weights
        return make_extractor("dinov2", weights_path=params.teachers.weights if dino else None,
                              arch=HUB_TEACHERS[params.teacher].arch if dino else DINOV2_ARCH)
    except RuntimeError as e:  # weights that cannot be loaded: one line, before any compute
        raise ArtifactError(f"feature space {space}: {e}") from None


# ----------------------------------------------------------------------------------------------
# images


def read_images(params, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, 3) images and labels of a split: all of it in shard order, or `limit`
    of them drawn uniformly without replacement (seed compute.seed) when the split is larger."""
    count = read_manifest(params)["splits"][split]["count"]
    bs = params.metrics.batch_size
    if limit is None or limit >= count:
        batches = eval_batches(params, split, bs)
    else:  # the first epoch of a shuffled stream; (count // b) * b >= limit for b <= count - limit + 1
        b = min(bs, count - limit + 1)
        batches = itertools.islice(TrainStream(params, split, b, augment=False), math.ceil(limit / b))
    images, labels = [], []
    for x, y in batches:
        images.append(to_uint8(x))
        labels.append(y.numpy())
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


# ----------------------------------------------------------------------------------------------
# real statistics


def evaluate_real(params) -> dict:
    m = params.metrics
    read_manifest(params)
    fingerprint = space_fingerprint(params)
    rt = setup(params)
    ext = feature_extractor(params, rt.device)
    real, _ = read_images(params, m.real_split, m.max_real)
    key = f"{m.real_split}-{len(real)}-{real.shape[1]}px"
    with atomic_dir(paths.real_stats_dir()) as out:
        stats = cache_real_statistics(real, ext, cache_dir=str(out), cache_key=key, batch_size=m.batch_size,
                                      device=str(rt.device), isc_splits=ISC_SPLITS)
        summary = {**stats, **fingerprint, "cache_key": key, "real_split": m.real_split, "max_real": m.max_real,
                   "resolution": int(real.shape[1]), "params_digest": params.digest("metrics")}
        write_json(out / "summary.json", summary)
    print(f"evaluate real: {len(real)} {m.real_split} images in the {fingerprint['feature_space']} space ({ext.name}) "
          f"cached in {paths.real_stats_dir()}")
    return summary


def real_summary(params) -> dict:
    """eval/real/summary.json, checked against the params' feature space and real set."""
    summary = read_json(paths.real_stats_dir() / "summary.json", "real statistics summary")
    now = {**space_fingerprint(params), "real_split": params.metrics.real_split, "max_real": params.metrics.max_real}
    for key, value in now.items():
        if summary.get(key) != value:
            raise ArtifactError(f"{paths.real_stats_dir()} was computed with {key}={summary.get(key)!r} but params "
                                f"give {value!r}; rerun `gear evaluate real`")
    return summary


def fid_vs_real(params, images: np.ndarray, ext: Extractor, summary: dict, device: torch.device) -> dict:
    """FID / IS / precision / recall of uint8 images against the cached real statistics."""
    return compute_generation_metrics(images, None, ext, pr_k=params.metrics.pr_k,
                                      batch_size=params.metrics.batch_size, cache_dir=str(paths.real_stats_dir()),
                                      cache_key=summary["cache_key"], device=str(device), isc_splits=ISC_SPLITS)


# ----------------------------------------------------------------------------------------------
# patch similarity


class PatchSample:
    """A uniform random subset of at most `size` patches, the same patches for every named
    feature set: the patches with the smallest of seeded random keys (one key per patch, drawn
    in stream order, so the subset does not depend on the batch size)."""

    def __init__(self, size: int, seed: int = PATCH_SEED):
        self.size, self.gen = size, torch.Generator().manual_seed(seed)
        self.keys, self.feats = torch.empty(0), {}

    def add(self, **feats: torch.Tensor) -> None:
        """feats: name -> (B, L, D) patch features of the same B x L patches."""
        flat = {k: v.detach().float().cpu().reshape(-1, v.shape[-1]) for k, v in feats.items()}
        n = {len(v) for v in flat.values()}
        if len(n) != 1:
            raise ValueError(f"feature sets disagree on the number of patches: {sorted(n)}")
        keys = torch.cat([self.keys, torch.rand(n.pop(), generator=self.gen)])
        keep = keys.topk(min(self.size, len(keys)), largest=False).indices.sort().values
        self.keys = keys[keep]
        self.feats = {k: (torch.cat([self.feats[k], v]) if k in self.feats else v)[keep] for k, v in flat.items()}

    def similarity(self, name: str, target: str, k: int) -> dict:
        x, y = self.feats[name], self.feats[target]
        return {"cka": linear_cka(x, y), "cknna": cknna(x, y, k=k)}


def _patches(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latent -> (B, h*w, C) patches in row-major order (the teacher's order)."""
    return z.float().flatten(2).transpose(1, 2)


def _check_val(params, grid: int) -> None:
    """Enough val images and patches for every metric, checked before any compute."""
    n, m = read_manifest(params)["splits"]["val"]["count"], params.metrics
    need = max(ISC_SPLITS, m.pr_k + 1)
    if n < need:
        raise ParamsError(f"the val split has {n} images; IS and precision / recall (metrics.pr_k = {m.pr_k}) "
                          f"need at least {need}")
    patches = min(m.max_patches, n * grid * grid)
    if patches <= m.cknna_k or patches < 4:
        raise ParamsError(f"{patches} patches for CKNNA with metrics.cknna_k = {m.cknna_k}: need more patches "
                          "than k (raise metrics.max_patches)")


# ----------------------------------------------------------------------------------------------
# tokenizer


def _finite(d: dict) -> dict:
    """nan / inf (e.g. CKA of a collapsed latent) as null: JSON readers reject NaN."""
    return {k: (_finite(v) if isinstance(v, dict) else
                None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@torch.no_grad()
def evaluate_tokenizer(params, arm: str) -> dict:
    m = params.metrics
    summary = real_summary(params)
    directory = paths.frozen_dir(arm)
    rt = setup(params)
    tok = load_tokenizer(directory, device=rt.device)
    teacher = load_teacher(params, rt.device)
    ext = feature_extractor(params, rt.device)
    grid = tok.grid_size(params.data.resolution)
    _check_val(params, grid)

    codes = CodebookAccumulator(tok.codebook_size)
    sample = PatchSample(m.max_patches)
    soft, originals, recons = {}, [], []
    for x, _ in tqdm(eval_batches(params, "val", m.batch_size), desc=f"evaluate tokenizer[{arm}]"):
        x = x.to(rt.device)
        with rt.autocast():
            z_pre, q = tok.encode(x)
            recon = tok.decode(q.z_q)
        originals.append(to_uint8(x))
        recons.append(to_uint8(recon))
        codes.update(q.indices)
        for key, value in soft_assignment_stats(q.dist.float(), params.tau).items():  # token-weighted mean
            soft[key] = soft.get(key, 0.0) + value * q.indices.numel()
        sample.add(teacher=teacher.features(x, grid), z_pre=_patches(z_pre), z_q=_patches(q.z_q))
    originals, recons = np.concatenate(originals), np.concatenate(recons)
    stats = codes.result()

    gen = fid_vs_real(params, recons, ext, summary, rt.device)
    floor = fid_vs_real(params, originals, ext, summary, rt.device)
    paired = compute_generation_metrics(recons, originals, ext, pr_k=m.pr_k, batch_size=m.batch_size,
                                        device=str(rt.device), isc_splits=ISC_SPLITS)
    pre, post = sample.similarity("z_pre", "teacher", m.cknna_k), sample.similarity("z_q", "teacher", m.cknna_k)
    result = _finite({
        "arm": arm, "tokenizer": str(directory), "split": "val", "num_images": len(originals),
        "feature_space": summary["feature_space"], "extractor": gen["extractor"],
        "real_split": summary["real_split"], "num_real": gen["num_real"],
        "rfid": gen["fid"], "rfid_val": paired["fid"], "val_fid": floor["fid"],
        "psnr": float(np.mean(psnr(originals, recons))), "ssim": float(np.mean(ssim(originals, recons))),
        "codebook_size": tok.codebook_size, "usage": stats["usage"], "entropy": stats["entropy"],
        "effective_size": stats["effective_size"], "num_tokens": stats["num_tokens"], "tau": params.tau,
        **{k: v / stats["num_tokens"] for k, v in soft.items()},
        "teacher": params.teacher, "num_patches": len(sample.keys), "cknna_k": m.cknna_k,
        "cka_pre": pre["cka"], "cknna_pre": pre["cknna"], "cka_post": post["cka"], "cknna_post": post["cknna"],
        "params_digest": params.digest("metrics")})
    write_json(paths.eval_tokenizer_json(arm), result)
    print(f"evaluate tokenizer[{arm}]: rFID {gen['fid']:.3f} ({summary['feature_space']}), PSNR {result['psnr']:.2f}, "
          f"SSIM {result['ssim']:.4f}, usage {stats['usage']:.3f}, CKA pre/post {pre['cka']:.3f}/{post['cka']:.3f}")
    return result


# ----------------------------------------------------------------------------------------------
# samples


def read_samples(directory: Path) -> np.ndarray:
    path = directory / "samples.npz"
    if not path.is_file():
        raise ArtifactError(f"samples file {path} not found; run `gear sample` first")
    with np.load(path) as f:
        if "images" not in f:
            raise ArtifactError(f"{path} holds no 'images' array (has {', '.join(f.files)})")
        images = f["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ArtifactError(f"{path}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


@torch.no_grad()
def ar_layer_similarity(params, ar, tok, teacher, rt: Runtime, desc: str) -> dict:
    """Linear CKA / CKNNA of every AR block output with teacher patches, teacher-forced on val."""
    m, cfg = params.metrics, ar.cfg
    grid = tok.grid_size(params.data.resolution)
    if cfg.vocab_size != tok.codebook_size or cfg.grid != grid:
        raise ArtifactError(f"AR (vocab {cfg.vocab_size}, grid {cfg.grid}) does not fit the frozen tokenizer "
                            f"(codebook {tok.codebook_size}, grid {grid} at {params.data.resolution} px)")
    layers = tuple(range(1, cfg.n_layer + 1))
    sample, seen = PatchSample(m.max_patches), 0
    for x, labels in tqdm(eval_batches(params, "val", m.batch_size), desc=desc):
        x, labels = x.to(rt.device), labels.to(rt.device)
        with rt.autocast():
            _, q = tok.encode(x)
            out = ar(q.indices.flatten(1), labels, return_layers=layers)
        sample.add(teacher=teacher.features(x, grid), **{f"layer_{l}": out.hidden[l] for l in layers})
        seen += len(x)
    sims = {l: sample.similarity(f"layer_{l}", "teacher", m.cknna_k) for l in layers}
    return {"ar_layers": list(layers), "ar_num_images": seen, "ar_num_patches": len(sample.keys),
            "ar_cka": {str(l): s["cka"] for l, s in sims.items()},
            "ar_cknna": {str(l): s["cknna"] for l, s in sims.items()}}


def evaluate_samples(params, arm: str, size: str) -> dict:
    from gear.stages.train_ar import load_ar  # the AR folder's loader lives with its writer

    summary = real_summary(params)
    images = read_samples(paths.samples_dir(arm, size))
    need = max(ISC_SPLITS, params.metrics.pr_k + 1)
    if len(images) < need:
        raise ArtifactError(f"{paths.samples_dir(arm, size)}/samples.npz holds {len(images)} images; IS and "
                            f"precision / recall need at least {need}")
    rt = setup(params)
    ext = feature_extractor(params, rt.device)
    tok = load_tokenizer(paths.frozen_dir(arm), device=rt.device)
    ar, ar_cfg = load_ar(paths.ar_dir(arm, size), rt.device)
    ar.eval()
    if ar_cfg.get("tokenizer_sha256") != sha256_file(paths.frozen_dir(arm) / "tokenizer.safetensors"):
        raise ArtifactError(f"the AR in {paths.ar_dir(arm, size)} was trained on other tokens than the frozen "
                            f"tokenizer {paths.frozen_dir(arm)}; rerun `gear train-ar --arm {arm} --size {size}`")
    _check_val(params, tok.grid_size(params.data.resolution))
    teacher = load_teacher(params, rt.device)

    layers = ar_layer_similarity(params, ar, tok, teacher, rt, f"evaluate samples[{arm}/{size}]")
    gen = fid_vs_real(params, images, ext, summary, rt.device)
    result = _finite({
        "arm": arm, "size": size, "samples": str(paths.samples_dir(arm, size) / "samples.npz"),
        "ar": str(paths.ar_dir(arm, size)), "tokenizer": str(paths.frozen_dir(arm)),
        "feature_space": summary["feature_space"], "extractor": gen["extractor"],
        "real_split": summary["real_split"], "num_samples": gen["num_samples"], "num_real": gen["num_real"],
        "fid": gen["fid"], "is_mean": gen.get("is_mean"), "is_std": gen.get("is_std"),
        "precision": gen["precision"], "recall": gen["recall"], "pr_k": params.metrics.pr_k,
        "teacher": params.teacher, "cknna_k": params.metrics.cknna_k, **layers,
        "params_digest": params.digest("metrics")})
    write_json(paths.eval_samples_json(arm, size), result)
    cka = ", ".join(f"{v:.3f}" for v in layers["ar_cka"].values())
    print(f"evaluate samples[{arm}/{size}]: gFID {gen['fid']:.3f} ({summary['feature_space']}, {len(images)} samples), "
          f"precision {gen['precision']:.3f}, recall {gen['recall']:.3f}; CKA per layer {cka}")
    return result
