"""Metrics library: similarity, codebook, reconstruction and generation metrics (offline, CPU)."""
import dataclasses
import itertools
import math
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

from gear.metrics.codebook import CodebookAccumulator, soft_assignment_stats
from gear.metrics.features import (FeatureModel, RealSet, fid_statistics, generation_metrics, read_real_cache,
                                   write_real_cache)
from gear.metrics.fidelity import make_extractor, meta_path
from gear.metrics.recon import PSNR_MAX, psnr, ssim
from gear.metrics.similarity import cknna, linear_cka

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- CKA / CKNNA -------------------------------------------------------------------------------

def test_cka_self_and_invariances():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 12, generator=g, dtype=torch.float64)
    Y = torch.randn(64, 9, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    base = linear_cka(X, Y)
    assert 0 < base < 1
    assert linear_cka(X @ Q, Y) == pytest.approx(base, abs=1e-12)         # orthogonal
    assert linear_cka(7.5 * X, 0.1 * Y) == pytest.approx(base, abs=1e-12)  # isotropic scale
    assert linear_cka(X + 3.0, Y) == pytest.approx(base, abs=1e-12)        # translation (centred)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), abs=1e-12)
    assert math.isnan(linear_cka(torch.ones(8, 3), X[:8]))               # no variance
    assert cknna(X, X, k=5) == pytest.approx(1.0, abs=1e-12)
    assert cknna(X @ Q * 4.0, Y, k=5) == pytest.approx(cknna(X, Y, k=5), abs=1e-12)


def test_cka_hand_computed():
    # 1-D features: linear CKA is the squared Pearson correlation, here 27/28.
    X, Y = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [2.0], [4.0]])
    assert linear_cka(X, Y) == pytest.approx(27 / 28, abs=1e-12)
    # Gram form with an explicit centring matrix: tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)).
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    H = torch.eye(7, dtype=torch.float64) - 1 / 7
    K, L = A @ A.T, B @ B.T
    hs = lambda P, R: torch.trace(P @ H @ R @ H).item()  # noqa: E731
    assert linear_cka(A, B) == pytest.approx(hs(K, L) / math.sqrt(hs(K, K) * hs(L, L)), abs=1e-12)


def _hsic_eq5_loops(A, B):
    """Song et al. 2012 eq. 5 written with explicit loops over entries (A, B lists of lists)."""
    n = len(A)
    A = [[0.0 if i == j else A[i][j] for j in range(n)] for i in range(n)]
    B = [[0.0 if i == j else B[i][j] for j in range(n)] for i in range(n)]
    tr = sum(A[i][j] * B[j][i] for i in range(n) for j in range(n))
    sa, sb = sum(map(sum, A)), sum(map(sum, B))
    cross = sum(A[i][l] * B[l][j] for i in range(n) for l in range(n) for j in range(n))
    return (tr + sa * sb / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def _hsic_u_statistic(K, L):
    """Unbiased HSIC as the U-statistic over distinct index 4-tuples (symmetric kernels)."""
    n = len(K)
    tot = sum(K[i][j] * L[i][j] + K[i][j] * L[q][r] - 2 * K[i][j] * L[i][q]
              for i, j, q, r in itertools.permutations(range(n), 4))
    return tot / (n * (n - 1) * (n - 2) * (n - 3))


def _cosine_gram(X):
    rows = [[float(v) for v in x] for x in X]
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]
    return [[sum(a * b for a, b in zip(r, s)) for s in rows] for r in rows]


def test_cknna_hand_computed():
    g = torch.Generator().manual_seed(2)
    X, Y = torch.randn(7, 3, generator=g), torch.randn(7, 4, generator=g)
    X[:, 0] += 2 * Y[:, 0]  # some shared structure
    K, L, n, k = _cosine_gram(X), _cosine_gram(Y), 7, 2
    knn = lambda G, i: set(sorted((j for j in range(n) if j != i), key=lambda j: -G[i][j])[:k])  # noqa: E731
    nk, nl = [knn(K, i) for i in range(n)], [knn(L, i) for i in range(n)]
    mask = lambda G, keep: [[G[i][j] if keep(i, j) else 0.0 for j in range(n)] for i in range(n)]  # noqa: E731
    kl = _hsic_eq5_loops(mask(K, lambda i, j: j in nk[i] and j in nl[i]), mask(L, lambda i, j: j in nk[i] and j in nl[i]))
    kk = _hsic_eq5_loops(mask(K, lambda i, j: j in nk[i]), mask(K, lambda i, j: j in nk[i]))
    ll = _hsic_eq5_loops(mask(L, lambda i, j: j in nl[i]), mask(L, lambda i, j: j in nl[i]))
    assert cknna(X, Y, k=k) == pytest.approx(kl / math.sqrt(kk * ll), abs=1e-10)
    # k = N - 1 keeps every pair: CKNNA is then the unbiased CKA, checked with the U-statistic.
    u = _hsic_u_statistic
    assert cknna(X[:6], Y[:6], k=5) == pytest.approx(
        u(K[:6], L[:6]) / math.sqrt(u(K[:6], K[:6]) * u(L[:6], L[:6])), abs=1e-10)


def test_similarity_bad_input():
    with pytest.raises(ValueError, match="same N"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="k < N"):
        cknna(torch.randn(5, 2), torch.randn(5, 2), k=5)


# --- codebook ----------------------------------------------------------------------------------

def codebook_stats(indices: torch.Tensor, K: int, histogram: bool = False) -> dict:
    acc = CodebookAccumulator(K)
    acc.update(indices)
    return acc.result(histogram)


def test_codebook_stats_hand_made():
    K = 16
    uni = codebook_stats(torch.arange(K).repeat(3).view(3, 4, 4), K)
    assert uni["usage"] == 1.0 and uni["num_tokens"] == 48
    assert uni["entropy"] == pytest.approx(math.log(K)) and uni["effective_size"] == pytest.approx(K)
    one = codebook_stats(torch.full((5, 7), 3), K, histogram=True)
    assert one["usage"] == 1 / K and one["entropy"] == 0.0 and one["effective_size"] == 1.0
    assert one["histogram"][3] == 35 and sum(one["histogram"]) == 35
    # counts (2, 1, 1, 0): p = (1/2, 1/4, 1/4), H = 1.5 ln 2, effective size 2^1.5
    s = codebook_stats(torch.tensor([0, 0, 1, 2]), 4)
    assert s["usage"] == 0.75 and s["entropy"] == pytest.approx(1.5 * math.log(2))
    assert s["effective_size"] == pytest.approx(2 ** 1.5)
    acc = CodebookAccumulator(4)
    acc.update(torch.tensor([0, 0]))
    acc.update(torch.tensor([[1], [2]]))
    assert acc.result() == s
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        codebook_stats(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="integer"):
        acc.update(torch.tensor([0.5]))


def test_soft_assignment_stats():
    K = 200
    flat = soft_assignment_stats(torch.zeros(2, 3, K), tau=0.1)
    assert flat["soft_entropy"] == pytest.approx(math.log(K)) and flat["soft_entropy_tau"] == pytest.approx(math.log(K))
    assert flat["top1_mass"] == pytest.approx(1 / K) and flat["top10_mass"] == pytest.approx(10 / K)
    assert flat["top100_mass"] == pytest.approx(100 / K)
    # K = 3, d = (0, 1, 2): softmax(-d) and softmax(-d / 0.5) by hand
    d = torch.tensor([[0.0, 1.0, 2.0]])
    p = [math.exp(-v) / sum(math.exp(-u) for u in (0, 1, 2)) for v in (0, 1, 2)]
    q = [math.exp(-2 * v) / sum(math.exp(-2 * u) for u in (0, 1, 2)) for v in (0, 1, 2)]
    s = soft_assignment_stats(d, tau=0.5)
    assert s["soft_entropy"] == pytest.approx(-sum(x * math.log(x) for x in p), abs=1e-6)
    assert s["soft_entropy_tau"] == pytest.approx(-sum(x * math.log(x) for x in q), abs=1e-6)
    assert s["top1_mass"] == pytest.approx(q[0], abs=1e-6)
    assert s["top10_mass"] == pytest.approx(1.0, abs=1e-6) and s["top100_mass"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="tau"):
        soft_assignment_stats(d, tau=0.0)


# --- reconstruction ----------------------------------------------------------------------------

def test_psnr_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert (psnr(a, a) == PSNR_MAX).all() and ssim(a, a) == pytest.approx(1.0)
    b = (a.astype(np.int16) + 10).clip(0, 255).astype(np.uint8)
    mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    # [-1, 1] floats in NCHW give the same values as uint8 NHWC
    fa, fb = (torch.from_numpy(v).permute(0, 3, 1, 2).double() / 127.5 - 1 for v in (a, b))
    assert psnr(fa, fb) == pytest.approx(psnr(a, b)) and ssim(fa, fb) == pytest.approx(ssim(a, b))
    assert (ssim(a, b) < 1).all()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        psnr(fa * 255, fb * 255)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:2])


# --- generation metrics (custom extractor: a fixed random conv net) ----------------------------

def _conv_fn(counter=None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()

    def fn(x):
        if counter is not None:
            counter.append(len(x))
        return 100 * net(x.float() / 127.5 - 1), None
    return fn


def _smooth_images(n, seed, res=16):
    g = torch.Generator().manual_seed(seed)
    base = nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=res, mode="bilinear")
    return (base * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # NHWC


def _noised(x, sigma, seed=1):
    return np.clip(x + np.random.default_rng(seed).normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


def _real_set(fm, images, batch_size=64):
    f = fm.extract(images, batch_size)[fm.ext.fid_layer]
    return RealSet(f, fid_statistics(f), len(f))


def generation(samples, real, ext, pr_k=3, isc_splits=10, batch_size=64):
    """The evaluation's path on in-memory images: FeatureModel features, then generation_metrics."""
    fm = FeatureModel(ext, "cpu", tuple(real.shape[1:3]))  # real: NHWC
    return generation_metrics(fm.extract(samples, batch_size), _real_set(fm, real, batch_size), fm, pr_k, isc_splits)


def test_fid_identical_zero_and_monotonic_in_noise():
    ext = make_extractor("custom", fn=_conv_fn(), name="randconv")
    real = _smooth_images(256, 0)
    same = generation(real, real, ext)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    assert "is_mean" not in same and same["num_samples"] == same["num_real"] == 256
    fids = [generation(_noised(real, s), real, ext)["fid"] for s in (4, 16, 48)]
    assert 0 < fids[0] < fids[1] < fids[2]
    # NCHW torch input gives the same numbers as NHWC numpy
    nchw = torch.from_numpy(_noised(real, 16)).permute(0, 3, 1, 2)
    assert generation(nchw, real, ext)["fid"] == pytest.approx(fids[1], rel=1e-6)


def test_precision_recall_mode_drop():
    ext = make_extractor("custom", fn=_conv_fn(), name="randconv")
    modes = _smooth_images(4, 3)                                        # 4 distinct patterns
    draw = lambda seed: np.concatenate(  # noqa: E731
        [_noised(np.repeat(modes[i:i + 1], 64, 0), 6, seed=seed + i) for i in range(4)])
    real, full = draw(0), draw(20)                                      # all modes, fresh draws
    dropped = _noised(np.repeat(modes[:1], 256, 0), 6, seed=10)         # only the first mode
    rf, rd = generation(full, real, ext), generation(dropped, real, ext)
    assert rd["recall"] < 0.3 < 0.7 < rf["recall"]
    assert rd["precision"] > rf["precision"] - 0.1                     # dropping modes keeps precision
    subset = generation(real[:64], real, ext)           # the real first mode itself
    assert subset["precision"] == 1.0 and subset["recall"] == pytest.approx(0.25, abs=0.02)


def test_inception_score_confident_vs_uniform(tmp_path):
    # classifier: class = mean-intensity bin (5 classes), confidence = pixel std of the image
    def fn(x):
        x = x.float().flatten(1)
        onehot = nn.functional.one_hot((x.mean(1) / 51.2).long().clamp(max=4), 5).float()
        return x[:, :8], x.std(1, keepdim=True) * onehot
    ext = make_extractor("custom", fn=fn, name="binclass")
    rng = np.random.default_rng(0)
    levels = np.repeat(np.arange(5) * 51.2 + 25.6, 40)                  # 40 images per class
    textured = np.clip(levels[:, None, None, None] + rng.normal(0, 8, (200, 8, 8, 3)), 0, 255).astype(np.uint8)
    flat = np.repeat(levels[:, None, None, None], 8 * 8 * 3, 1).reshape(200, 8, 8, 3).astype(np.uint8)
    conf = generation(textured, textured, ext, isc_splits=2)
    fm = FeatureModel(ext, "cpu", 8)
    assert write_real_cache(tmp_path, "tex", fm, fm.extract(textured, 64),
                            isc_splits=2)["is_mean"] == pytest.approx(conf["is_mean"])
    unif = generation(flat, textured, ext, isc_splits=2)
    assert unif["is_mean"] == pytest.approx(1.0, abs=1e-9)            # softmax(0) = uniform
    assert conf["is_mean"] > 4.5 and conf["is_mean"] <= 5 + 1e-9         # near all 5 classes


def test_real_statistics_are_cached(tmp_path):
    calls = []
    ext = make_extractor("custom", fn=_conv_fn(calls), name="randconv")
    real, samples = _smooth_images(64, 0), _smooth_images(32, 5)
    first = generation(samples, real, ext)
    fm = FeatureModel(ext, "cpu", 16)
    calls.clear()
    info = write_real_cache(tmp_path, "real64", fm, fm.extract(real, 64))
    assert sum(calls) == 64 and info["num_real"] == 64 and "is_mean" not in info
    calls.clear()
    cached = read_real_cache(tmp_path, "real64", ext)
    assert generation_metrics(fm.extract(samples, 64), cached, fm) == first
    assert sum(calls) == 32                                             # real features from disk


def test_generation_bad_input():
    ext = make_extractor("custom", fn=_conv_fn(), name="randconv")
    x = _smooth_images(8, 0)
    with pytest.raises(ValueError, match="uint8"):
        generation(x.astype(np.float32), x, ext)
    with pytest.raises(ValueError, match="more than 3"):
        generation(x[:3], x, ext)
    with pytest.raises(ValueError, match="together"):
        meta_path("somewhere", None, ext)
    with pytest.raises(ValueError, match="name="):
        make_extractor("custom", fn=_conv_fn())
    with pytest.raises(ValueError, match="unknown feature space"):
        make_extractor("vgg")
    bad = make_extractor("custom", fn=lambda im: (im.float().mean((2, 3, 1)), None), name="bad1d")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        generation(x, x, bad)


# --- hub feature spaces: offline errors, and local weight files (random weights) ----------------

def test_inception_without_weights_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty torch hub cache
    t = time.time()
    with pytest.raises(RuntimeError, match="weights_path"):
        make_extractor("inception")
    assert time.time() - t < 5
    with pytest.raises(ValueError, match="not found"):
        make_extractor("inception", weights_path=str(tmp_path / "missing.pth"))


def test_inception_local_weights_file(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    # A randomly initialised network saved in torch-fidelity's layout stands in for the real file.
    torch.save({}, tmp_path / "empty.pt")
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(tmp_path / "empty.pt"))
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    ext = make_extractor("inception", weights_path=str(tmp_path / "inception.pth"))
    assert ext.fid_layer == "2048" and ext.isc_layer == "logits_unbiased"
    # FID on the 64-d pool layer here: the 2048-d eigendecomposition alone takes ~10 s on 2 cores
    ext = dataclasses.replace(ext, fid_layer="64")
    x = _smooth_images(2, 0)  # the CPU Inception costs ~0.3 s an image: pr_k=1 allows N=2
    r = generation(x, x, ext, pr_k=1, isc_splits=2)
    assert r["feature_space"] == "inception" and abs(r["fid"]) < 1e-6
    assert r["precision"] == r["recall"] == 1.0 and r["is_mean"] >= 1.0 - 1e-9


def test_dinov2_local_weights_file_and_offline_error(tmp_path):
    import timm
    # random ViT-S/14 weights in the hub's 518 px layout (the extractor resamples the pos-embed);
    # shapes from a meta-device model, which skips the slow weight init
    with torch.device("meta"):
        shapes = timm.create_model("vit_small_patch14_dinov2", pretrained=False).state_dict()
    g = torch.Generator().manual_seed(0)
    torch.save({k: 0.02 * torch.randn(v.shape, generator=g) for k, v in shapes.items()}, tmp_path / "d.pth")
    x, y = _smooth_images(2, 0), _smooth_images(2, 1)
    ext = make_extractor("dinov2", weights_path=str(tmp_path / "d.pth"), arch="vit_small_patch14_dinov2")
    r = generation(x, y, ext, pr_k=1)
    assert r["feature_space"] == "dinov2" and r["fid"] > 0 and "is_mean" not in r
    hub = make_extractor("dinov2", arch="vit_small_patch14_dinov2")    # no file, HF_HUB_OFFLINE=1
    with pytest.raises(RuntimeError, match="weights_path"):
        generation(x, y, hub, pr_k=1)
