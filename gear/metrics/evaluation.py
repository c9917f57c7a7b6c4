"""The plumbing every evaluation pass shares (`gear evaluate`, `gear released-evaluate`,
`gear released-tokenizer`): batch plans and ranks, the cached real statistics, the scoring of a
sample set, and the AR's per-layer similarity with teacher patches.

A pass is a plan of metrics.batch_size batches that every rank derives alike; rank r runs batches
r, r + N, ...; rank 0 gathers (batch number, payload) pairs, puts them back in batch order
(`in_order`), computes every metric and alone writes; `finish` waits for its writes. A batch holds
the same images whatever N, so N processes give the numbers of one."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from gear import paths
from gear.data.loader import TrainStream, read_batches, split_size
from gear.io import ArtifactError, read_json
from gear.metrics import reference
from gear.metrics.features import (FeatureModel, RealSet, concat, feature_extractor, generation_metrics,
                                   read_real_cache, space_fingerprint)
from gear.metrics.fidelity import Extractor
from gear.metrics.patches import PatchSample
from gear.runtime import Runtime, barrier, gather_to_main, teardown

ISC_SPLITS = 10          # torch-fidelity / ADM default


# ----------------------------------------------------------------------------------------------
# batch plans and ranks


def batch_plan(params, split: str, limit: int | None = None) -> list[np.ndarray]:
    """Sample positions of an evaluation pass in metrics.batch_size batches: the whole split in
    shard order, or `limit` of it drawn uniformly without replacement (the first epoch of a
    shuffled stream, seed compute.seed) when the split is larger. Every rank derives the same plan."""
    n = split_size(params, split)
    order = (np.arange(n) if limit is None or limit >= n
             else TrainStream(params, split, 1, augment=False).epoch_order(0)[:limit])
    bs = params.metrics.batch_size
    return [order[s:s + bs] for s in range(0, len(order), bs)]


def my_batches(params, rt: Runtime, split: str, plan: list[np.ndarray], desc: str,
               skip: Callable[[int], None] | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(batch number, images on the device, labels) of this rank's batches of the plan: only these
    are read. skip(n) is told the n images of each batch another rank runs."""
    mine = plan[rt.rank::rt.world]
    batches = read_batches(params, split, mine)
    with tqdm(total=len(mine), desc=desc, disable=not rt.is_main) as bar:
        for k, b in enumerate(plan):
            if k % rt.world != rt.rank:
                if skip is not None:
                    skip(len(b))
                continue
            out = next(batches)
            bar.update()
            if out is not None:
                yield k, out[0].to(rt.device), out[1].to(rt.device)


def finish(rt: Runtime) -> None:
    """Wait for rank 0's writes (every rank returns once the outputs exist), then leave the group."""
    barrier(rt)
    teardown(rt)


def in_order(parts: list[list[tuple[int, object]]]) -> list:
    """The ranks' gathered (batch number, payload) lists -> the payloads in batch order."""
    return [payload for _, payload in sorted((item for part in parts for item in part), key=lambda item: item[0])]


# ----------------------------------------------------------------------------------------------
# real statistics


def real_summary(params) -> dict:
    """eval/real/summary.json, checked against the params' feature space and real set."""
    summary = read_json(paths.real_stats_dir() / "summary.json", "real statistics summary")
    now = {**space_fingerprint(params), "real_split": params.metrics.real_split, "max_real": params.metrics.max_real}
    for key, value in now.items():
        if summary.get(key) != value:
            raise ArtifactError(f"{paths.real_stats_dir()} was computed with {key}={summary.get(key)!r} but params "
                                f"give {value!r}; rerun `gear evaluate real`")
    return summary


def check_real(summary: dict, ext: Extractor) -> RealSet:
    """The cached real features and statistics, read and checked (every rank, before compute)."""
    try:
        return read_real_cache(paths.real_stats_dir(), summary["cache_key"], ext)
    except (ValueError, ArtifactError) as e:
        raise ArtifactError(f"{e}; rerun `gear evaluate real`") from None


# ----------------------------------------------------------------------------------------------
# samples and the AR


def samples_to_score(params, folder, raise_hint: str = "", resolution: int | None = None):
    """(ref, summary, images) of the samples in `folder`, checked before any process starts: ADM's
    reference batch `ref` (or None: our own real statistics, `summary`) and enough images for IS's
    splits and precision / recall's neighbours."""
    from gear.artifacts import read_samples

    m = params.metrics
    ref = reference.check(params, resolution)  # ADM's reference batch, or (None) our own real statistics
    summary = real_summary(params) if ref is None else None
    images = read_samples(folder)
    need = max(ISC_SPLITS, m.pr_k + 1)
    if len(images) < need:
        raise ArtifactError(f"{folder}/samples.npz holds {len(images)} images; IS and precision / recall need at "
                            f"least {need}{raise_hint}")
    return ref, summary, images


def feature_model(params, rt: Runtime, images: np.ndarray, ref,
                  summary: dict | None) -> tuple[FeatureModel, RealSet | None]:
    """The feature model the samples are scored in (spatial features where ADM's sFID is asked for)
    and the cached real set they are compared with (None against ADM's reference batch)."""
    fm = FeatureModel(feature_extractor(params, rt.device), rt.device, images.shape[1:3],
                      spatial=ref is not None and ref.mu_s is not None)
    return fm, (check_real(summary, fm.ext) if ref is None else None)


def score_samples(params, fm: FeatureModel, images: np.ndarray, ref, summary: dict | None, real: RealSet | None,
                  rt: Runtime) -> dict | None:
    """gFID, IS, precision / recall of uint8 sample images against ADM's reference batch `ref`, or
    (ref None) the cached real statistics `real`, with what they were scored against (rank 0: the
    dict; other ranks: None). Also what the `released` target scores public GPTs with."""
    m = params.metrics
    parts = gather_to_main(_features(fm, images, m.batch_size, rt), rt)
    ref_parts = None if ref is None else gather_to_main(_features(fm, ref.images(), m.batch_size, rt), rt)
    if not rt.is_main:
        return None
    feats = concat(in_order(parts))
    if ref is None:
        gen = generation_metrics(feats, real, fm, pr_k=m.pr_k, isc_splits=ISC_SPLITS)
        against = {"feature_space": summary["feature_space"], "real_split": summary["real_split"],
                   "num_real": gen["num_real"]}
    else:
        gen = reference.reference_metrics(feats, concat(in_order(ref_parts)), ref, fm.ext.fid_layer,
                                          fm.isc_layer, m.pr_k)
        against = {"feature_space": m.feature_space, "real_split": "reference", "num_real": ref.num_images,
                   "reference": str(ref.path), "sfid": gen.get("sfid"), "is_splits": gen["is_splits"]}
    return {**against, "fid": gen["fid"], "is_mean": gen.get("is_mean"), "is_std": gen.get("is_std"),
            "precision": gen["precision"], "recall": gen["recall"], "pr_k": m.pr_k}


@torch.no_grad()
def ar_layer_similarity(params, ar, tok, teacher, rt: Runtime, desc: str) -> dict | None:
    """Linear CKA / CKNNA of every AR block output with teacher patches, teacher-forced on val
    (rank 0: the dict; other ranks: None)."""
    m, cfg = params.metrics, ar.cfg
    grid = tok.grid_size(params.data.resolution)
    if cfg.vocab_size != tok.codebook_size or cfg.grid != grid:
        raise ArtifactError(f"AR (vocab {cfg.vocab_size}, grid {cfg.grid}) does not fit the frozen tokenizer "
                            f"(codebook {tok.codebook_size}, grid {grid} at {params.data.resolution} px)")
    layers = tuple(range(1, cfg.n_layer + 1))
    sample, seen = PatchSample(m.max_patches), 0
    for _, x, labels in my_batches(params, rt, "val", batch_plan(params, "val"), desc,
                                   skip=lambda n: sample.skip(n * grid * grid)):
        with rt.autocast():
            _, q = tok.encode(x)
            out = ar(q.indices.flatten(1), labels, return_layers=layers)
        sample.add(teacher=teacher.features(x, grid), **{f"layer_{l}": out.hidden[l] for l in layers})
        seen += len(x)
    seen, sample = gather_to_main(seen, rt), sample.gather(rt)
    if sample is None:
        return None
    sims = {l: sample.similarity(f"layer_{l}", "teacher", m.cknna_k) for l in layers}
    return {"ar_layers": list(layers), "ar_num_images": sum(seen), "ar_num_patches": len(sample.keys),
            "ar_cka": {str(l): s["cka"] for l, s in sims.items()},
            "ar_cknna": {str(l): s["cknna"] for l, s in sims.items()}}


def _features(fm: FeatureModel, images: np.ndarray, batch_size: int, rt: Runtime) -> list:
    """(batch number, features) of this rank's batches k::world of an in-memory (or mapped) image set."""
    starts = range(0, len(images), batch_size)
    return [(k, fm(images[s:s + batch_size])) for k, s in enumerate(starts) if k % rt.world == rt.rank]
