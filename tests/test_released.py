"""The `released` target at tiny scale: a checkpoint in each public layout (tests/public_layouts.py)
is measured by its stage through the CLI, the report puts each number beside the published one
and marks the entries left null as not downloaded; bad entries stop in one line; the DVC file is
the generated one and Snakemake lists the jobs."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gear import dag, dvcfile, released
from gear.cli import main
from gear.config import load_params
from public_layouts import (RefTransformer, lightning_file, llamagen_layout, magvit2_layout, random_state,
                            release_file, vqgan_layout)
from tiny import PARAMS, TINY, copy_workflow, env, sets

ROOT = Path(__file__).resolve().parents[1]
CH, MULT, K, RES, CLASSES = 32, (1, 2), 64, 16, 16  # tiny families in the public code's terms; 16 embedded classes
ARCH = {"vq16": dict(enc_res_blocks=2, dec_res_blocks=3, z_channels=32, code_dim=8),
        "lfq16": dict(enc_res_blocks=2, dec_res_blocks=2, z_channels=6, code_dim=6),
        "ibq16": dict(enc_res_blocks=2, dec_res_blocks=3, z_channels=16, code_dim=16)}
LAYOUT = {"vq16": lambda: llamagen_layout(CH, MULT, 2, 32, 8, K), "lfq16": lambda: magvit2_layout(CH, MULT, 2, 6),
          "ibq16": lambda: vqgan_layout(CH, MULT, 2, 16, 16, K, RES, attn_resolutions=(RES // 2,))}
DOWNLOADED = ("vq_original", "vq_warmup", "vq_gear", "lfq_original", "lfq_warmup", "ibq_original", "ibq_warmup")
GPT = dict(layers=2, dim=64, heads=4)


def released_sets(files: dict[str, Path]) -> list[str]:
    out = ["released.num_classes=16", "released.per_class=1", "released.eval_size=16", "released.batch_size=8"]
    for family, shape in ARCH.items():
        out += [f"released.archs.{family}.{k}={v}" for k, v in dict(resolution=RES, ch=CH, ch_mult=list(MULT),
                                                                    norm_groups=32, codebook_size=K, **shape).items()]
    out += [f"released.tokenizers.{n}={files[n]}" for n in DOWNLOADED]
    out += [f"released.gpts.B.{k}={v}" for k, v in dict(path=files["B"], image_size=RES, **GPT).items()]
    return [s.replace(" ", "") for s in out]


def write_public_files(d: Path) -> dict[str, Path]:
    """Each tokenizer file as its publisher wraps it, and LlamaGen's c2i GPT-B layout (tiny)."""
    files = {}
    for i, name in enumerate(DOWNLOADED):
        family = released.TOKENIZERS[name][0]
        live, ema = random_state(LAYOUT[family](), 2 * i), random_state(LAYOUT[family](), 2 * i + 1)
        if name == "vq_original":
            obj = {"model": live}                       # LlamaGen vq_ds16_c2i.pt
        elif name.endswith("original"):
            obj = lightning_file(live, ema)             # Open-MAGVIT2 / IBQ Lightning originals
        else:
            obj = release_file(live, ema)               # the release's *-with-gan.pt / gear-*.pt
        files[name] = d / f"{name}.pt"
        torch.save(obj, files[name])
    torch.manual_seed(0)
    gpt = RefTransformer(K, RES // 2, GPT["layers"], GPT["dim"], GPT["heads"], CLASSES)
    files["B"] = d / "c2i_B.pt"
    torch.save({"model": gpt.state_dict()}, files["B"])  # LlamaGen c2i_B_256.pt
    return files


def gear(*args: str, extra: list[str] = ()) -> int:
    return main([*args, "--params", str(PARAMS), *sets(*extra)])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shards, the demo teacher and real statistics (the main DAG's inputs), then every job of the
    `released` target and its report, each through the CLI."""
    d = tmp_path_factory.mktemp("released")
    files = write_public_files(d)
    extra = released_sets(files)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        for stage in (["shard"], ["teacher"], ["evaluate", "real"]):
            assert gear(*stage, extra=extra) == 0, stage
        p = load_params(PARAMS, [*TINY, *extra])
        for job in [*dag.released_jobs(p), dag.Job.of("released_report")]:
            assert gear(*job.decl.cli.split(), extra=extra) == 0, job
    return d, files, extra


def test_each_public_layout_is_measured_and_missing_ones_are_listed_not_failed(world):
    d, _, _ = world
    rfid = {}
    for name in released.TOKENIZERS:
        rec = json.loads((d / released.tokenizer_json(name)).read_text())
        rfid[name] = rec.get("rfid")
        if name in DOWNLOADED:
            assert rec["status"] == "measured" and rec["num_images"] == 64 and rec["resize"] == "bicubic", rec
            assert all(math.isfinite(rec[k]) for k in ("rfid", "psnr", "ssim")), rec
            assert rec["rfid"] > 0 and 0 < rec["psnr"] < 60  # random weights: a real, poor reconstruction
        else:
            assert rec["status"] == released.NOT_DOWNLOADED
    assert len({rfid[n] for n in DOWNLOADED}) == len(DOWNLOADED)  # each stage measured its own file
    b = json.loads((d / released.gpt_json("B")).read_text())
    assert b["status"] == "measured" and b["num_samples"] == CLASSES and b["eval_size"] == RES
    assert b["settings"]["cfg_scale"] == 2.0 and math.isfinite(b["fid"])
    with np.load(d / released.samples_dir("B") / "samples.npz") as f:
        assert f["arr_0"].shape == (CLASSES, RES, RES, 3) and f["arr_1"].tolist() == list(range(CLASSES))

    report = json.loads((d / "reports/released.json").read_text())
    by_entry = {}
    for row in report["tokenizer"] + report["gpt"]:
        by_entry.setdefault(row["entry"], []).append(row)
    for name in ("lfq_gear", "ibq_gear", "L", "XL"):
        (row,) = by_entry[name]
        assert row["verdict"] == released.NOT_DOWNLOADED and row["ours"] is None
    # the tiny run is not the published protocol: every measured number is shown, not judged
    measured = [r for n in (*DOWNLOADED, "B") for r in by_entry[n]]
    assert {r["verdict"] for r in measured} == {"protocol differs", "not published"}
    vq = {r["metric"]: r for r in by_entry["vq_gear"]}
    assert vq["rFID"]["published"] == 1.64 and vq["rFID"]["difference"] == pytest.approx(vq["rFID"]["ours"] - 1.64)
    assert "feature space demo" in vq["rFID"]["note"]
    gpt = {r["metric"]: r for r in by_entry["B"]}
    assert gpt["gFID"]["published"] == 5.46 and gpt["IS"]["verdict"] == "not published"
    assert report["counts"][released.NOT_DOWNLOADED] == 4 and report["counts"]["outside tolerance"] == 0
    md = (d / "reports/released.md").read_text()
    assert md.count("| not downloaded |") >= 4 and "GEAR.md section 10" in md and "within tolerance when" in md
    assert (d / "reports/released.html").read_text().startswith("<!DOCTYPE html>")


def test_verdicts_under_the_published_protocol():
    from gear.report.released import entry_rows
    from gear.report.published import TOKENIZERS

    rec = {"status": "measured", "public_file": "gear-vq.pt", "feature_space": "inception", "num_images": 50_000,
           "resolution": 256, "rfid": 1.70, "psnr": 20.2, "ssim": 0.565}
    rows = {r["metric"]: r["verdict"] for r in entry_rows("tokenizer", "vq_gear", rec, TOKENIZERS["vq_gear"])}
    # rFID 1.70 vs 1.64: 0.06 <= 0.05 + 5% x 1.64; PSNR 0.58 dB off > 0.2; SSIM 0.005 <= 0.01
    assert rows == {"rFID": "within tolerance", "PSNR": "outside tolerance", "SSIM": "within tolerance"}
    rows = {r["metric"]: r["verdict"] for r in entry_rows("tokenizer", "vq_gear", {**rec, "ssim": float("nan")},
                                                          TOKENIZERS["vq_gear"])}
    assert rows["SSIM"] == "not measured"


def test_a_file_of_another_family_is_refused_in_one_line(world, capsys, monkeypatch):
    d, files, extra = world
    monkeypatch.chdir(d)
    before = (d / released.tokenizer_json("vq_gear")).read_bytes()
    capsys.readouterr()
    assert gear("released-tokenizer", "--name", "vq_gear", extra=[*extra, f"released.tokenizers.vq_gear={files['lfq_warmup']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("gear released-tokenizer: error: released.tokenizers.vq_gear: ") and \
        "is a lfq16 tokenizer (Open-MAGVIT2 layout), not vq16: it belongs under lfq_original, lfq_warmup, lfq_gear" in err
    assert (d / released.tokenizer_json("vq_gear")).read_bytes() == before  # nothing half-written


def test_a_path_that_is_not_a_file_names_its_key(world, capsys, monkeypatch):
    d, _, extra = world
    monkeypatch.chdir(d)
    capsys.readouterr()
    assert gear("released-sample", "--name", "L", extra=[*extra, "released.gpts.L.path=absent.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gear released-sample: error: released.gpts.L.path = 'absent.pt': file not found (null = not downloaded)"
    assert gear("released-tokenizer", "--name", "vq_best", extra=extra) == 2
    assert "--name 'vq_best': must be one of vq_original" in capsys.readouterr().err
    assert gear("released-tokenizer", "--name", "ibq_gear", extra=[*extra, "released.archs.ibq16.resolution=32"]) == 2
    assert "released.archs.ibq16.resolution = 32: the demo feature space reads 16 px" in capsys.readouterr().err
    assert gear("released-sample", "--name", "B", extra=[*extra, "released.gpts.B.top_k=65"]) == 2
    assert "released.gpts.B.top_k = 65: must be <= the codebook size 64" in capsys.readouterr().err


def test_the_resize_is_bicubic_as_pil_does_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    ours = ((released.resize(x, 16)[0].permute(1, 2, 0) + 1) * 127.5).numpy()
    img = Image.fromarray(((x[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    pil = np.asarray(img.resize((16, 16), Image.BICUBIC), dtype=np.float64)
    assert np.abs(ours - pil).mean() < 2.0  # PIL works on uint8; same kernel and antialiasing
    assert released.resize(x, 32) is x


def test_each_entry_reruns_alone_and_the_dvc_file_is_generated():
    p = load_params(ROOT / "params.yaml")
    keys = dag.STAGES["released_tokenizer_vq_gear"].keys
    assert "released.tokenizers.vq_gear" in keys and not any(k.startswith("released.tokenizers.vq_o") for k in keys)
    assert not any(s.room == "released" for s in (j.decl for j in dag.main_jobs(p)))  # not part of `all`
    text = (ROOT / "released/dvc.yaml").read_text()
    assert text == dvcfile.dvc_text(p, "released"), "released/dvc.yaml differs from gear/dag.py: run `gear dag`"
    assert "released_" not in (ROOT / "dvc.yaml").read_text() + (ROOT / "t2i/dvc.yaml").read_text()
    assert text.count("\n    wdir: ..\n") == 16 and "cmd: gear released-report --params params.yaml" in text


def test_snakemake_lists_the_released_jobs(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "released").mkdir()
    bin_dir = Path(sys.executable).parent
    res = subprocess.run([str(bin_dir / "snakemake"), "-n", "--cores", "1", "released"], cwd=tmp_path,
                         env={**env(), "PATH": f"{bin_dir}:{env()['PATH']}"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    table = (res.stdout + res.stderr).split("Job stats:")[1].split("total")[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    assert {j for j in jobs if j.startswith("released_")} == {s for s in dag.STAGES if s.startswith("released_")}
    assert jobs["released"] == 1 and {"shard", "teacher", "evaluate_real"} <= set(jobs)
    assert not any(j.startswith(("tune", "train_ar", "t2i")) for j in jobs)


def test_the_report_without_its_inputs_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert gear("released-report") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "released/eval/tokenizer/vq_original.json" in err, err
    assert not (tmp_path / "reports").exists()
