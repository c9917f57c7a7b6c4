"""The device check: the issue's GPU figures in one run on one H200, each printed with its
peak memory (torch.cuda.max_memory_allocated, reset between figures). A figure that fails to
run prints one FAILED line (its traceback goes to stderr), the rest still run, and the exit
status is 1.

Usage: python benchmarks/gpu_check.py [--dry] [--only NAME[,NAME]] [--steps N] [--compile] [--budget S]
  --dry      CPU, fp32, tiny shapes (presets/imagenet256.yaml shrunk by DRY_OVERRIDES), a few
             steps: every code path in seconds. Compiled figures only with --compile.
  --only     run these figures (gemm_peak always runs: it is every MFU's denominator)
  --steps N  timed steps per figure (default 10; --dry 2)
benchmarks/gpu_check.sh sets up the venv and runs this under `timeout 480`.

Figures, in run order (shapes and hyper-parameters from presets/imagenet256.yaml):
  gemm_peak              bf16 torch.mm 8192^3: the measured dense peak. MFU = model FLOP/s over
                         it (also printed: the share of H200's nominal 989 TFLOP/s dense bf16)
  ar_train_{B,L,XL}      AR training tokens/s and MFU: train-ar's step (CE + REPA through the
                         projector, grad clip, fused AdamW, EMA) on ar.batch_size x 256 tokens,
                         K 16384, bf16 autocast, SDPA forced to flash, eager, one process (no
                         FSDP). Teacher features are inputs here (train-ar also runs the
                         teacher each step; gear_step_B includes it). FLOPs from the shapes,
                         benchmarks/bench_reference.py: causal attention, backward = 2 forward
  tokenizer_step         tokenizer-init's step at VQ-16, 256 px -> 16x16 tokens: generator loss
                         (L1 + LPIPS + GAN + VQ), its update, the discriminator's, the EMA; images/s
  gear_step_B            one tune iteration with a B guide at the tap layer align_layer: teacher
                         features, gear_step.tokenizer_step, the discriminator step,
                         gear_step.ar_step, both EMAs; images/s
  sample_B               gear.models.sampling.generate with the KV cache and CFG sample.cfg_scale,
                         sample.batch_size labels per call, SDPA flash; images (token grids)/s,
                         decoding to pixels excluded
  sample_B_compiled      as sample_B with generate(compile=True): the fixed-shape decoding step
                         under torch.compile, replayed as a CUDA graph (what sample.compile does)
  ar_train_{B,L,XL}_compiled   as ar_train with torch.compile(ar), as train-ar builds it: last,
                         since the compiles are the longest part of the run
Weights are random everywhere: a step costs the same, and the device machine reaches no hub
(LPIPS gets random VGG16 files in a temporary folder; the teacher is built with pretrained=False).
The tokenizer and gear steps use PyTorch's default SDPA choice: the tokenizer's single-head
attention (head dim 512) has no flash kernel.

Time budget on one H200 (estimates; the figures print their own): start-up and builds ~20 s,
gemm_peak ~2 s, each eager ar_train 5-10 s, tokenizer_step and gear_step_B ~15 s each, sample_B
~15 s, the compiled sampling figure ~30-60 s and the three compiled AR figures 40-120 s each
(mostly compiling, shown as warm-up): ~3-8 min, the compiles being the uncertain part (cold
inductor cache on a fresh machine).
Each figure warms up (2 steps), then times at most --steps steps and no more than ~15 s worth
(judged from the last warm-up step) on CUDA events. A figure is not started once --budget
seconds (default 450) have passed, so the summary prints before the shell's 480 s timeout.
"""
from __future__ import annotations

import argparse
import copy
import gc
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench_reference import train_flops_per_token
from gear.config import Params, load_params
from gear.models.ar import configure_optimizer
from gear.models.sampling import generate
from gear.runtime import Runtime, seed_everything, setup
from gear.train.ar_objective import ar_loss, build_ar
from gear.train.ema import EMA
from gear.train.gear_step import GearKnobs, GearModels, ar_step, tokenizer_step
from gear.train.tokenizer_objective import (TokenizerObjective, build_discriminator, build_perceptual,
                                            build_tokenizer, clip_and_step)

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "presets" / "imagenet256.yaml"
H200_BF16_PEAK = 989e12       # nominal dense bf16 FLOP/s (SXM), for reference next to the measured one
IMAGENET_CLASSES = 1000
SIZES = ("B", "L", "XL")
GUIDE = "B"                   # the AR size of gear_step and sample

# --dry: the preset shrunk to a 16 px tokenizer (4x4 tokens), a demo teacher and a 2-layer AR;
# every AR size becomes ar.custom.
DRY_OVERRIDES = [
    "compute.device=cpu", "compute.precision=fp32", "data.resolution=16",
    "tokenizer.ch=8", "tokenizer.ch_mult=[1, 2, 2]", "tokenizer.enc_res_blocks=1", "tokenizer.dec_res_blocks=1",
    "tokenizer.z_channels=16", "tokenizer.norm_groups=4", "tokenizer.codebook_size=64", "tokenizer.code_dim=4",
    "tokenizer.disc_ch=8", "tokenizer.disc_layers=1", "tokenizer.batch_size=2",
    "teacher=demo", "teachers.demo_patch=4", "teachers.demo_dim=16", "teachers.demo_depth=1", "teachers.demo_heads=2",
    "ar.custom_layers=2", "ar.custom_dim=32", "ar.custom_heads=2", "ar.projector_hidden=16", "ar.batch_size=2",
    "ar.align_layers=[]", "align_layer=1", "tune.batch_size=2", "sample.batch_size=2",
    "t2i.sample.top_k=0",  # the preset's 1000 is beyond the shrunk codebook (refused when params are read)
]


def bench_params(dry: bool, lpips_dir: Path) -> Params:
    """The preset (or its --dry shrink) with LPIPS read from `lpips_dir` and every model from scratch."""
    return load_params(PRESET, [*(DRY_OVERRIDES if dry else []), f"tokenizer.lpips_weights={lpips_dir}",
                                "tokenizer.init=scratch"])


def figure_names(dry: bool, compile: bool) -> list[str]:
    names = ["gemm_peak", *(f"ar_train_{s}" for s in SIZES), "tokenizer_step", f"gear_step_{GUIDE}",
             f"sample_{GUIDE}"]
    if compile or not dry:
        names += [f"sample_{GUIDE}_compiled", *(f"ar_train_{s}_compiled" for s in SIZES)]
    return names


@dataclass
class Result:
    value: float | None = None
    unit: str = ""
    detail: str = ""
    mfu: float | None = None        # share of the measured GEMM peak
    peak_gib: float | None = None   # max_memory_allocated during the figure (CUDA only)
    error: str | None = None        # one line when the figure failed to run
    name: str = ""                  # set by the runner

    def line(self, peak_share: float | None = None) -> str:
        """peak_share: measured peak / H200 nominal, to print the MFU against the nominal too."""
        if self.error is not None:
            return f"{self.name:24s} FAILED  {self.error}"
        mfu = ""
        if self.mfu is not None:
            mfu = f"  MFU {100 * self.mfu:.1f}% of measured peak"
            if peak_share is not None:
                mfu += f" ({100 * self.mfu * peak_share:.1f}% of 989 nominal)"
        mem = f"  peak {self.peak_gib:.2f} GiB" if self.peak_gib is not None else ""
        return f"{self.name:24s} {self.value:12.5g} {self.unit:9s}{mfu}{mem}  [{self.detail}]"


@dataclass
class Bench:
    params: Params
    rt: Runtime
    dry: bool
    steps: int
    fail: str | None = None         # a figure forced to fail (tests)
    peak_flops: float | None = None  # set by gemm_peak

    warmup = property(lambda self: 1 if self.dry else 2)        # the first step compiles / allocates
    budget_s = property(lambda self: 2.0 if self.dry else 15.0)  # timed seconds per figure, at most
    device = property(lambda self: self.rt.device)
    classes = property(lambda self: 4 if self.dry else IMAGENET_CLASSES)

    def ar_size(self, size: str) -> str:
        return "custom" if self.dry else size

    @cached_property
    def grid(self) -> int:
        return self.params.data.resolution // self.params.tokenizer.downsample

    @cached_property
    def teacher(self):
        """The params' teacher with random weights, on the CPU (copied to the device per figure)."""
        from gear.teachers import HUB_TEACHERS, DemoTeacher, TimmTeacher, build_timm, zscore_strength
        from gear.models.demo_teacher import DemoViT

        p = self.params
        name, strength = p.teacher, zscore_strength(p)
        with torch.device("cpu"):  # first used inside a figure's device context: keep it off the GPU
            if name == "demo":
                t = p.teachers
                vit = DemoViT(image_size=self.grid * t.demo_patch, patch=t.demo_patch, dim=t.demo_dim,
                              depth=t.demo_depth, heads=t.demo_heads, num_classes=self.classes)
                return DemoTeacher(vit, [str(i) for i in range(self.classes)], strength, p.compute.precision)
            spec = HUB_TEACHERS[name]
            if spec.library != "timm":
                raise ValueError(f"teacher {name}: only timm teachers are built with random weights here")
            return TimmTeacher(name, build_timm(spec, None, pretrained=False), spec.patch, spec.pool_size,
                               strength, p.compute.precision)

    def perceptual(self) -> nn.Module | None:
        """build_perceptual of the params; LPIPS files with random weights are written on first use.
        Call it outside a device context: LPIPS builds a whole VGG16 and keeps only its trunk."""
        t = self.params.tokenizer
        folder = Path(t.lpips_weights)
        if t.perceptual == "lpips" and not any(folder.iterdir()):
            from torchvision.models.vgg import cfgs, make_layers

            from gear.models.perceptual import LIN_FILES, VGG_CHANNELS, VGG_FILES
            vgg = make_layers(cfgs["D"])  # VGG16's conv trunk only (its 120M-parameter classifier is unused)
            torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, folder / VGG_FILES[0])
            torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(VGG_CHANNELS)},
                       folder / LIN_FILES[0])
        return build_perceptual(self.params, self.device)

    def images(self, n: int) -> torch.Tensor:
        r = self.params.data.resolution
        return torch.rand(n, 3, r, r, device=self.device) * 2 - 1

    def labels(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.classes, (n,), device=self.device)

    def flash(self):
        """SDPA restricted to the flash kernel (on a CPU: its flash kernel, so --dry takes the same path)."""
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


# ---- timing ----------------------------------------------------------------------------------

def elapsed(device: torch.device, fn: Callable[[], object], n: int) -> float:
    """Seconds for n calls of fn, on the device's own clock."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t


@dataclass
class Timing:
    steps: int
    seconds: float    # of the timed steps
    warmup_s: float   # the warm-up steps: compiles, allocations, optimizer state

    @property
    def step_ms(self) -> float:
        return 1e3 * self.seconds / self.steps

    def describe(self) -> str:
        return f"{self.steps} steps of {self.step_ms:.1f} ms, warm-up {self.warmup_s:.1f} s"


def time_steps(bench: Bench, step: Callable[[], object]) -> Timing:
    """Warm up, then time as many steps (at most bench.steps) as fit bench.budget_s by the last
    warm-up step's time."""
    t0 = time.perf_counter()
    for _ in range(bench.warmup - 1):
        step()
    last = elapsed(bench.device, step, 1)
    warmup_s = time.perf_counter() - t0
    n = max(1, min(bench.steps, int(bench.budget_s / max(last, 1e-6))))
    return Timing(n, elapsed(bench.device, step, n), warmup_s)


# ---- FLOPs -----------------------------------------------------------------------------------

def matmul_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def ar_flops_per_token(ar: nn.Module, proj: nn.Module) -> float:
    """Training FLOPs per token of ar_loss: the AR from its shapes plus the projector, which runs
    on every position (bench_reference's formulas)."""
    return train_flops_per_token(ar.cfg, extra_params=matmul_weights(proj))


# ---- the figures: one function each ----------------------------------------------------------

def gemm_peak(bench: Bench) -> Result:
    n, reps = (256, 2) if bench.dry else (8192, 50)  # ~75 ms a step on an H200: clocks settle in the warm-up
    dtype = torch.bfloat16 if bench.rt.precision == "bf16" else torch.float32
    a, b, c = (torch.randn(n, n, device=bench.device, dtype=dtype) for _ in range(3))

    def step():
        for _ in range(reps):
            torch.mm(a, b, out=c)

    t = time_steps(bench, step)
    bench.peak_flops = 2 * n ** 3 * reps * t.steps / t.seconds
    nominal = f", {100 * bench.peak_flops / H200_BF16_PEAK:.1f}% of H200's nominal 989" if not bench.dry else ""
    return Result(bench.peak_flops / 1e12, "TFLOP/s",
                  f"{str(dtype).removeprefix('torch.')} mm {n}^3 x {reps}{nominal}; {t.describe()}")


def ar_train(bench: Bench, size: str, compiled: bool) -> Result:
    """train-ar's step (grad_accum 1, one process) on random tokens and teacher features."""
    p, rt, a = bench.params, bench.rt, bench.params.ar
    if compiled:
        torch._dynamo.reset()  # a fresh compile per size, as in its own process (no dynamic shapes)
    with torch.device(rt.device):  # init on the device: XL's 775M parameters take long on a CPU
        ar, proj = build_ar(p, bench.ar_size(size), p.tokenizer.codebook_size, bench.grid, bench.classes,
                            bench.teacher.dim)
    ar.grad_checkpointing = p.compute.grad_checkpointing
    ema = EMA(ar, a.ema_decay)
    opt = configure_optimizer(nn.ModuleList([ar, proj]), a.lr, a.betas, a.weight_decay)
    fwd = torch.compile(ar) if compiled else ar
    params_all = [*ar.parameters(), *proj.parameters()]
    align_layer = a.align_layer_for(size, p.align_layer)
    B, L = a.batch_size, ar.cfg.seq_len
    tokens = torch.randint(0, ar.cfg.vocab_size, (B, L), device=rt.device)
    labels, y = bench.labels(B), torch.randn(B, L, bench.teacher.dim, device=rt.device)
    ar.train(); proj.train()

    def step():
        with bench.flash(), rt.autocast():
            loss, _ = ar_loss(fwd, proj, tokens, tokens, labels, y, align_layer, p.align_weight_ar)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params_all, a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(ar)

    t = time_steps(bench, step)
    tokens_s = B * L * t.steps / t.seconds
    flops = tokens_s * ar_flops_per_token(ar, proj)
    c = ar.cfg
    return Result(tokens_s, "tokens/s",
                  f"{c.n_layer}L d{c.dim} h{c.n_head}, batch {B} x {L}, K {c.vocab_size}, tap {align_layer}, "
                  f"{flops / 1e12:.3g} TFLOP/s; {t.describe()}",
                  mfu=flops / bench.peak_flops if bench.peak_flops else None)


def tokenizer_train_step(bench: Bench) -> Result:
    """tokenizer-init's iteration (logging aside), with the GAN on (as from tokenizer.gan_start)."""
    p, rt, t = bench.params, bench.rt, bench.params.tokenizer
    with torch.device(rt.device):
        tok, disc = rt.prepare_conv(build_tokenizer(p)), rt.prepare_conv(build_discriminator(p))
    objective = TokenizerObjective(p, bench.perceptual(), disc)
    ema = EMA(tok, t.ema_decay)
    opt_g = torch.optim.AdamW(tok.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=t.disc_lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    x = bench.images(t.batch_size)

    def step():
        tok.train()
        with rt.conv_autocast():
            out = tok(x)
            loss_g, _ = objective.generator_loss(x, out, t.gan_start)
        clip_and_step(loss_g, opt_g, t.grad_clip)
        if objective.gan_active(t.gan_start):
            with rt.conv_autocast():
                loss_d, _ = objective.discriminator_loss(x, out.recon)
            clip_and_step(loss_d, opt_d, t.grad_clip)
        ema.update(tok)

    tm = time_steps(bench, step)
    r = p.data.resolution
    return Result(t.batch_size * tm.steps / tm.seconds, "images/s",
                  f"{sum(q.numel() for q in tok.parameters()) / 1e6:.1f}M tokenizer, {r} px -> {bench.grid}x{bench.grid}, "
                  f"K {t.codebook_size}, batch {t.batch_size}, perceptual {t.perceptual}; {tm.describe()}")


def gear_train_step(bench: Bench, size: str) -> Result:
    """One `gear tune` iteration (logging aside), models built as tune builds them."""
    p, rt, tn = bench.params, bench.rt, bench.params.tune
    with torch.device(rt.device):
        teacher = copy.deepcopy(bench.teacher).to(rt.device)
        tok, disc = rt.prepare_conv(build_tokenizer(p)), rt.prepare_conv(build_discriminator(p))
        ar, proj = build_ar(p, bench.ar_size(size), tok.codebook_size, bench.grid, bench.classes, teacher.dim)
    perceptual = bench.perceptual()
    ar.grad_checkpointing = p.compute.grad_checkpointing
    ema_tok, ema_ar = EMA(tok, tn.ema_decay), EMA(ar, tn.ema_decay)
    models = GearModels(tok, ar, proj, TokenizerObjective(p, perceptual, disc, gan=tn.gan, gan_start=tn.gan_start))
    knobs = GearKnobs(mode="gear", tau=p.tau, align_weight=p.align_weight, align_weight_ar=p.align_weight_ar,
                      align_layer=p.align_layer, soft_forward=tn.soft_forward, grad_clip=tn.grad_clip)
    betas = tuple(tn.betas)
    opt_tok = torch.optim.AdamW(tok.parameters(), lr=tn.lr_tokenizer, betas=betas, weight_decay=tn.weight_decay)
    opt_ar = torch.optim.AdamW([*ar.parameters(), *proj.parameters()], lr=tn.lr_ar, betas=betas,
                               weight_decay=tn.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=tn.lr_disc, betas=betas, weight_decay=tn.weight_decay)
    x, labels = bench.images(tn.batch_size), bench.labels(tn.batch_size)

    def step():
        with torch.no_grad(), rt.autocast():
            y = teacher.features(x, bench.grid).float()
        out, _ = tokenizer_step(models, knobs, opt_tok, x, labels, y, tn.gan_start, rt)
        ar_step(models, knobs, opt_ar, out.q.indices, labels, y, rt)
        if models.objective.gan_active(tn.gan_start):
            with rt.conv_autocast():
                loss_d, _ = models.objective.discriminator_loss(x, out.recon)
            clip_and_step(loss_d, opt_d, tn.grad_clip)
        ema_tok.update(tok); ema_ar.update(ar)

    t = time_steps(bench, step)
    c = ar.cfg
    return Result(tn.batch_size * t.steps / t.seconds, "images/s",
                  f"teacher {teacher.name}, AR {c.n_layer}L d{c.dim} tap {p.align_layer}, "
                  f"{p.data.resolution} px, batch {tn.batch_size}; {t.describe()}")


def sample(bench: Bench, size: str, compiled: bool) -> Result:
    """`gear sample`'s generate call on one batch of labels (a random AR with non-uniform logits);
    compiled: its fixed-shape decoding step under torch.compile, CUDA graphs (sample.compile)."""
    p, rt, s = bench.params, bench.rt, bench.params.sample
    with torch.device(rt.device):
        ar, _ = build_ar(p, bench.ar_size(size), p.tokenizer.codebook_size, bench.grid, bench.classes,
                         bench.teacher.dim)
    nn.init.normal_(ar.head.weight, std=0.02)  # a zero head (the init) samples uniform tokens
    ar.eval()
    labels = torch.arange(s.batch_size, device=rt.device) % bench.classes
    gen = torch.Generator(device=rt.device).manual_seed(0)

    def step():
        with bench.flash():
            generate(ar, labels, cfg_scale=s.cfg_scale, cfg_interval=tuple(s.cfg_interval), temperature=s.temperature,
                     top_k=s.top_k, top_p=s.top_p, generator=gen, bf16=rt.precision == "bf16", compile=compiled)

    t = time_steps(bench, step)
    c = ar.cfg
    return Result(s.batch_size * t.steps / t.seconds, "images/s",
                  f"{c.n_layer}L d{c.dim}, {s.batch_size} labels x {c.seq_len} tokens, CFG {s.cfg_scale}, "
                  f"KV cache{', compiled decode step' if compiled else ''}; {t.describe()}")


def figures(bench: Bench) -> dict[str, Callable[[], Result]]:
    runs = {"gemm_peak": partial(gemm_peak, bench), "tokenizer_step": partial(tokenizer_train_step, bench),
            f"gear_step_{GUIDE}": partial(gear_train_step, bench, GUIDE),
            f"sample_{GUIDE}": partial(sample, bench, GUIDE, False),
            f"sample_{GUIDE}_compiled": partial(sample, bench, GUIDE, True)}
    for s in SIZES:
        runs[f"ar_train_{s}"] = partial(ar_train, bench, s, False)
        runs[f"ar_train_{s}_compiled"] = partial(ar_train, bench, s, True)
    return runs


# ---- the runner ------------------------------------------------------------------------------

def measure(bench: Bench, name: str, fn: Callable[[], Result]) -> Result:
    """Run one figure; its failure becomes a one-line error, and the memory peak is its own."""
    cuda = bench.device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        if name == bench.fail:
            raise RuntimeError("forced failure (--fail)")
        r = fn()
    except Exception as e:  # report and go on: one broken figure must not hide the others
        traceback.print_exc(file=sys.stderr)
        r = Result(error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    r.name = name
    if cuda:
        r.peak_gib = torch.cuda.max_memory_allocated() / 2 ** 30
    if r.error is None and not (r.value is not None and math.isfinite(r.value) and r.value > 0):
        r.error = f"no finite positive value ({r.value})"
    return r


def run(bench: Bench, names: list[str], budget_s: float) -> int:
    start, failed = time.perf_counter(), []
    runs = figures(bench)
    for name in names:
        spent = time.perf_counter() - start
        if spent > budget_s:
            r = Result(name=name, error=f"not started: {spent:.0f} s of the {budget_s:.0f} s budget spent")
        else:
            r = measure(bench, name, runs[name])
        on_h200_scale = bench.device.type == "cuda" and bench.peak_flops
        print(r.line(bench.peak_flops / H200_BF16_PEAK if on_h200_scale else None), flush=True)
        if r.error is not None:
            failed.append(name)
    print(f"gpu_check: {len(names)} figures, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU, fp32, tiny shapes: every code path in seconds")
    ap.add_argument("--only", default="", help="comma-separated figure names (gemm_peak always runs)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per figure (default 10; --dry 2)")
    ap.add_argument("--compile", action="store_true", help="--dry: also the torch.compile figures")
    ap.add_argument("--budget", type=float, default=450.0, help="start no figure after this many seconds")
    ap.add_argument("--fail", default=None, help=argparse.SUPPRESS)  # tests: force this figure to fail
    args = ap.parse_args(argv)
    known = figure_names(args.dry, args.compile)
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only + ([args.fail] if args.fail else []) if n not in known]
    if unknown:
        ap.error(f"unknown figure(s) {', '.join(unknown)} (this mode runs: {', '.join(known)})")
    args.names = [n for n in known if not only or n == "gemm_peak" or n in only]
    args.steps = args.steps or (2 if args.dry else 10)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_check_lpips_") as lpips_dir:
        params = bench_params(args.dry, Path(lpips_dir))
        try:
            rt = setup(params)
        except RuntimeError as e:  # preset: compute.device cuda
            print(f"gpu_check: {e} (run with --dry on a CPU)", flush=True)
            return 1
        seed_everything(params.compute.seed)
        where = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "CPU"
        print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {where}, {rt.precision}, "
              f"{'dry (tiny shapes)' if args.dry else 'presets/imagenet256.yaml'}, {args.steps} timed steps "
              "per figure", flush=True)
        return run(Bench(params, rt, args.dry, args.steps, args.fail), args.names, args.budget)


if __name__ == "__main__":
    sys.exit(main())
