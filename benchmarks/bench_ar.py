"""AR throughput: training tokens/s (forward + backward + AdamW step) and sampling images/s
(CFG 1.5, 16 images, with and without the KV cache) at two shapes:
  small: dim 384, 6 layers, 6 heads, vocab 4096, 8x8 tokens, 16 classes, batch 32
  B:     12 layers, dim 768, vocab 16384, 16x16 tokens, 1000 classes, batch 4 (training only: B
         decoding is weight-bandwidth bound on CPU, ~25 s per image with CFG)
Usage: python benchmarks/bench_ar.py [--precision auto|bf16|fp32] [--threads N] [--compile] [--skip-b]
`auto` picks bf16 autocast only where this CPU runs bf16 matmuls faster than fp32 (AVX512-BF16 /
AMX hosts); on plain AVX2 hosts bf16 matmuls are far slower than fp32.
Each figure is printed per wall-clock second and per process CPU-second: on a shared, loaded
machine the second one (with --threads 1) is the figure that does not depend on the neighbours."""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from gear.models.ar import GPT, GPTConfig, configure_optimizer, ntp_loss
from gear.models.sampling import generate

SMALL = GPTConfig(vocab_size=4096, grid=8, n_layer=6, dim=384, n_head=6, num_classes=16)
B_SIZE = GPTConfig.from_size("B", vocab_size=16384, grid=16, num_classes=1000)


def bf16_is_faster(n: int = 256, reps: int = 3) -> bool:
    def seconds(dtype):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        return time.perf_counter() - t
    return seconds(torch.bfloat16) < seconds(torch.float32)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class Timer:
    """Wall-clock and process CPU time of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bench_train(cfg: GPTConfig, batch: int, steps: int, bf16: bool, compile: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = GPT(cfg).train()
    opt = configure_optimizer(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    fwd = torch.compile(model) if compile else model
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))
    labels = torch.randint(0, cfg.num_classes, (batch,))

    def step():
        with autocast(bf16):
            loss = ntp_loss(fwd(x, labels).logits, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()                       # warm-up (allocations, compile)
    with Timer() as t:
        for _ in range(steps):
            step()
    n = batch * cfg.seq_len * steps
    return n / t.wall, n / t.cpu


def bench_sample(cfg: GPTConfig, n_images: int, use_cache: bool, bf16: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)     # non-uniform logits, as after training
    labels = torch.arange(n_images) % cfg.num_classes
    g = torch.Generator().manual_seed(0)
    generate(model, labels[:2], cfg_scale=1.5, generator=g, use_cache=use_cache, bf16=bf16)  # warm-up
    with Timer() as t:
        generate(model, labels, cfg_scale=1.5, generator=g, use_cache=use_cache, bf16=bf16)
    return n_images / t.wall, n_images / t.cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    ap.add_argument("--skip-b", action="store_true", help="only the small shape")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = bf16_is_faster() if args.precision == "auto" else args.precision == "bf16"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if bf16 else 'fp32'}{', compiled' if args.compile else ''}")

    runs = [("small train tokens/s", lambda: bench_train(SMALL, 32, 4, bf16, args.compile), 5460),
            ("small sample images/s (16, CFG 1.5, KV cache)", lambda: bench_sample(SMALL, 16, True, bf16), 40),
            ("small sample images/s (16, CFG 1.5, no cache)", lambda: bench_sample(SMALL, 16, False, bf16), None)]
    if not args.skip_b:
        runs += [("B train tokens/s (batch 4 x 256)", lambda: bench_train(B_SIZE, 4, 2, bf16, args.compile), 663)]
    print(f"{'':48s} {'per wall s':>11s} {'per CPU s':>10s}")
    for name, run, target in runs:
        wall, cpu = run()
        verdict = "" if target is None else f"  target >= {target}: {'ok' if wall >= target else 'BELOW'}"
        print(f"{name:48s} {wall:11.2f} {cpu:10.2f}{verdict}", flush=True)

if __name__ == "__main__":
    main()
