"""The benchmarks run and print every figure (their numbers are never asserted: speed is printed)."""
import subprocess
import sys
from pathlib import Path

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


def _study_cost():
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_cost", ROOT / "benchmarks/study_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_study_cost_plans_a_run_from_a_measured_one(tmp_path):
    """A measured run at other budgets (tune 2x longer, ARs 300 steps): each training job is costed per
    step at the plan's budget, any other per job; a second pass runs only what the first did not make
    with the same record (the teacher once; the baseline AR again: ar.steps differs), and a class the
    measured run lacks is named, uncosted."""
    import yaml

    sc = _study_cost()
    files = [Path("presets/scaling-arinit.yaml"), Path("presets/scaling.yaml")]
    for f in files:
        y = yaml.safe_load((ROOT / f).read_text())
        y["tune"]["steps"] *= 2
        y.setdefault("ar", {})["steps"] = 900 if y.get("stage2") == "ar-init" else 300
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text(yaml.safe_dump(y))
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for ran in sc.passes([tmp_path / f for f in files]):
        for job, steps in ran:
            tsv = tmp_path / "benchmarks/out" / sc.benchfile(job)
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(head + f"{2.0 * steps if steps else 10.0}\t0\t1\t1\t1\t1\t0\t0\t90\t1\n")
    planned = sc.passes([ROOT / f for f in files])
    second = {job.stage for job, _ in planned[1]}
    assert "teacher" not in second and {"train_ar_baseline", "tune", "train_ar_continue"} <= second
    want = sum(2.0 * n if n else 10.0 for ran in planned for _, n in ran)
    (tmp_path / "benchmarks/out/ar-init/teacher/run.tsv").unlink()  # the first pass's (common.smk benchfile)
    r = run("benchmarks/study_cost.py", "--plan", *map(str, files), "--measured", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    total = float(r.stdout.split("total ")[1].split(" s of job wall")[0])
    teacher = next(2.0 * n for job, n in planned[0] if job.stage == "teacher")
    assert total == round(want - teacher) and "not costed (the measured run has no such job): teacher x1" in r.stdout
