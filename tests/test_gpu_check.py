"""benchmarks/gpu_check.{py,sh} on a CPU: the --dry run of every figure, a forced failure, the
flags, the preset's shapes, and the FLOP count behind every MFU against torch's FlopCounterMode."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402  (benchmarks/ is a script folder, not a package)

from gear.models.registry import AR_SIZES  # noqa: E402
from gear.models.tokenizer import TokenizerConfig  # noqa: E402
from gear.train.ar_objective import ar_loss, build_ar  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def check(*args: str, script: str = "benchmarks/gpu_check.py") -> tuple[int, dict[str, str], str]:
    """(exit status, {figure: rest of its line}, stdout) of one run."""
    cmd = ["bash", script] if script.endswith(".sh") else [sys.executable, script]
    r = subprocess.run([*cmd, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    known = set(gpu_check.figure_names(dry=True, compile=True))
    lines = {}
    for line in r.stdout.splitlines():
        name, _, rest = line.partition(" ")
        if name in known:
            lines[name] = rest.strip()
    return r.returncode, lines, r.stdout + r.stderr


def value(rest: str) -> float:
    return float(rest.split()[0])


def test_dry_run_prints_every_figure():
    rc, lines, out = check("--dry")
    assert rc == 0, out
    assert list(lines) == gpu_check.figure_names(dry=True, compile=False), out
    for name, rest in lines.items():
        v = value(rest)
        assert math.isfinite(v) and v > 0, f"{name}: {rest}"
    assert "MFU" in lines["ar_train_B"] and "tokens/s" in lines["ar_train_B"]
    assert "7 figures, 0 failed" in out


def test_a_failing_figure_fails_the_run_and_the_rest_still_print():
    rc, lines, out = check("--dry", "--only", "ar_train_B,sample_B", "--fail", "ar_train_B")
    assert rc == 1, out
    assert list(lines) == ["gemm_peak", "ar_train_B", "sample_B"], out  # --only, gemm_peak always
    assert lines["ar_train_B"].startswith("FAILED  RuntimeError: forced failure"), out
    assert value(lines["gemm_peak"]) > 0 and value(lines["sample_B"]) > 0
    assert "1 failed: ar_train_B" in out


@pytest.mark.skipif(subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT).returncode != 0,
                    reason="the venv is not current: gpu_check.sh would reinstall it")
def test_shell_script_dry_passes_the_exit_status_through():
    rc, lines, out = check("--dry", "--only", "sample_B", "--fail", "sample_B", script="benchmarks/gpu_check.sh")
    assert rc == 1, out  # python's status, not make's, nvidia-smi's or the shell's
    assert "torch " in out and "cuda available" in out
    assert value(lines["gemm_peak"]) > 0 and lines["sample_B"].startswith("FAILED"), out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_dry_a_cpu_machine_fails_in_one_line():
    rc, lines, out = check()
    assert rc == 1 and not lines
    assert "no CUDA device is visible (run with --dry on a CPU)" in out


def test_flags():
    args = gpu_check.parse_args(["--dry", "--only", "sample_B"])
    assert args.names == ["gemm_peak", "sample_B"] and args.steps == 2
    gpu = gpu_check.parse_args(["--steps", "3"])
    assert gpu.steps == 3 and gpu.names[-3:] == [f"ar_train_{s}_compiled" for s in ("B", "L", "XL")]
    assert len(gpu.names) == 11 and "sample_B_compiled" in gpu.names
    assert "ar_train_XL_compiled" in gpu_check.parse_args(["--dry", "--compile"]).names
    for bad in (["--dry", "--only", "ar_train_B_compiled"], ["--only", "nope"], ["--fail", "nope"], ["--steps", "-1"]):
        with pytest.raises(SystemExit) as e:
            gpu_check.parse_args(bad)
        assert e.value.code == 2


def test_preset_shapes(tmp_path):
    """The device run's shapes: VQ-16 at 256 px (16x16 tokens, K 16384), registry B/L/XL with
    their tap layers; --dry shrinks all of it."""
    p = gpu_check.bench_params(dry=False, lpips_dir=tmp_path)
    assert (p.compute.device, p.compute.precision, p.compute.fsdp) == ("cuda", "bf16", False)
    assert TokenizerConfig.from_params(p) == TokenizerConfig.llamagen_vq16()
    assert p.data.resolution == 256 and p.data.resolution // p.tokenizer.downsample == 16
    assert p.tokenizer.perceptual == "lpips" and p.tokenizer.lpips_weights == str(tmp_path)
    assert p.ar.sizes == ["B", "L", "XL"] and [AR_SIZES[s][0] for s in p.ar.sizes] == [12, 24, 36]
    assert [p.ar.align_layer_for(s, p.align_layer) for s in p.ar.sizes] == [4, 8, 12]
    assert p.sample.cfg_scale > 1  # the sampling figure is guided
    d = gpu_check.bench_params(dry=True, lpips_dir=tmp_path)
    assert (d.compute.device, d.compute.precision) == ("cpu", "fp32")
    assert d.data.resolution // d.tokenizer.downsample == 4 and d.teacher == "demo"


def test_mfu_flops_match_flop_counter(tmp_path):
    """ar_flops_per_token (shapes) against FlopCounterMode on a forward + backward of ar_loss.
    With SDPA's math backend the attention is two bmm per layer (and their gradients), counted
    over all L keys; the formula counts only the keys at or before each query, (L + 1) / (2 L)
    of them on average. Every other FLOP is a mm/addmm: that part must match exactly."""
    p = gpu_check.bench_params(dry=True, lpips_dir=tmp_path)
    torch.manual_seed(0)
    ar, proj = build_ar(p, "custom", vocab_size=64, grid=4, num_classes=4, teacher_dim=24)
    B, L = 3, ar.cfg.seq_len
    x, labels, y = torch.randint(0, 64, (B, L)), torch.randint(0, 4, (B,)), torch.randn(B, L, 24)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        loss, _ = ar_loss(ar, proj, x, x, labels, y, 1, 0.5)
        loss.backward()
    counts = counter.get_flop_counts()["Global"]
    attention = counts[torch.ops.aten.bmm]
    independent = counter.get_total_flops() - attention + attention * (L + 1) / (2 * L)
    assert gpu_check.ar_flops_per_token(ar, proj) * B * L == pytest.approx(independent, rel=1e-12)
    assert gpu_check.matmul_weights(proj) > 0  # the projector is in the count (the test fails without it)
