"""evaluate over processes: 2 gloo processes under torchrun write the bytes 1 process writes; the
feature-level path (gear/metrics/features.py) gives torch-fidelity's calculate_metrics numbers."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch_fidelity
from torch.utils.data import Dataset

from gear.cli import main
from gear.io import ArtifactError
from gear.metrics import patches
from gear.metrics.features import (FeatureModel, RealSet, concat, fid_statistics, generation_metrics,
                                   read_real_cache, write_real_cache)
from gear.metrics.fidelity import make_extractor
from gear.models.demo_teacher import DemoViT
from gear.runtime import Runtime
from gear.metrics import evaluation
from gear.artifacts import read_samples
from gear.npz import save_npz
from gear.teachers import DemoTeacher
from tiny import EVAL_CLI, env, smooth_images, tree_bytes

# Sampling: 16 classes x 2 in batches of 6 (6 batches, the last of 2). Evaluation, 24 a batch: 9 real
# batches (200 of 320 train), 4 val batches (80), 2 sample batches (32): uneven shares.
SAMPLING = ["--set=sample.per_class=2", "--set=sample.batch_size=6"]  # every later stage runs under them too
SAMPLE = ["sample", "--arm", "gear", "--size", "tiny", *EVAL_CLI, *SAMPLING]
ARGS = [SAMPLE] + [["evaluate", *a, *EVAL_CLI, *SAMPLING, "--set=metrics.batch_size=24"]
                   for a in (["real"], ["tokenizer", "--arm", "gear"], ["samples", "--arm", "gear", "--size", "tiny"])]
# One torchrun launch runs the four stages (each launch costs ~15 s of imports on 2 cores): the
# process group is kept across them and closed at the end.
DRIVER = """
import sys
import torch.distributed as dist
from gear.cli import main
from gear.metrics import evaluation
from gear.stages import sample
evaluation.teardown = sample.teardown = lambda rt: None
for args in {args!r}:
    if main(args) != 0:
        sys.exit(1)
dist.destroy_process_group()
"""


def test_two_processes_write_what_one_process_writes(world, tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(world, one)
    shutil.copytree(world, two)
    (tmp_path / "driver.py").write_text(DRIVER.format(args=ARGS))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run([*torchrun, str(tmp_path / "driver.py")], cwd=two, env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for what in ("sample[gear/tiny]", "evaluate real", "evaluate tokenizer", "evaluate samples"):
        assert r.stdout.count(what) == 1  # rank 0 alone reports (and writes)

    monkeypatch.chdir(one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): the same kernels, the same bits
    try:
        assert [main(args) for args in ARGS] == [0, 0, 0, 0]
    finally:
        torch.set_num_threads(threads)
    # Samples: each batch has its own generator (seed, batch number), so 2 ranks draw the images of
    # 1 process, in the same order, and no image twice
    npz = "samples/seed0/gear/tiny/samples.npz"
    assert (two / npz).read_bytes() == (one / npz).read_bytes()
    images, labels = _adm_read(two / npz, "arr_0"), _adm_read(two / npz, "arr_1")
    assert images.dtype == np.uint8 and images.shape == (32, 32, 32, 3)  # NHWC at data.resolution
    assert np.array_equal(labels, np.repeat(np.arange(16), 2))          # sample.per_class per class
    assert len(np.unique(images.reshape(32, -1), axis=0)) == 32
    assert np.array_equal(read_samples(two / "samples/seed0/gear/tiny"), images)
    trees = {1: tree_bytes(one / "eval"), 2: tree_bytes(two / "eval")}
    names = sorted(trees[1])
    assert names == sorted(trees[2])
    assert {"tokenizer/seed0/gear.json", "samples/seed0/gear/tiny.json", "real/summary.json"} <= set(names)
    assert sum(n.startswith("real/") and n.endswith(".pt") for n in names) == 3  # features, logits, FID statistics
    for name in names:  # cache files and JSONs, byte for byte
        assert trees[2][name] == trees[1][name], name


def _adm_read(path, name: str) -> np.ndarray:
    """An array as ADM's evaluator streams it (evaluations/evaluator.py, open_npz_array): the zip
    member, its .npy header, then the raw bytes."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = read(f)
        assert not fortran and not dtype.hasobject
        return np.frombuffer(f.read(), dtype=dtype).reshape(shape)


# --- the feature-level path against torch-fidelity -----------------------------------------------

class _Uint8(Dataset):
    """(N, H, W, 3) uint8 images as torch-fidelity reads a Dataset: (3, H, W) tensors."""

    def __init__(self, x: np.ndarray):
        self.x = torch.from_numpy(x).permute(0, 3, 1, 2)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def _demo_like():
    torch.manual_seed(0)
    vit = DemoViT(16, 4, 32, 1, 2, num_classes=8)
    torch.nn.init.normal_(vit.head.weight, std=0.5)  # confident classes: IS well above 1
    teacher = DemoTeacher(vit, [str(c) for c in range(8)], precision="fp32")

    def fn(x):
        x = x.float() / 127.5 - 1
        return teacher.pooled(x), teacher.logits(x)
    return make_extractor("custom", fn=fn, name="demo-like")


def _two_ranks(fm: FeatureModel, images: np.ndarray, bs: int):
    """Features as 2 ranks extract them (batches k::2) and rank 0 puts them back in batch order."""
    starts = range(0, len(images), bs)
    parts = [[(k, fm(images[s:s + bs])) for k, s in enumerate(starts) if k % 2 == r] for r in (0, 1)]
    return concat(evaluation.in_order(parts))


def test_feature_path_equals_calculate_metrics(tmp_path):
    ext, bs, k, splits = _demo_like(), 8, 3, 5
    real = smooth_images(45, 0)[:, :16, :16]                           # 45 = 5 x 8 + 5: a short last batch
    gen = np.clip(smooth_images(37, 1)[:, :16, :16] + np.random.default_rng(0).normal(0, 20, (37, 16, 16, 3)),
                  0, 255).astype(np.uint8)
    fm = FeatureModel(ext, "cpu", 16)
    assert fm.layers == ["features", "logits"] and fm.isc_layer == "logits"
    ours_real, ours_gen = _two_ranks(fm, real, bs), _two_ranks(fm, gen, bs)

    # torch-fidelity's own run, caching the real set's features and statistics in tf/
    out = torch_fidelity.calculate_metrics(
        input1=_Uint8(gen), input2=_Uint8(real), feature_extractor=ext.name, feature_layer_fid="features",
        feature_layer_prc="features", feature_layer_isc="logits", fid=True, isc=True, prc=True,
        prc_neighborhood=k, isc_splits=splits, batch_size=bs, cuda=False, save_cpu_ram=True, cache=True,
        cache_root=str(tmp_path / "tf"), input2_cache_name="r45", verbose=False, **ext.options)
    direct = RealSet(ours_real["features"], fid_statistics(ours_real["features"]), len(real))
    got = generation_metrics(ours_gen, direct, fm, pr_k=k, isc_splits=splits)
    assert got["fid"] == out[torch_fidelity.KEY_METRIC_FID] > 0
    assert got["is_mean"] == out[torch_fidelity.KEY_METRIC_ISC_MEAN] > 1
    assert got["is_std"] == out[torch_fidelity.KEY_METRIC_ISC_STD]
    assert (got["precision"], got["recall"]) == (out["precision"], out["recall"])
    # the IS splits follow the order: a shuffled gather would give another (valid but different) IS
    perm = torch.randperm(len(gen), generator=torch.Generator().manual_seed(0))
    assert generation_metrics({n: v[perm] for n, v in ours_gen.items()}, direct, fm, k, splits)["is_mean"] != got["is_mean"]

    # the real-set cache: torch-fidelity's files, byte for byte, beside our summary
    info = write_real_cache(tmp_path / "ours", "r45", fm, ours_real, isc_splits=splits)
    ours, tf = tree_bytes(tmp_path / "ours"), tree_bytes(tmp_path / "tf")
    assert sorted(ours) == sorted([*tf, "r45-gear-custom-demo-like-meta.json"]) and len(tf) == 3
    assert all(ours[name] == data for name, data in tf.items())
    assert info["num_real"] == len(real) and info["is_mean"] > 1
    assert generation_metrics(ours_gen, read_real_cache(tmp_path / "ours", "r45", ext), fm, k, splits) == got


def test_patch_sample_merged_over_ranks_equals_one_stream(monkeypatch):
    """3 ranks (the last without batches) each draw the whole key stream, add their batches and
    skip the others'; the merged subset is the single stream's, row for row."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 4, 3, generator=g) for n in (5, 3)]  # images x L=4 patches x D=3
    one = patches.PatchSample(17, seed=7)
    for b in batches:
        one.add(a=b, b=2 * b)
    ranks = [patches.PatchSample(17, seed=7) for _ in range(3)]
    for r, s in enumerate(ranks):
        for k, b in enumerate(batches):
            if k % 3 == r:
                s.add(a=b, b=2 * b)
            else:
                s.skip(len(b) * 4)
    monkeypatch.setattr(patches, "gather_to_main", lambda obj, rt: [(s.keys, s.pos, s.feats) for s in ranks])
    merged = ranks[0].gather(Runtime(torch.device("cpu")))
    assert torch.equal(merged.keys, one.keys) and torch.equal(merged.pos, one.pos) and len(one.keys) == 17
    assert all(torch.equal(merged.feats[n], one.feats[n]) for n in ("a", "b"))


def test_samples_are_memory_mapped(tmp_path):
    """Each rank reads only its rows of samples.npz: a memory map into the uncompressed zip."""
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    save_npz(tmp_path / "samples.npz", images=images, labels=np.arange(7))  # zip64 local headers
    for write in (lambda: None, lambda: np.savez(tmp_path / "samples.npz", labels=np.arange(7), images=images)):
        write()
        got = read_samples(tmp_path)
        assert isinstance(got, np.memmap) and np.array_equal(got, images)
    np.savez_compressed(tmp_path / "samples.npz", images=images)
    assert np.array_equal(read_samples(tmp_path), images)
    for keys in ({"arr_0": images}, {"images": images}):  # ADM's key; `images` in older files
        save_npz(tmp_path / "samples.npz", **keys, labels=np.arange(7))
        assert np.array_equal(read_samples(tmp_path), images)
    np.savez(tmp_path / "samples.npz", pictures=images)
    with pytest.raises(ArtifactError, match="no 'arr_0'"):
        read_samples(tmp_path)
    (tmp_path / "samples.npz").write_text("not a zip")
    with pytest.raises(ArtifactError, match="not an .npz"):
        read_samples(tmp_path)
