"""The tokenizer's training steps, part by part: the warm-up (`gear tokenizer-init`) and the GEAR
tuning (`gear tune`) iterations on this machine, optionally beside another checkout of this project.

Usage:
  python benchmarks/bench_tokenizer.py                                   # ours only
  python benchmarks/bench_tokenizer.py --before /path/to/older/checkout  # side by side
  options: --steps N (timed steps per repeat; 20)  --repeats R (3)  --threads T (0: torch's default,
           what `dvc repro` runs with)  --stage warmup|tune|all  --set key=value (params overrides)

Shapes are the embedded default's (params.yaml of this checkout: 32 px, batch 16, ch 16, K 512,
the demo teacher and the tiny guide AR), on real shards and a demo teacher written once into a
scratch folder. Every repeat runs each tree in a fresh process (interleaved, the order flipping
each repeat, so drift in the machine's load hits both alike) and the tables give medians.

The step is driven through each tree's own components (tokenizer, discriminator, objective, EMA,
gear_step.tokenizer_step / ar_step, data stream), so a tree is measured with its own code. The
one piece a stage builds inline is its optimizers: a tree with
`gear.train.tokenizer_objective.adamw` uses it, an older one gets torch.optim.AdamW as its stages
built it. Forward times of the encoder, quantizer and decoder come from forward hooks; the
backward pass is one part (autograd runs it as one graph).

Figures: ms per step for each part; GFLOP per step (torch's FlopCounterMode over one step:
convolutions, matmuls, attention; forward and backward); GFLOP/s and its share of the fp32 GEMM
rate (torch.mm, 2048^2) measured in the same process at the same thread count. The warm-up
runs without its GAN before tokenizer.gan_start and with it after: both are measured and the
stage's mean step is their mix over tokenizer.steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_kernels import GEMM_N, kernel_share

HERE = Path(__file__).resolve().parents[1]  # this checkout ("ours")


# ---- the worker: one tree, one process --------------------------------------------------------

class Parts:
    """Wall-clock ms per named part of the step, accumulated over the timed steps."""

    def __init__(self):
        self.ms = defaultdict(float)
        self.t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] += 1000 * (now - self.t)
        self.t = now

    def hook(self, module, name: str) -> None:
        """Time `module`'s forward as `name` (moved out of whichever part it runs inside)."""
        start = {}

        def pre(*_):
            start["t"] = time.perf_counter()

        def post(*_):
            self.ms[name] += 1000 * (time.perf_counter() - start["t"])
            self.ms["_hooked"] += 1000 * (time.perf_counter() - start["t"])
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def _optimizers(params_list, lr, betas, wd):
    from gear.train import tokenizer_objective as to
    import torch
    if hasattr(to, "adamw"):
        return to.adamw(params_list, lr, betas, wd)
    return torch.optim.AdamW(params_list, lr=lr, betas=tuple(betas), weight_decay=wd)  # as older stages built it


def _gemm_rate() -> float:
    import torch
    a, b = torch.randn(GEMM_N, GEMM_N), torch.randn(GEMM_N, GEMM_N)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(3):
        torch.mm(a, b)
    return 3 * 2 * GEMM_N ** 3 / (time.perf_counter() - t)


def _flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        step(None)
    return fc.get_total_flops()


def _timed(step, steps: int) -> dict:
    import torch
    for _ in range(3):  # allocations, first-call set-up
        step(None)
    parts = Parts()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step(parts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ms = {k: v / steps for k, v in parts.ms.items()}
    return {"parts": ms, "step_ms": 1000 * wall / steps, "cpu_ms": 1000 * cpu / steps, "flops": _flops(step),
            "gemm_share": kernel_share(lambda: [step(None) for _ in range(4)]), "threads": torch.get_num_threads()}


def _backward_and_step(loss, opt, clip: float, p: Parts, who: str) -> None:
    """The stages' clip_and_step (zero_grad, backward, clip, AdamW), written out to time the
    backward and the clip + AdamW as two parts."""
    import torch
    opt.zero_grad(set_to_none=True)
    loss.backward()
    p.mark(f"{who} backward")
    torch.nn.utils.clip_grad_norm_([q for g in opt.param_groups for q in g["params"]], clip if clip > 0 else float("inf"))
    opt.step()
    p.mark(f"{who} clip + AdamW")


def worker_warmup(params, steps: int) -> dict:
    from gear.data.loader import TrainStream
    from gear.runtime import seed_everything, setup
    from gear.train.ema import EMA
    from gear.train.tokenizer_objective import (CodebookWindow, TokenizerObjective, build_discriminator,
                                                build_tokenizer)
    rt = setup(params)
    seed_everything(0)
    t = params.tokenizer
    tok, disc = rt.prepare_conv(build_tokenizer(params)), rt.prepare_conv(build_discriminator(params))
    ema, usage = EMA(tok, t.ema_decay), CodebookWindow(tok.codebook_size, rt.device)
    objective = TokenizerObjective(params, None, disc)
    opt_g = _optimizers(tok.parameters(), t.lr, t.betas, t.weight_decay)
    opt_d = _optimizers(disc.parameters(), t.disc_lr, t.betas, t.weight_decay)
    batches = iter(TrainStream(params, "train", t.batch_size, augment=True))
    hooks = Parts()
    for name in ("encoder", "quantizer", "decoder"):
        hooks.hook(getattr(tok, {"quantizer": "quantize"}.get(name, name)), name)

    def step_at(step_index: int):
        def step(p: Parts | None):
            p = p or Parts()
            hooks.ms.clear()
            x, _ = next(batches)
            p.mark("data")
            out = tok(x)
            loss, _ = objective.generator_loss(x, out, step_index)
            p.mark("tokenizer forward + loss")
            _backward_and_step(loss, opt_g, t.grad_clip, p, "tokenizer")
            if objective.gan_active(step_index):
                loss_d, _ = objective.discriminator_loss(x, out.recon)
                p.mark("discriminator forward")
                _backward_and_step(loss_d, opt_d, t.grad_clip, p, "discriminator")
            ema.update(tok)
            p.mark("EMA")
            usage.update(out.q.indices)
            p.mark("codebook usage")
            for name in ("encoder", "quantizer", "decoder"):  # hooked forwards, out of the part they ran in
                p.ms[f"  {name} forward"] += hooks.ms[name]
            p.ms["tokenizer forward + loss"] -= hooks.ms["_hooked"]
        return step

    return {"no GAN": _timed(step_at(0), steps), "GAN": _timed(step_at(10 ** 9), steps),
            "gan_start": t.gan_start, "stage_steps": t.steps, "gemm": _gemm_rate()}


def worker_tune(params, steps: int) -> dict:
    import torch
    from gear.data.loader import TrainStream, read_manifest
    from gear.runtime import seed_everything, setup
    from gear.teachers import load_teacher
    from gear.train.ar_objective import build_ar
    from gear.train.ema import EMA
    from gear.train.gear_step import GearKnobs, GearModels, ar_step, tokenizer_step
    from gear.train.tokenizer_objective import (CodebookWindow, TokenizerObjective, build_discriminator,
                                                build_tokenizer)
    rt = setup(params)
    seed_everything(0)
    t, tn = params.tokenizer, params.tune
    grid = params.data.resolution // t.downsample
    teacher = load_teacher(params, rt.device)
    tok, disc = rt.prepare_conv(build_tokenizer(params)), rt.prepare_conv(build_discriminator(params))
    classes = len(read_manifest(params)["classes"])
    ar, proj = build_ar(params, tn.ar_size, tok.codebook_size, grid, classes, teacher.dim)
    ema_tok, ema_ar = EMA(tok, tn.ema_decay), EMA(ar, tn.ema_decay)
    usage = CodebookWindow(tok.codebook_size, rt.device)
    models = GearModels(tok, ar, proj, TokenizerObjective(params, None, disc, gan=tn.gan, gan_start=tn.gan_start))
    knobs = GearKnobs(mode="gear", tau=params.tau, align_weight=params.align_weight,
                      align_weight_ar=params.align_weight_ar, align_layer=params.align_layer,
                      soft_forward=tn.soft_forward, grad_clip=tn.grad_clip)
    opt_tok = _optimizers(tok.parameters(), tn.lr_tokenizer, tn.betas, tn.weight_decay)
    opt_ar = _optimizers([*ar.parameters(), *proj.parameters()], tn.lr_ar, tn.betas, tn.weight_decay)
    opt_d = _optimizers(disc.parameters(), tn.lr_disc, tn.betas, tn.weight_decay)
    batches = iter(TrainStream(params, "train", tn.batch_size, augment=True))
    hooks = Parts()
    for name in ("encoder", "quantizer", "decoder"):
        hooks.hook(getattr(tok, {"quantizer": "quantize"}.get(name, name)), name)

    def step(p: Parts | None):
        p = p or Parts()
        hooks.ms.clear()
        x, labels = next(batches)
        p.mark("data")
        with torch.no_grad(), rt.autocast():
            y = teacher.features(x, grid).float()
        p.mark("teacher features")
        out, _ = tokenizer_step(models, knobs, opt_tok, x, labels, y, 10 ** 9, rt)
        p.mark("tokenizer step (L_VQ + soft align, fwd/bwd/AdamW)")
        if models.objective.gan_active(10 ** 9):
            loss_d, _ = models.objective.discriminator_loss(x, out.recon)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            torch.nn.utils.clip_grad_norm_([q for g in opt_d.param_groups for q in g["params"]], tn.grad_clip)
            opt_d.step()
            p.mark("discriminator step")
        ar_step(models, knobs, opt_ar, out.q.indices, labels, y, rt)
        p.mark("AR step (CE + hard align)")
        ema_tok.update(tok)
        ema_ar.update(ar)
        p.mark("EMA (tokenizer + AR)")
        usage.update(out.q.indices)
        p.mark("codebook usage")
        for name in ("encoder", "quantizer", "decoder"):
            p.ms[f"  {name} forward"] += hooks.ms[name]
        p.ms["tokenizer step (L_VQ + soft align, fwd/bwd/AdamW)"] -= hooks.ms["_hooked"]

    return {"tune": _timed(step, steps), "gemm": _gemm_rate()}


def worker(args) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    import gear
    from gear.config import load_params
    tree = Path(gear.__file__).resolve().parents[1]  # each tree with its own params.yaml (and schema)
    params = load_params(tree / "params.yaml", [*SCRATCH_SETS, *args.set])
    out = {}
    if args.stage in ("warmup", "all"):
        out["warmup"] = worker_warmup(params, args.steps)
    if args.stage in ("tune", "all"):
        out["tune"] = worker_tune(params, args.steps)
    print("RESULT " + json.dumps(out))


# ---- the parent: scratch data, interleaved repeats, tables -----------------------------------

# a smaller embedded split is enough to draw batches from; the models keep the default's shapes
SCRATCH_SETS = ["data.embedded_train_per_class=64", "data.embedded_val_per_class=4", "teachers.demo_steps=2"]


def make_scratch(folder: Path, sets: list[str]) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for stage in ("shard", "teacher"):
        cmd = [sys.executable, "-m", "gear.cli", stage, "--params", str(HERE / "params.yaml")]
        for kv in [*SCRATCH_SETS, *sets]:
            cmd += ["--set", kv]
        r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench_tokenizer: `gear {stage}` failed in {folder}: {r.stderr.strip().splitlines()[-1:]}")


def run_tree(tree: Path, folder: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps), "--stage",
           args.stage, "--threads", str(args.threads), *sum((["--set", kv] for kv in args.set), [])]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=f"{tree}{os.pathsep}{HERE / 'benchmarks'}")
    r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    line = [s for s in r.stdout.splitlines() if s.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        sys.exit(f"bench_tokenizer: the worker for {tree} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(line[-1][len("RESULT "):])


def print_table(title: str, trees: dict[str, list[dict]], keys: tuple[str, ...]) -> None:
    names = list(trees)
    parts = []
    for runs in trees.values():
        for r in runs:
            for k in _get(r, keys)["parts"]:
                if k not in parts and not k.startswith("_"):
                    parts.append(k)
    cols = "".join(f"{n:>12s}" for n in names) + ("   speed-up" if len(names) == 2 else "")
    print(f"\n{title}\n{'ms per step':50s}{cols}")

    def row(label, vals, ratio=True):
        txt = "".join(f"{v:12.2f}" for v in vals)
        if ratio and len(vals) == 2 and vals[0] > 0:
            txt += f"   {vals[1] / vals[0]:8.2f}x"  # before / ours
        print(f"{label:50s}{txt}")

    for k in parts:
        row(k, [statistics.median(_get(r, keys)["parts"].get(k, 0.0) for r in runs) for runs in trees.values()])
    step = [statistics.median(_get(r, keys)["step_ms"] for r in runs) for runs in trees.values()]
    row("whole step (wall)", step)
    row("whole step (process CPU time)", [statistics.median(_get(r, keys)["cpu_ms"] for r in runs)
                                          for runs in trees.values()])
    flops = [statistics.median(_get(r, keys)["flops"] for r in runs) for runs in trees.values()]
    gemm = [statistics.median(r[keys[0]]["gemm"] for r in runs) for runs in trees.values()]
    row("GFLOP per step (counted)", [f / 1e9 for f in flops], ratio=False)
    row("GFLOP/s", [f / s * 1e3 / 1e9 for f, s in zip(flops, step)], ratio=False)
    row("share of the fp32 GEMM rate (%)", [100 * f / (s / 1e3) / g for f, s, g in zip(flops, step, gemm)],
        ratio=False)
    share = [statistics.median(_get(r, keys)["gemm_share"] for r in runs) for runs in trees.values()]
    row("time in conv/matmul/attention kernels (%)", [100 * x for x in share], ratio=False)
    row("  -> bound on a further speed-up (1 / share)", [1 / max(x, 1e-9) for x in share], ratio=False)


def _stage_result(r: dict) -> dict:
    return r.get("warmup") or r["tune"]


def _threads(r: dict) -> int:
    return (r["warmup"]["GAN"] if "warmup" in r else r["tune"]["tune"])["threads"]


def _get(r: dict, keys: tuple[str, ...]) -> dict:
    for k in keys:
        r = r[k]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=None,
                    help="another checkout of this project (e.g. a git worktree of an older commit)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--stage", choices=["warmup", "tune", "all"], default="all")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override (both trees)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    trees = {"ours": HERE}
    if args.before:
        before = Path(args.before).expanduser().resolve()
        if not (before / "gear" / "train" / "tokenizer_objective.py").is_file():
            sys.exit(f"bench_tokenizer: {before} is not a checkout of this project "
                     "(no gear/train/tokenizer_objective.py)")
        trees = {"ours": HERE, "before": before}
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer_") as tmp:
        make_scratch(Path(tmp), args.set)
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for r in range(args.repeats):
            for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                results[name].append(run_tree(trees[name], Path(tmp), args))
    gemm = {n: statistics.median(_stage_result(r)["gemm"] for r in runs) / 1e9 for n, runs in results.items()}
    print(f"bench_tokenizer: {', '.join(f'{k} = {v}' for k, v in trees.items())}; {args.repeats} repeats x "
          f"{args.steps} steps, {_threads(results['ours'][0])} thread(s), medians; fp32 GEMM {GEMM_N}^2: "
          + ", ".join(f"{n} {g:.1f} GFLOP/s" for n, g in gemm.items()))
    if args.stage in ("warmup", "all"):
        for gan in ("no GAN", "GAN"):
            print_table(f"warm-up step (gear tokenizer-init), {gan}", results, ("warmup", gan))
        w = results["ours"][0]["warmup"]
        no_gan, gan = min(w["gan_start"], w["stage_steps"]), max(w["stage_steps"] - w["gan_start"], 0)
        mix = [(no_gan * statistics.median(r["warmup"]["no GAN"]["step_ms"] for r in runs)
                + gan * statistics.median(r["warmup"]["GAN"]["step_ms"] for r in runs)) / w["stage_steps"]
               for runs in results.values()]
        print(f"\nwarm-up mean step over its {w['stage_steps']} steps (GAN from step {w['gan_start']}): "
              + ", ".join(f"{n} {m:.2f} ms" for n, m in zip(results, mix))
              + (f"; speed-up {mix[1] / mix[0]:.2f}x" if len(mix) == 2 else ""))
    if args.stage in ("tune", "all"):
        print_table("tuning step (gear tune, variant gear, GAN on)", results, ("tune", "tune"))


if __name__ == "__main__":
    main()
