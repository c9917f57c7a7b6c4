"""Side-by-side AR throughput: the public reference implementation against ours, in one process.

The reference is a checkout of the GEAR release (models/llamagen.py + models/generate.py) or of
LlamaGen (autoregressive/models/gpt.py + autoregressive/models/generate.py), given by
--reference PATH or $GEAR_REFERENCE. Nothing of it lives in this repository: its two files are
imported from that path at run time. Without a checkout the script says so in one line and still
prints ours.

Usage:
  python benchmarks/bench_reference.py --reference /path/to/GEAR            # small, 3 repeats
  GEAR_REFERENCE=/path/to/LlamaGen python benchmarks/bench_reference.py --config tiny --repeats 1
  options: --config tiny|small|B  --repeats N  --steps N (train steps per repeat)  --compile (ours also
           with the compiled fixed-shape decoding step, sample.compile)
           --batch N  --images N (0: no sampling)  --threads N (0: torch default; default 1)

Figures, each per process CPU-second (time.process_time: the figure a loaded machine does not
move, with --threads 1) and per wall-second, medians over the repeats:
  AR training tokens/s: forward + next-token CE + backward + AdamW step, each side with the
      optimizer its training script builds (ours: fused AdamW with decay groups; reference:
      torch.optim.AdamW as GEAR's src/train_ar.py builds it).
  sampling images/s: class-conditional, CFG 1.5 (batch doubled), KV cache, temperature 1.
Both sides run the same network: same width, depth, heads, SwiGLU width, vocab, classes, class
and token dropout 0.1; residual / FFN dropout 0 on both sides (the reference's default is 0.1, ours 0).
The repeats are interleaved (ref, ours, GEMM; the order flips each repeat) so that drift in the
machine's load hits both sides alike. The ratio is ours / reference.

Share of the GEMM peak: model FLOP/s over the fp32 torch.mm rate on 2048 x 2048 matrices,
measured in the same rounds (2 n^3 FLOPs per product). Model FLOPs are counted from the shapes,
useful work only (causal attention counts the keys at or before each query; embedding lookups
count nothing):
  P = n_layer * (4 D^2 + 3 D H) + D K      matmul weights (qkv + proj, SwiGLU, head); H = SwiGLU
                                           width, K = vocab; add extra matmul weights applied to
                                           every position (e.g. a REPA projector)
  forward FLOPs of one length-L sequence = 2 P L + n_layer * 2 D L (L + 1)
      (q.k and attn.v: 2 * 2 D (t + 1) at query t = 0..L-1, summed over t)
  training FLOPs per token = 3 x forward / L = 6 P + 6 n_layer D (L + 1)   (backward = 2 forward)
  sampling FLOPs per image (CFG, KV cache: L steps of one position each, 2 streams)
      = 2 * (2 P L + n_layer * 2 D L (L + 1))
Last, for ours only, the share of a run's CPU time inside matmul / attention kernels (torch.profiler):
one over it bounds the speed-up that removing every other op could still give at the same kernel
speeds (a floor the ratios above cannot pass without faster kernels or other shapes).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from bench_ar import SMALL, Timer
from bench_kernels import GEMM_N, kernel_share
from gear.models.ar import GPT, GPTConfig, configure_optimizer, ntp_loss
from gear.models.sampling import generate

CONFIGS = {  # name -> (config, train batch, sampled images)
    "tiny": (GPTConfig(vocab_size=256, grid=4, n_layer=2, dim=64, n_head=4, num_classes=4), 8, 4),
    "small": (SMALL, 32, 16),
    # B decoding on CPU is weight-bandwidth bound (~25 s per image with CFG): training only
    "B": (GPTConfig.from_size("B", vocab_size=16384, grid=16, num_classes=1000), 4, 0),
}
CFG_SCALE = 1.5


# ---- FLOPs from the shapes (formulas in the module docstring) --------------------------------

def matmul_params(cfg: GPTConfig) -> int:
    D, H = cfg.dim, cfg.ffn_hidden
    return cfg.n_layer * (4 * D * D + 3 * D * H) + D * cfg.vocab_size


def forward_flops(cfg: GPTConfig, extra_params: int = 0) -> int:
    """Forward FLOPs of one full sequence (L positions)."""
    L = cfg.seq_len
    return 2 * (matmul_params(cfg) + extra_params) * L + cfg.n_layer * 2 * cfg.dim * L * (L + 1)


def train_flops_per_token(cfg: GPTConfig, extra_params: int = 0) -> float:
    return 3 * forward_flops(cfg, extra_params) / cfg.seq_len


def sample_flops_per_image(cfg: GPTConfig, guided: bool = True) -> int:
    return (2 if guided else 1) * forward_flops(cfg)


# ---- the reference, imported from its checkout -----------------------------------------------

LAYOUTS = (("GEAR release", "models/llamagen.py", "models/generate.py"),
           ("LlamaGen", "autoregressive/models/gpt.py", "autoregressive/models/generate.py"))


@dataclass
class Reference:
    name: str
    root: Path
    ModelArgs: type
    Transformer: type
    generate: Callable


def _import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reference(path: str | None) -> Reference | str:
    """The reference's model and sampler, or a one-line reason why there is none."""
    if not path:
        return "none given (--reference PATH or GEAR_REFERENCE)"
    root = Path(path).expanduser().resolve()
    for name, model_file, gen_file in LAYOUTS:
        if (root / model_file).is_file() and (root / gen_file).is_file():
            # by file, not as a package: GEAR's models/__init__.py imports every tokenizer family.
            # LlamaGen's gpt.py imports utils.drop_path from its root, hence the path entry.
            sys.path.insert(0, str(root))
            try:
                gpt = _import_file(root / model_file, "_reference_gpt")
                gen = _import_file(root / gen_file, "_reference_generate")
            except ImportError as e:  # e.g. a partial checkout without utils/
                return f"{root / model_file} does not import ({e}): a whole checkout is needed"
            finally:
                sys.path.remove(str(root))
            return Reference(name, root, gpt.ModelArgs, gpt.Transformer, gen.generate)
    return f"{root} holds neither {' nor '.join(m for _, m, _ in LAYOUTS)}"


def reference_model(ref: Reference, cfg: GPTConfig) -> torch.nn.Module:
    args = ref.ModelArgs(dim=cfg.dim, n_layer=cfg.n_layer, n_head=cfg.n_head, vocab_size=cfg.vocab_size,
                         block_size=cfg.seq_len, num_classes=cfg.num_classes, cls_token_num=1,
                         class_dropout_prob=cfg.class_dropout, token_dropout_p=cfg.token_dropout,
                         resid_dropout_p=0.0, ffn_dropout_p=0.0, multiple_of=cfg.ffn_multiple)
    return ref.Transformer(args)


# ---- one timed unit of work per side: returns how many units (tokens, images, FLOPs) it did ----

def train_runner(model, opt, forward_logits, cfg: GPTConfig, batch: int, steps: int) -> Callable[[], int]:
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))
    labels = torch.randint(0, cfg.num_classes, (batch,))
    model.train()

    def run() -> int:
        for _ in range(steps):
            loss = ntp_loss(forward_logits(x, labels), x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return batch * cfg.seq_len * steps
    run()  # warm-up: allocations, optimizer state
    return run


def ours_train(cfg, batch, steps):
    model = GPT(cfg)
    opt = configure_optimizer(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    return train_runner(model, opt, lambda x, y: model(x, y).logits, cfg, batch, steps)


def ref_train(ref, cfg, batch, steps):
    model = reference_model(ref, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def logits(x, y):
        out = model(idx=x[:, :-1], cond_idx=y)   # GEAR: logits; LlamaGen: (logits, loss)
        return out[0] if isinstance(out, tuple) else out
    return train_runner(model, opt, logits, cfg, batch, steps)


def ours_sample(cfg, n_images, compile: bool = False):
    model = GPT(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # non-uniform logits, as after training
    labels = torch.arange(n_images) % cfg.num_classes
    g = torch.Generator().manual_seed(0)

    def run() -> int:
        generate(model, labels, cfg_scale=CFG_SCALE, generator=g, use_cache=True, compile=compile)
        return n_images
    generate(model, labels, cfg_scale=CFG_SCALE, generator=g, compile=compile)  # warm-up (and compile)
    return run


def ref_sample(ref, cfg, n_images):
    model = reference_model(ref, cfg).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)
    labels = torch.arange(n_images) % cfg.num_classes

    def sample(y):
        with warnings.catch_warnings():  # its decode loop enters the deprecated sdp_kernel context
            warnings.simplefilter("ignore", FutureWarning)
            ref.generate(model, y, cfg.seq_len, cfg_scale=CFG_SCALE, cfg_interval=-1,
                         temperature=1.0, top_k=0, top_p=1.0)

    def run() -> int:
        sample(labels)
        return n_images
    torch.manual_seed(0)  # it samples from the global generator
    sample(labels[:2])  # warm-up
    return run


def gemm_runner(n: int = GEMM_N, reps: int = 3) -> Callable[[], int]:
    a, b = torch.randn(n, n), torch.randn(n, n)

    def run() -> int:
        for _ in range(reps):
            torch.mm(a, b)
        return 2 * n ** 3 * reps
    run()
    return run


def interleaved(runners: dict[str, Callable[[], int]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (units per wall s, units per CPU s) of each runner, the runners taking turns."""
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    for r in range(repeats):
        for name in (list(runners) if r % 2 == 0 else list(reversed(runners))):
            with Timer() as t:
                n = runners[name]()
            rates[name].append((n / t.wall, n / max(t.cpu, 1e-9)))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=os.environ.get("GEAR_REFERENCE"),
                    help="checkout of the GEAR release or LlamaGen (default: $GEAR_REFERENCE)")
    ap.add_argument("--config", choices=list(CONFIGS), default="small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="training steps per repeat")
    ap.add_argument("--batch", type=int, default=0, help="training batch (0: the config's)")
    ap.add_argument("--images", type=int, default=-1, help="images sampled per repeat (-1: the config's, 0: none)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    ap.add_argument("--compile", action="store_true",
                    help="also ours with the compiled fixed-shape decoding step (sample.compile)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, batch, images = CONFIGS[args.config]
    batch = args.batch or batch
    images = images if args.images < 0 else args.images

    ref = load_reference(args.reference)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, config {args.config}: "
          f"dim {cfg.dim}, {cfg.n_layer} layers, {cfg.n_head} heads, vocab {cfg.vocab_size}, "
          f"{cfg.grid}x{cfg.grid} tokens, {cfg.num_classes} classes; {args.repeats} repeats (medians)")
    if isinstance(ref, str):
        print(f"reference: {ref}; printing ours only")
        ref = None
    else:
        print(f"reference: {ref.name} at {ref.root}")

    torch.manual_seed(0)
    runners = {"gemm": gemm_runner(), "ours train": ours_train(cfg, batch, args.steps)}
    if ref is not None:
        runners["ref train"] = ref_train(ref, cfg, batch, args.steps)
        n_ref = sum(p.numel() for p in reference_model(ref, cfg).parameters())
        n_ours = sum(p.numel() for p in GPT(cfg).parameters())
        print(f"parameters: ours {n_ours / 1e6:.3f}M, reference {n_ref / 1e6:.3f}M"
              f"{'' if n_ours == n_ref else '  (DIFFERENT NETWORKS)'}")
    if images:
        runners["ours sample"] = ours_sample(cfg, images)
        if args.compile:
            runners["ours sample-compiled"] = ours_sample(cfg, images, compile=True)
        if ref is not None:
            runners["ref sample"] = ref_sample(ref, cfg, images)
    rates = interleaved(runners, args.repeats)

    gemm_wall, gemm_cpu = rates["gemm"]
    print(f"fp32 GEMM {GEMM_N}^2 (torch.mm): {gemm_cpu / 1e9:.1f} GFLOP/s per CPU s, "
          f"{gemm_wall / 1e9:.1f} per wall s")
    figures = [("train", f"AR train tokens/s (batch {batch})", train_flops_per_token(cfg))]
    if images:
        figures.append(("sample", f"sample images/s ({images}, CFG {CFG_SCALE}, KV cache)",
                        sample_flops_per_image(cfg)))
        if args.compile:
            figures.append(("sample-compiled", "  ... compiled decode step", sample_flops_per_image(cfg)))
    print(f"{'figure':44s} {'clock':6s} {'reference':>10s} {'ours':>10s} {'ours/ref':>9s} "
          f"{'ref %peak':>9s} {'ours %peak':>10s}")
    for key, label, flops in figures:
        ours, theirs = rates[f"ours {key}"], rates.get(f"ref {key.split('-')[0]}")
        for i, clock in ((1, "CPU s"), (0, "wall s")):
            peak = gemm_cpu if i else gemm_wall
            ref_txt = f"{theirs[i]:10.2f}" if theirs else f"{'-':>10s}"
            ratio = f"{ours[i] / theirs[i]:8.2f}x" if theirs else f"{'-':>9s}"
            ref_share = f"{100 * theirs[i] * flops / peak:8.1f}%" if theirs else f"{'-':>9s}"
            print(f"{label:44s} {clock:6s} {ref_txt} {ours[i]:10.2f} {ratio} {ref_share} "
                  f"{100 * ours[i] * flops / peak:9.1f}%", flush=True)
    for key, label, _ in figures:
        share = kernel_share(runners[f"ours {key}"])
        print(f"ours, {label}: {100 * share:.1f}% of the time in matmul/attention kernels "
              f"(bound on a further speed-up at the same kernel speeds: {1 / max(share, 1e-9):.2f}x)")


if __name__ == "__main__":
    main()
