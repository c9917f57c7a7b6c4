"""What the benchmarks measure alike: the share of a run's CPU time inside the kernels that do its
counted FLOPs. One over that share bounds the speed-up that removing every other op could give at
the same kernel speeds (the profiler's per-op overhead makes the share a slight underestimate, so
the bound is generous).

Named bench_kernels, not kernels: tests put benchmarks/ on sys.path, and `kernels` is the hub
package that transformers imports."""
from __future__ import annotations

from typing import Callable

GEMM_N = 2048  # the fp32 torch.mm rate on GEMM_N^2 matrices is each benchmark's peak

# convolutions (forward, backward), matmuls, attention
KERNELS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm", "aten::bmm",
           "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def kernel_share(run: Callable[[], object]) -> float:
    """Share of run()'s CPU time (torch.profiler, self time) inside KERNELS."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in KERNELS) / max(total, 1e-9)
