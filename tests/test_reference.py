"""metrics.reference: ADM's reference batch (FID to its mu / sigma, precision / recall against its
arr_0, IS over consecutive splits, sFID features), and bad reference files refused in one line by
`gear sample` and `gear evaluate samples` before any work."""
from __future__ import annotations

import time
import zipfile

import numpy as np
import pytest
import torch
from scipy import linalg

from gear.metrics import evaluation, reference
from gear.metrics.features import SPATIAL, FeatureModel
from gear.metrics.fidelity import make_extractor
from gear.metrics.reference import Reference, inception_score, read_reference, reference_metrics
from gear.cli import main
from gear import paths
from gear.io import read_json
from gear.artifacts import read_samples
from tiny import EVAL_CLI, eval_params, gear_cli, stamp_eval_world


@pytest.fixture(scope="module")
def base(world):  # what `ws` (tests/conftest.py) copies: the evaluation world
    return world


def _spd(d: int, rng) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


def _fid_formula(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with scipy's matrix square root (as ADM)."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features_fn(x: torch.Tensor):
    """A tiny, fixed feature space on uint8 (N, 3, H, W): channel means and stds (6-d); logits: means."""
    f = x.float() / 255
    return torch.cat([f.mean((2, 3)), f.std((2, 3))], 1), 8 * f.mean((2, 3))


def _images(n: int, seed: int, res: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(base + rng.normal(0, 30, (n, res, res, 3)), 0, 255).astype(np.uint8)


def _knn_pr(gen: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    """Precision / recall of Kynkaanniemi et al. by hand: radius = distance to the k-th nearest
    other point of the same set; a point is covered when inside some ball of the other set."""
    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return np.sort(d, 1)[:, k]  # column 0 is the point itself
    d = np.sqrt(((gen[:, None] - real[None]) ** 2).sum(-1))  # (gen, real)
    precision = (d <= radii(real)[None]).any(1).mean()
    recall = (d.T <= radii(gen)[None]).any(1).mean()
    return float(precision), float(recall)


def test_fid_precision_recall_against_a_synthetic_reference():
    rng = np.random.default_rng(0)
    ext = make_extractor("custom", fn=_features_fn, name="meanstd")
    fm = FeatureModel(ext, "cpu", 8)
    samples, arr_0 = _images(40, 1), _images(30, 2)
    mu, sigma = rng.normal(size=6), _spd(6, rng)
    ref = Reference(path=None, mu=mu, sigma=sigma, num_images=len(arr_0))
    gen, real = fm.extract(samples, 16), fm.extract(arr_0, 16)
    got = reference_metrics(gen, real, ref, "features", "logits", pr_k=3, split_size=10)

    g = _features_fn(torch.from_numpy(samples).permute(0, 3, 1, 2))[0].double().numpy()
    assert got["fid"] == pytest.approx(_fid_formula(g.mean(0), np.cov(g, rowvar=False), mu, sigma), rel=1e-6)
    r = _features_fn(torch.from_numpy(arr_0).permute(0, 3, 1, 2))[0].double().numpy()
    precision, recall = _knn_pr(g, r, 3)
    assert (got["precision"], got["recall"]) == pytest.approx((precision, recall), abs=1e-6)  # float32 shares
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1  # a test that can tell them apart
    assert got["is_splits"] == 4 and "sfid" not in got                  # 40 samples, splits of 10


def test_inception_score_ten_splits():
    # Near-one-hot predictions: split i holds 10 samples spread evenly over m_i classes, so its
    # exp(KL) is m_i (p(y|x) one-hot, p(y) uniform on m_i classes) and the IS is the mean of m_i.
    m = [1, 2, 5, 10, 1, 2, 5, 10, 5, 2]
    classes = np.concatenate([np.arange(10) % mi + 10 * i for i, mi in enumerate(m)])
    logits = 60.0 * torch.nn.functional.one_hot(torch.from_numpy(classes), 100).double()
    out = inception_score(logits, split_size=10)
    assert out["is_splits"] == 10
    assert out["is_mean"] == pytest.approx(np.mean(m), rel=1e-9) and out["is_std"] == pytest.approx(np.std(m), rel=1e-9)
    # consecutive splits, unshuffled (ADM): the same predictions as one split score otherwise
    assert inception_score(logits, split_size=100)["is_splits"] == 1
    assert inception_score(logits, split_size=100)["is_mean"] != pytest.approx(np.mean(m))
    # the general formula, term by term, on soft predictions (last split shorter: 25 = 10 + 10 + 5)
    lg = torch.randn(25, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scores = []
    for s in range(0, 25, 10):
        p = torch.softmax(lg[s:s + 10], 1).numpy()
        py = p.mean(0)
        scores.append(np.exp(np.mean([sum(pi[c] * np.log(pi[c] / py[c]) for c in range(7)) for pi in p])))
    assert inception_score(lg, split_size=10)["is_mean"] == pytest.approx(np.mean(scores), rel=1e-12)


def test_spatial_features_are_adm_mixed_6_conv(tmp_path, monkeypatch):
    """sFID features: Mixed_6d's 1x1 branch, first 7 channels, flattened (H, W, C) as TF's NHWC."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    torch.save({}, tmp_path / "empty.pt")  # random weights in torch-fidelity's layout (as test_metrics)
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(tmp_path / "empty.pt"))
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    fm = FeatureModel(make_extractor("inception", weights_path=str(tmp_path / "inception.pth")), "cpu", 16,
                      spatial=True)
    seen = []
    fm.module.Mixed_6d.branch1x1.register_forward_hook(lambda mod, i, out: seen.append(out))
    feats = fm(_images(2, 0, res=16))
    assert feats[SPATIAL].shape == (2, reference.SPATIAL_DIM) and feats["2048"].shape == (2, 2048)
    (out,) = seen  # (2, 192, 17, 17)
    n, c, h, w = 1, 5, 3, 11
    assert feats[SPATIAL][n, (h * 17 + w) * 7 + c] == out[n, c, h, w]
    with pytest.raises(ValueError, match="inception"):
        FeatureModel(make_extractor("custom", fn=_features_fn, name="meanstd"), "cpu", 8, spatial=True)


# --- reference files: the check, and the stages that run it first ----------------------------------

RES = 16  # tiny.py's data.resolution


def _write_ref(path, dim=2048, res=RES, n=5, **extra):
    arrays = {"mu": np.zeros(dim, np.float32), "sigma": np.eye(dim, dtype=np.float32),
              "arr_0": np.zeros((n, res, res, 3), np.uint8), **extra}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_read_reference(tmp_path):
    ref = read_reference(_write_ref(tmp_path / "ref.npz", dim=4, mu_s=np.ones(2023), sigma_s=np.eye(2023)), RES, dim=4)
    assert ref.num_images == 5 and ref.mu.dtype == np.float64 and ref.sigma.shape == (4, 4)
    assert ref.mu_s.shape == (2023,) and ref.images().shape == (5, RES, RES, 3)
    assert isinstance(ref.images(), np.memmap)  # np.savez stores: each rank maps the rows it reads
    assert read_reference(_write_ref(tmp_path / "nos.npz", dim=4), RES, dim=4).mu_s is None


BAD = {  # name: (writer, the one-line message's fragment)
    "missing file": (lambda p: p.with_name("absent.npz"), "not found"),
    "not a zip": (lambda p: (p.write_text("mu sigma"), p)[1], "not an .npz (zip) file"),
    "no mu/sigma": (lambda p: (np.savez(p, arr_0=np.zeros((5, RES, RES, 3), np.uint8)), p)[1], "holds no mu / sigma"),
    "other dimension": (lambda p: _write_ref(p, dim=64), "dimension (64,) / (64, 64); the feature extractor gives 2048"),
    "other resolution": (lambda p: _write_ref(p, res=32), "arr_0 images are 32x32, the samples 16x16"),
    "float images": (lambda p: _write_ref(p, arr_0=np.zeros((5, RES, RES, 3), np.float32)), "uint8 images"),
    "pickle inside": (lambda p: _write_ref(p, meta=np.array([{"x": 1}], dtype=object)), "object array (a pickle)"),
    "too few images": (lambda p: _write_ref(p, n=3), "holds 3 images"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_reference_refused_in_one_line_before_work(case, tmp_path, monkeypatch, capsys):
    write, fragment = BAD[case]
    path = write(tmp_path / "ref.npz")
    monkeypatch.chdir(tmp_path)  # an empty folder: no shards, AR or samples (the check comes first)
    for stage in (["sample", "--arm", "gear", "--size", "custom"],
                  ["evaluate", "samples", "--arm", "gear", "--size", "custom"]):
        t = time.time()
        assert gear_cli(stage, "metrics.feature_space=inception", f"metrics.reference={path}") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "metrics.reference" in err and fragment in err, err
        assert time.time() - t < 5
    assert not any((tmp_path / d).exists() for d in ("samples", "eval", "models", "data"))  # nothing written


def test_reference_needs_inception_and_a_good_file_passes(tmp_path, monkeypatch, capsys):
    path = _write_ref(tmp_path / "ref.npz")
    monkeypatch.chdir(tmp_path)
    assert gear_cli(["sample", "--arm", "gear", "--size", "custom"], f"metrics.reference={path}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs metrics.feature_space inception, not demo" in err
    # a good file passes the check: the stage then stops at its first missing input, the AR
    assert gear_cli(["sample", "--arm", "gear", "--size", "custom"], "metrics.feature_space=inception",
                    f"metrics.reference={path}") == 2
    err = capsys.readouterr().err
    assert "metrics.reference" not in err and "models/ar" in err, err


def test_reference_check_reads_no_image(tmp_path):
    """The check reads headers and the statistics, never arr_0: here arr_0 claims 10k images but
    holds only its header, so reading any image would fail."""
    path = _write_ref(tmp_path / "ref.npz", dim=4)
    with zipfile.ZipFile(path, "a") as zf:
        names = zf.namelist()
    with zipfile.ZipFile(path) as zf:
        kept = {n: zf.read(n) for n in names if n != "arr_0.npy"}
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in kept.items():
            zf.writestr(n, data)
        with zf.open("arr_0.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (10000, RES, RES, 3)})
    ref = read_reference(path, RES, dim=4)
    assert ref.num_images == 10000
    with pytest.raises(ValueError):
        ref.images()  # the data is not there: np.memmap refuses a file too short


def test_evaluate_samples_against_a_reference(ws, monkeypatch):
    """The stage's wiring: samples and arr_0 through the feature model, scored against the file;
    eval/real is not read (this world has none). A 6-d feature space stands in for Inception."""
    ext = make_extractor("custom", fn=_features_fn, name="meanstd")
    monkeypatch.setattr(reference, "POOL_DIM", 6)
    monkeypatch.setattr(evaluation, "feature_extractor", lambda params, device: ext)  # the samples' feature model
    rng = np.random.default_rng(0)
    ref = Reference(path=ws / "ref.npz", mu=rng.normal(size=6), sigma=_spd(6, rng), num_images=24)
    arr_0 = _images(24, 3, res=32)
    np.savez(ref.path, mu=ref.mu, sigma=ref.sigma, arr_0=arr_0)
    over = ["metrics.batch_size=10", "metrics.feature_space=inception", f"metrics.reference={ref.path}"]
    stamp_eval_world(eval_params(*over))  # the teacher reads metrics.feature_space: its record under these params
    args = ["evaluate", "samples", "--arm", "gear", "--size", "tiny", *EVAL_CLI, *[f"--set={o}" for o in over]]
    assert not paths.real_stats_dir().exists() and main(args) == 0
    got = read_json(paths.eval_samples_json("gear", "tiny", 0))
    fm = FeatureModel(ext, "cpu", 32)
    want = reference_metrics(fm.extract(read_samples(paths.samples_dir("gear", "tiny", 0)), 10), fm.extract(arr_0, 10),
                             ref, "features", "logits", pr_k=3)
    assert {k: got[k] for k in ("fid", "precision", "recall", "is_mean", "is_std", "is_splits")} == \
        pytest.approx({k: want[k] for k in ("fid", "precision", "recall", "is_mean", "is_std", "is_splits")}, rel=1e-9)
    assert (got["real_split"], got["num_real"], got["num_samples"], got["reference"]) == ("reference", 24, 32, str(ref.path))
    assert got["sfid"] is None and got["fid"] > 0
