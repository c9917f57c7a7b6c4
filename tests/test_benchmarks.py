"""The benchmarks run and print every figure (their numbers are never asserted: speed is printed)."""
import subprocess
import sys

from tiny import ROOT, TINY, env

# the tiny shapes of tests/tiny.py that bench_tokenizer's models read
TOKENIZER_SETS = [kv for kv in TINY if kv.split("=")[0].split(".")[0] in ("tokenizer", "teachers", "ar", "tune")
                  or kv.startswith(("data.resolution", "ablations."))]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def test_bench_tokenizer_side_by_side_prints_every_part():
    sets = sum((["--set", kv] for kv in TOKENIZER_SETS), [])
    r = run("benchmarks/bench_tokenizer.py", "--before", str(ROOT), "--steps", "1", "--repeats", "1",
            "--threads", "1", *sets)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for part in ("data", "tokenizer backward", "discriminator forward", "EMA", "encoder forward", "quantizer forward",
                 "decoder forward", "teacher features", "AR step", "whole step (wall)", "GFLOP per step",
                 "share of the fp32 GEMM rate", "bound on a further speed-up", "warm-up mean step", "speed-up"):
        assert part in out, (part, out)
    assert out.count("warm-up step (gear tokenizer-init)") == 2 and "tuning step (gear tune" in out


def test_bench_tokenizer_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    r = run("benchmarks/bench_tokenizer.py", "--before", str(tmp_path))
    assert r.returncode != 0 and "is not a checkout of this project" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bench_reference_without_a_checkout_prints_ours_and_the_kernel_share():
    r = run("benchmarks/bench_reference.py", "--config", "tiny", "--repeats", "1", "--steps", "1", "--images", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reference: none given" in r.stdout
    assert r.stdout.count("of the time in matmul/attention kernels") == 2, r.stdout


def test_bench_reference_names_a_checkout_that_does_not_import(tmp_path):
    """A partial LlamaGen checkout (its gpt.py imports utils/ from the checkout's root): one line
    saying why, and ours still printed."""
    models = tmp_path / "autoregressive" / "models"
    models.mkdir(parents=True)
    (models / "gpt.py").write_text("from utils.drop_path import DropPath\n")
    (models / "generate.py").write_text("")
    r = run("benchmarks/bench_reference.py", "--reference", str(tmp_path), "--config", "tiny", "--repeats", "1",
            "--steps", "1", "--images", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("reference:"))
    assert "gpt.py does not import (No module named 'utils')" in line and line.endswith("printing ours only"), line


def test_study_cost_sums_each_rules_benchmark_files(tmp_path):
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s, cpu in [("tune/1/gear/tiny.tsv", 200.0, 180.0), ("tune/2/gear/tiny.tsv", 100.0, 90.0),
                        ("shard/run.tsv", 10.0, 8.0)]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(head + f"{s}\t0:00:00\t1\t1\t1\t1\t0\t0\t90\t{cpu}\n")
    r = run("benchmarks/study_cost.py", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[1:4]}
    assert rows["tune"] == ["2", "300", "150", "270"] and rows["shard"] == ["1", "10", "10", "8"]
    assert "total                                  3       310" in r.stdout
    assert "155 s (2.6 min)" in r.stdout
    empty = run("benchmarks/study_cost.py", "--out", str(tmp_path / "none"))
    assert empty.returncode != 0 and "no benchmark files" in empty.stderr
