"""Fabricated pipeline outputs for the report tests: every input of `gear report`, `gear
t2i-report` and `gear ablation-report`, with clear effects and small seed-to-seed jitter."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from gear import ablations
from gear import paths
from gear import dag
from gear.config import load_params
from gear.io import write_json
from gear.paths import REPORTS_DIR
from gear.report.inputs import CODEBOOK
from gear.report.readers import tsv
from gear.t2i import paths as t2i_paths
from tiny import PARAMS, TINY, stamp


# ---- gear report ------------------------------------------------------------------

def write_tsv(path: Path, name: str, steps, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{name}\n" + "".join(f"{s}\t{v}\n" for s, v in zip(steps, values)))


def write_training_metrics(p, seeds) -> None:
    """dvclive folders of every training stage and seed: GEAR's NTP reaches the baseline's final
    value at step 60 of 100 (smoothed over 5 points), its alignment loss never does."""
    steps = list(range(0, 101, 10))
    for k, seed in enumerate(seeds):
        jitter = 0.01 * k
        curves = {"baseline": {"ntp": [3.0 + jitter] * 11, "align": [-0.5] * 11},
                  "gear": {"ntp": [4.0] * 4 + [2.0 + jitter] * 7, "align": [-0.2 - jitter] * 11}}
        for arm, named in curves.items():
            d = paths.train_ar_metrics_dir(arm, "tiny", seed)
            for name, values in named.items():
                write_tsv(tsv(d, name), name, steps, values)
            write_json(d / "metrics.json", {"step": 100, "ntp": named["ntp"][-1], "align": named["align"][-1],
                                            "val_ntp": 3.5 + jitter, "lr": 1e-3})
        for v in paths.tune_variants(p):
            d = paths.tune_metrics_dir(v, seed)
            for name in CODEBOOK:
                write_tsv(tsv(d, name), name, steps, np.linspace(1, 0.5, 11) + jitter)
            write_json(d / "metrics.json", {"step": 100, "val_psnr": 20.0, "usage": 0.5})
    write_json(paths.metrics_dir("tokenizer_init") / "metrics.json", {"step": 100, "val_psnr": 21.0})
    write_json(paths.metrics_dir("teacher") / "metrics.json", {"step": 10, "val_acc": 0.25})


TOK = {"rfid": 1.72, "rfid_val": 1.25, "val_fid": 0.5, "psnr": 25.0, "ssim": 0.875, "usage": 1.0, "entropy": 6.0,
       "effective_size": math.exp(6.0), "cka_pre": 0.173, "cknna_pre": 0.25, "cka_post": 0.125, "cknna_post": None,
       "feature_space": "demo", "num_images": 80, "real_split": "train", "num_real": 200, "cknna_k": 10,
       "teacher": "demo", "num_patches": 256}


def write_evals(p, seeds) -> None:
    """Eval JSONs with clear effects (seed-to-seed jitter much smaller than them): GEAR's gFID
    lower, entropy lower but far above collapse, PSNR within the margin, tokenizer CKA lower, AR
    CKA higher; STE collapsed."""
    write_json(paths.real_stats_dir() / "summary.json", {"feature_space": "demo", "extractor": "x", "num_real": 200,
                                                          "real_split": "train", "resolution": 32})
    write_json(paths.eval_tokenizer_json("baseline"), TOK)
    write_json(paths.freeze_stats_json("baseline"), {"arm": "baseline"})
    for k, seed in enumerate(seeds):
        j = 0.01 * (k - 1)
        gear = dict(TOK, rfid=1.64 + j, psnr=24.9 + j, entropy=5.5 + j, effective_size=math.exp(5.5 + j),
                    cka_pre=0.107 + j)
        ste = dict(TOK, rfid=59.7 + j, psnr=20.0, entropy=2.0 + j, effective_size=math.exp(2.0 + j), usage=0.05)
        for arm, e in (("gear", gear), ("ste", ste)):
            write_json(paths.eval_tokenizer_json(arm, seed), {"arm": arm, "seed": seed, **e})
            write_json(paths.freeze_stats_json(arm, seed), {"arm": arm})
        for i, arm in enumerate(paths.AR_ARMS):
            write_json(paths.eval_samples_json(arm, "tiny", seed), {
                "fid": 20.16 - 3.2 * i + j * (1 + 2 * i), "is_mean": 5.5, "precision": 0.75, "recall": 0.5, "feature_space": "demo",
                "num_samples": 256, "num_real": 200, "real_split": "train", "ar_layers": [1, 2],
                "ar_cka": {"1": 0.1 + i / 10 + j, "2": 0.2 + i / 10}, "ar_cknna": {"1": None, "2": 0.3},
                "ar_num_patches": 256})
            grid = paths.samples_dir(arm, "tiny", seed) / "grid.png"
            grid.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(grid)


def main_world(tmp_path, monkeypatch, seeds):
    """Every input of `gear report` in tmp_path (the working folder from now on); its params."""
    monkeypatch.chdir(tmp_path)
    p = load_params(PARAMS, [f"study.seeds={seeds}"])
    write_evals(p, seeds)
    write_training_metrics(p, seeds)
    stamp(p, *dag.report_deps(p))  # the records the stages these files stand in for would write
    return p


# ---- gear t2i-report ------------------------------------------------------------------

ACC = {"shape": 0.5, "colour": 0.6, "position": 0.7, "all": 0.3}


def write_t2i(p, fdd_delta) -> None:
    """Every input of the report. fdd_delta[k]: GEAR's FDD - the baseline's at seed index k (both
    CFG settings, every step); GEAR's NTP and REPA curves reach the baseline's final value first."""
    cfg = p.t2i.sample.cfg_scale
    write_json(t2i_paths.JUDGE_DIR / "config.json", {"available": True, "val_accuracy": {**ACC, "all": 0.9}})
    steps = list(range(0, 101, 10))
    for k, seed in enumerate(p.study.seeds):
        j = 0.1 * k  # seed-to-seed jitter of both arms
        for i, arm in enumerate(t2i_paths.ARMS):
            snaps = [{"step": step, "cfg_scale": c, "num_samples": 12,
                      "fdd": 100.0 - 5 * t - 20 * (c > 1) + j + i * fdd_delta[k], "precision": 0.5 + 0.01 * i + j / 10,
                      "recall": 0.4 + 0.02 * i + j / 20, "prompt_accuracy": {a: v + 0.1 * i + j / 10 for a, v in ACC.items()}}
                     for t, step in enumerate(p.t2i.ar.eval_steps) for c in (1.0, cfg)]
            write_json(t2i_paths.eval_json(arm, seed), {
                "arm": arm, "seed": seed, "feature_space": "demo", "num_real": 32, "prompts": 6, "per_prompt": 2,
                "text_encoder": "demo", "ar_size": "custom", "judge": {"available": True, "val_accuracy": ACC},
                "snapshots": snaps})
            d = t2i_paths.train_metrics_dir(arm, seed)
            curves = {"ntp": [3.0 + j] * 11 if arm == "baseline" else [4.0] * 4 + [2.0 + j] * 7,
                      "align": [-0.5] * 11 if arm == "baseline" else [-0.2] * 3 + [-0.8 - j] * 8,
                      "val_ntp": [3.5 - 0.01 * n - 0.3 * i for n in range(11)]}
            for name, values in curves.items():
                write_tsv(tsv(d, name), name, steps, values)
            write_json(d / "metrics.json", {"step": 100, "ntp": curves["ntp"][-1]})
            s = t2i_paths.samples_dir(arm, seed)
            s.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200 * i, 0, 0)).save(s / "grid.png")
            write_json(s / "config.json", {"prompts": ["a red circle at the top", "a blue square on the left"]})


def t2i_world(tmp_path, monkeypatch, seeds, fdd_delta, *extra):
    """Every input of `gear t2i-report` in tmp_path, a reports/ holding a main report; its params."""
    monkeypatch.chdir(tmp_path)
    p = load_params(PARAMS, [*TINY, f"study.seeds={seeds}", *extra])
    write_t2i(p, fdd_delta)
    stamp(p, *dag.t2i_report_deps(p))
    REPORTS_DIR.mkdir()
    (REPORTS_DIR / "index.md").write_text("the main report\n")
    return p


# ---- gear ablation-report ------------------------------------------------------------------

def write_ablation_row(params, row, seed, fid, rfid, ntp, root: Path):
    files = ablations.outputs(params, row, seed)
    data = {"samples": {"fid": fid}, "tokenizer": {"rfid": rfid, "effective_size": 20.0 + seed, "entropy": 3.0},
            "train_ar": {"ntp": ntp}}
    for kind, path in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(data[kind]))


# ---- gear scaling-report ------------------------------------------------------------------

# patch CKA (pre) of each guide rung's tokenizer, per size: the tiny rung is the main GEAR arm's
# (0.107, below the baseline's 0.173); nano's is above it, micro's within the seeds' jitter of it
LADDER_CKA = {"nano": 0.223, "micro": 0.15, "mini": 0.09}


# study.reseed_upstream: per seed (beyond the main DAG's compute.seed 0), GEAR - baseline PSNR of the
# row upstream-<seed> (the main world's spread 0.01 per seed: variance 1e-4 over seeds 0, 1, 2)
UPSTREAM_PSNR_EFFECT = {1: -0.1, 2: 0.1}


def scaling_world(tmp_path, monkeypatch, seeds, reseed: bool = False):
    """Every input of `gear scaling-report`: the main world with the control arm `continue` (its
    tokenizer trained more, not aligned: GEAR's entropy, CKA and gFID below it), the guide
    ladder's rungs (nano / micro / tiny / mini) and lambda 2 at the largest guide; with `reseed`,
    each seed's upstream row (its own baseline and GEAR tokenizers, UPSTREAM_PSNR_EFFECT); its params."""
    monkeypatch.chdir(tmp_path)
    p = load_params(PARAMS, [f"study.seeds={seeds}", "tune.ablations=[ste, continue]",
                             f"study.reseed_upstream={str(reseed).lower()}"])
    write_evals(p, seeds)
    write_training_metrics(p, seeds)
    from gear import scaling

    steps = list(range(0, 101, 10))
    for k, seed in enumerate(seeds):
        j = 0.01 * (k - 1)
        write_json(paths.eval_tokenizer_json("continue", seed),
                   dict(TOK, arm="continue", seed=seed, psnr=25.2 + j, entropy=6.02 + j, cka_pre=0.19 + j))
        write_json(paths.freeze_stats_json("continue", seed), {"arm": "continue"})
        write_json(paths.eval_samples_json("continue", "tiny", seed), {
            "fid": 19.0 + j, "is_mean": 5.0, "precision": 0.7, "recall": 0.5, "feature_space": "demo",
            "num_samples": 256, "num_real": 200, "real_split": "train", "ar_layers": [1, 2],
            "ar_cka": {"1": 0.05 + j, "2": 0.15}, "ar_cknna": {"1": None, "2": 0.3}, "ar_num_patches": 256})
        d = paths.train_ar_metrics_dir("continue", "tiny", seed)
        write_tsv(tsv(d, "ntp"), "ntp", steps, [3.1 + j] * 11)
        write_tsv(tsv(d, "align"), "align", steps, [-0.4] * 11)
        write_json(d / "metrics.json", {"step": 100, "ntp": 3.1, "align": -0.4, "val_ntp": 3.6, "lr": 1e-3})
        rungs = {row.name: (row, LADDER_CKA.get(size)) for size, row in scaling.ladder(p)}
        rungs.update({row.name: (row, 0.06) for _, row in scaling.lambdas(p) if row.name not in rungs})  # lambda 2
        for row, cka in rungs.values():
            if row.default:
                continue
            path = scaling.row_tokenizer_json(p, row, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, dict(TOK, arm="gear", seed=seed, psnr=24.8 + j, entropy=5.4 + j, cka_pre=cka + j))
    for seed, row in scaling.upstream(p):
        if row.default:  # the main DAG's own upstream: its files are written above
            continue
        files, base = scaling.upstream_tokenizer_jsons(p, seed), 25.0 + seed / 10  # every warm-up its own level
        for arm, psnr in (("baseline", base), ("gear", base + UPSTREAM_PSNR_EFFECT[seed])):
            files[arm].parent.mkdir(parents=True, exist_ok=True)
            write_json(files[arm], dict(TOK, arm=arm, seed=seed if arm == "gear" else None, psnr=psnr,
                                        entropy=6.0 - (arm == "gear") * 0.5, cka_pre=0.17 - (arm == "gear") * 0.06))
    stamp(p, *scaling.report_deps(p))  # the records the stages these files stand in for would write
    return p
