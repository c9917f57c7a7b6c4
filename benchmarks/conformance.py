"""Conformance with the public release: our components and the release's own, run on identical
weights and inputs, and the largest differences printed (issue 29, README "Fidelity").

The release is a checkout of Tencent-Hunyuan/GEAR given by --reference PATH or $GEAR_REFERENCE.
Nothing of it lives in this repository: its files are imported from that path at run time, by
file where they import only torch. Without a checkout the script says why in one line (exit 2).
Opt-in, not in CI.

Usage:
  GEAR_REFERENCE=/path/to/GEAR python benchmarks/conformance.py [--seed N] [--tol 1e-5]

Parts (float32 on the CPU, small shapes; each side builds its model, the release's weights are
randomised and loaded into ours strictly through our public-checkpoint loaders):
  vq    models/vq_model.py VQModel in train mode (the losses exist only there) against our
        Tokenizer: reconstruction, distances, indices, codebook / commitment / entropy terms
  lfq, ibq  models/lfq_model.py LFQ_16 (Open-MAGVIT2) and models/ibq_model.py IBQ_16 (VQGAN), small
        and randomised; then the same quantities. Each of the three tokenizers is saved as the
        release saves it ({"vq": state_dict}) and loaded from that file into ours (tokenizer.arch
        vq16 / lfq16 / ibq16) strictly. LFQ / IBQ distances are inner products of unbounded
        latents (|d| ~ 10-100 here): those rows are relative to the release's largest |d|. LFQ's
        distance is -2 <z, c> there and |z - c|^2 here: they differ by a per-token constant,
        removed (each token's mean) before comparing; argmin, GEAR's softmax(-d / tau) and the
        entropy term do not see it. The soft-branch rows differentiate a fixed read-out of
        softmax(-d / 0.1) w.r.t. the encoder on both sides
  gpt   models/llamagen.py Transformer (dropout off: eval mode) against our GPT: logits and the
        tap hidden state, from token indices and from a code distribution (GEAR's soft input)
  disc  src/losses: NLayerDiscriminator and hinge_d_loss, the D step as the release runs it
        (D(real), D(fake)) against ours: loss, every weight gradient, BatchNorm running stats;
        and the generator's GAN term -mean(D(fake))
  entropy  models/vq_model.py compute_entropy_loss against ours on 2 gloo processes (value and the
        rank-averaged gradient), and ours against one process on the whole batch
  gear  one whole GEAR iteration (src/train_gear.py's loop body: VQ step with the soft alignment,
        discriminator step, AR + projector step, each AdamW-stepped) against gear/train/gear_step.py
        in tune's order, from identical weights and inputs: each module's parameter update against
        the release's, its worst tensor (relative); the noise floor is the release against itself
        with its tokenizer, AR and projector in float64
A row passes when its largest absolute difference is within --tol (indices: equal); a row that
carries the release's own noise floor (the soft-branch gradients) passes within 3x that floor.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILES = ("models/vq_model.py", "models/llamagen.py", "src/losses/discriminator.py", "src/losses/losses.py",
         "models/lfq_model.py", "models/ibq_model.py")


def _import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses under `from __future__ import annotations` look it up
    spec.loader.exec_module(module)
    return module


def load_reference(path: str | None):
    """(vq_model, llamagen, discriminator, losses, lfq_model, ibq_model) modules of the release, or
    a one-line reason (lfq_model / ibq_model also need einops)."""
    if not path:
        return "no checkout of the release given (--reference PATH or GEAR_REFERENCE)"
    root = Path(path).expanduser().resolve()
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        return f"{root} is not a checkout of the GEAR release (no {', '.join(missing)})"
    try:
        vq = _import_file(root / FILES[0], "_ref_vq_model")
        gpt = _import_file(root / FILES[1], "_ref_llamagen")
        # src/losses is a package (relative imports; LPIPS needs torchvision): import it as one
        sys.path.insert(0, str(root))
        try:
            warnings.filterwarnings("ignore", category=FutureWarning)  # its torch.cuda.amp decorators
            losses = importlib.import_module("src.losses.losses")
            disc = importlib.import_module("src.losses.discriminator")
        finally:
            sys.path.remove(str(root))
        lfq = _import_file(root / FILES[4], "_ref_lfq_model")
        ibq = _import_file(root / FILES[5], "_ref_ibq_model")
    except ImportError as e:
        return f"the release at {root} does not import here ({e})"
    return vq, gpt, disc, losses, lfq, ibq


def diff(a, b) -> float:
    import torch
    return (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()


def rel_diff(a, b) -> float:
    """max |a - b| over max |b|: for quantities whose scale is the data's."""
    import torch
    return diff(a, b) / max(torch.as_tensor(b).double().abs().max().item(), 1e-30)


# ---- the parts: each returns rows (quantity, max |difference|) ---------------------------------

def part_vq(ref_vq, tmp: Path) -> list[tuple[str, float]]:
    import torch

    from gear.models.tokenizer import Tokenizer, TokenizerConfig

    K, code_dim, mult, z = 64, 8, [1, 2], 32
    ref = ref_vq.VQModel(ref_vq.ModelArgs(codebook_size=K, codebook_embed_dim=code_dim, codebook_l2_norm=True,
                                          commit_loss_beta=0.25, entropy_loss_ratio=0.05, encoder_ch_mult=mult,
                                          decoder_ch_mult=mult, z_channels=z))
    with torch.no_grad():
        ref.quantize.embedding.weight.normal_()  # spread codes: many in use, a generic argmin
    ours = Tokenizer(TokenizerConfig(quantizer="vq", ch=128, ch_mult=mult, enc_res_blocks=2, dec_res_blocks=3,
                                     z_channels=z, attn_lowest=True, norm_groups=32, codebook_size=K,
                                     code_dim=code_dim, l2_norm=True, commit_weight=0.25, codebook_weight=1.0,
                                     entropy_weight=0.05, entropy_temperature=0.01))
    return _tokenizer_rows(
        "vq", ref, ours, tmp, lambda d, r_d: ("vq distances", diff(d, r_d)),
        lambda q, r_quant, r_loss: [("vq codebook loss", diff(q.losses["codebook"], r_loss[0])),
                                    ("vq commitment loss", diff(q.losses["commit"], r_loss[1]))],
        soft_branch=False)


def _tokenizer_rows(name: str, ref, ours, tmp: Path, distances, middle, soft_branch: bool = True):
    """The release's tokenizer and ours (loaded from its file) on one batch in train mode: the
    reconstruction, `distances(ours, release)` (one row), the indices, the rows of `middle(ours'
    quantizer output, release z_q, release (quant, commit, entropy) losses)`, the entropy term and
    (lfq, ibq) GEAR's soft-branch gradient."""
    import torch

    _load_through_a_file(ref, ours, tmp)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ref.train(); ours.train()
    r_dec, r_quant, r_loss, (_, _, r_idx), r_d = ref(x, return_distance=True)
    out = ours(x)
    q, d = out.q, out.q.dist.reshape(-1, r_d.shape[-1])
    return [(f"{name} reconstruction", diff(out.recon, r_dec)),
            distances(d, r_d),
            (f"{name} indices (count unequal)", float((q.indices.flatten() != r_idx.flatten()).sum())),
            *middle(q, r_quant, r_loss),
            (f"{name} entropy term", diff(q.losses["entropy"], r_loss[2][0])),
            *([_soft_branch_gradient(name, ours, ref, x, d, r_d)] if soft_branch else [])]


def _randomise(model) -> None:
    """Every weight off its init (GroupNorm affines are 1 / 0 at init): a generic network."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def _load_through_a_file(ref, ours, tmp: Path) -> None:
    """The release's tokenizer saved as its trainers save it, loaded into ours from that file."""
    import torch

    from gear.models.llamagen import load_tokenizer_state

    path = tmp / "release.pt"
    torch.save({"vq": ref.state_dict(), "steps": 0}, path)
    load_tokenizer_state(ours, path)


def _soft_branch_gradient(name: str, ours, ref, x, d, r_d) -> tuple[str, float, float]:
    """GEAR's soft branch on both sides: a fixed read-out of softmax(-d / 0.1), its gradient
    w.r.t. every encoder weight, relative to the release's largest entry. softmax at tau 0.1
    over distances of size 10-100 turns float32 noise into ~1e-5 relative here, so the row
    carries the release's own noise floor: the release against itself on channels_last tensors
    (the same math through other conv kernels)."""
    import copy

    import torch

    w = torch.randn(d.shape[-1], 8, generator=torch.Generator().manual_seed(7))
    read_out = lambda dist: ((-dist / 0.1).softmax(-1) @ w).square().sum()
    names, ours_p = zip(*ours.encoder.named_parameters())
    ref_p = [dict(ref.encoder.named_parameters())[n] for n in names]  # same names, other order
    ours_g = torch.autograd.grad(read_out(d), ours_p, retain_graph=True)
    ref_g = torch.autograd.grad(read_out(r_d), ref_p, retain_graph=True)
    twin = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    twin_d = twin(x.contiguous(memory_format=torch.channels_last), return_distance=True)[-1]
    twin_g = torch.autograd.grad(read_out(twin_d), [dict(twin.encoder.named_parameters())[n] for n in names])
    scale = max(g.abs().max().item() for g in ref_g)
    return (f"{name} soft-branch encoder gradient (relative)", max(diff(a, b) for a, b in zip(ours_g, ref_g)) / scale,
            max(diff(a, b) for a, b in zip(twin_g, ref_g)) / scale)


def part_lfq(ref_lfq, tmp: Path) -> list[tuple[str, float]]:
    from gear.models.tokenizer import Tokenizer, TokenizerConfig

    K, mult, blocks = 64, [1, 2], 2
    ref = ref_lfq.LFQ_16(codebook_size=K, codebook_embed_dim=6, z_channels=6, ch=32, ch_mult=mult,
                         num_res_blocks=blocks, entropy_loss_ratio=0.05, commit_loss_beta=0.25)
    _randomise(ref)
    ours = Tokenizer(TokenizerConfig.release_lfq16(ch=32, ch_mult=mult, enc_res_blocks=blocks, dec_res_blocks=blocks,
                                                   codebook_size=K, code_dim=6, z_channels=6))
    centred = lambda t: t - t.mean(-1, keepdim=True)
    return _tokenizer_rows(
        "lfq", ref, ours, tmp,
        lambda d, r_d: ("lfq distances, per-token centred (relative)", rel_diff(centred(d), centred(r_d))),
        lambda q, r_quant, r_loss: [("lfq code values z_q", diff(q.z_q, r_quant)),
                                    ("lfq commitment loss", diff(q.losses["commit"], r_loss[1]))])


def part_ibq(ref_ibq, tmp: Path) -> list[tuple[str, float]]:
    from gear.models.tokenizer import Tokenizer, TokenizerConfig

    K, mult, blocks, dim = 64, [1, 2], 2, 16
    ref = ref_ibq.IBQ_16(codebook_size=K, codebook_embed_dim=dim, z_channels=dim, ch=32, ch_mult=mult,
                         num_res_blocks=blocks, attn_resolutions=[8], resolution=16, entropy_loss_ratio=0.05,
                         commit_loss_beta=0.25)
    _randomise(ref)
    ours = Tokenizer(TokenizerConfig.release_ibq16(ch=32, ch_mult=mult, enc_res_blocks=blocks,
                                                   dec_res_blocks=blocks + 1, codebook_size=K, code_dim=dim,
                                                   z_channels=dim))
    return _tokenizer_rows(
        "ibq", ref, ours, tmp, lambda d, r_d: ("ibq distances (relative)", rel_diff(d, r_d)),
        lambda q, r_quant, r_loss: [("ibq code values z_q", diff(q.z_q, r_quant)),
                                    ("ibq quant loss (codebook + commitment + double)",
                                     diff(q.losses["codebook"] + q.losses["commit"], r_loss[0]))])


def part_gpt(ref_gpt) -> list[tuple[str, float]]:
    import torch

    from gear.models.ar import GPT, GPTConfig
    from gear.models.llamagen_gpt import from_llamagen

    cfg = GPTConfig(vocab_size=64, grid=4, n_layer=3, dim=64, n_head=4, num_classes=10, class_dropout=0.1,
                    token_dropout=0.0)
    ref = ref_gpt.Transformer(ref_gpt.ModelArgs(
        dim=cfg.dim, n_layer=cfg.n_layer, n_head=cfg.n_head, vocab_size=cfg.vocab_size, block_size=cfg.seq_len,
        num_classes=cfg.num_classes, cls_token_num=1, class_dropout_prob=cfg.class_dropout, token_dropout_p=0.0,
        resid_dropout_p=0.0, ffn_dropout_p=0.0, multiple_of=cfg.ffn_multiple))
    with torch.no_grad():
        for p in ref.parameters():  # the release zero-inits its head: random weights everywhere instead
            p.normal_(0.0, 0.1).add_(1.0 if p.dim() == 1 else 0.0)
    ours = GPT(cfg)
    ours.load_state_dict(from_llamagen(ref.state_dict(), cfg))
    ref.eval(); ours.eval()
    B, L, tap = 2, cfg.seq_len, 2
    x, labels = torch.randint(0, cfg.vocab_size, (B, L)), torch.randint(0, cfg.num_classes, (B,))
    p = torch.softmax(torch.randn(B, L, cfg.vocab_size) / 0.1, -1)
    with torch.no_grad():
        r_logits, r_hidden = ref(x[:, :-1], labels, return_hidden_at=tap)
        o = ours(x, labels, return_layers=(tap,))
        _, r_soft = ref(p[:, :-1], labels, return_hidden_at=tap, early_exit=True)
        o_soft = ours(p, labels, stop_at_layer=tap)
    return [("gpt logits (indices)", diff(o.logits, r_logits)),
            (f"gpt block-{tap} hidden (indices)", diff(o.hidden[tap], r_hidden)),
            (f"gpt block-{tap} hidden (code distribution, early exit)", diff(o_soft.hidden[tap], r_soft))]


def part_disc(ref_disc, ref_losses) -> list[tuple[str, float]]:
    import torch

    from gear.config import params_from_dict
    from gear.models.discriminator import PatchDiscriminator
    from gear.train.tokenizer_objective import TokenizerObjective

    ref = ref_disc.NLayerDiscriminator(input_nc=3, ndf=16, n_layers=3)
    ref.apply(ref_disc.weights_init)
    ours = PatchDiscriminator(ch=16, n_layers=3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 1.6 - 0.9
    # the release's discriminator step (ReconstructionLossVQ._forward_discriminator, factor 1)
    r_loss = ref_losses.hinge_d_loss(ref(real.detach().requires_grad_(True)), ref(fake.detach()))
    r_loss.backward()
    params = params_from_dict({"tokenizer": {"perceptual": "none", "gan_weight": 0.1, "gan_start": 0}})
    objective = TokenizerObjective(params, None, ours, gan_start=0)
    o_loss, _ = objective.discriminator_loss(real, fake)
    o_loss.backward()
    grads = max(diff(a.grad, b.grad) for a, b in zip(ours.parameters(), ref.parameters()))
    stats = max(diff(a, b) for a, b in zip(ours.buffers(), ref.buffers()))
    # the generator's GAN term: -mean(D(fake)), a forward of the fakes alone
    with torch.no_grad():
        r_g = -ref(fake).mean()
    _, logs = objective.generator_loss(real, _Out(fake), step=0)
    return [("disc hinge loss", diff(o_loss, r_loss)), ("disc weight gradients", grads),
            ("disc BatchNorm running stats", stats), ("generator GAN term", diff(logs["gan_g"], r_g))]


def _entropy_rank(rank: int, world: int, root: str, port: int, out: str) -> None:
    """One of `world` gloo processes: the release's compute_entropy_loss and ours on this rank's
    half of the tokens (logits x @ W, W shared); gradients averaged over ranks as DDP does."""
    import json

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ref_vq = _import_file(Path(root) / FILES[0], "_ref_vq_model")
    from gear.models.quantizers import entropy_penalty

    torch.manual_seed(0)
    x, W = torch.randn(world * 64, 8), torch.randn(8, 128)
    mine = x.chunk(world)[rank]
    rows = {}
    for side in ("release", "ours"):
        w = W.clone().requires_grad_(True)
        logits = mine @ w
        term = (ref_vq.compute_entropy_loss(logits.clone(), temperature=0.3) if side == "release"
                else entropy_penalty(logits / 0.3))
        term.backward()
        value, grad = term.detach().clone(), w.grad.clone()
        dist.all_reduce(value); dist.all_reduce(grad)
        rows[side] = (value / world, grad / world)
    if rank == 0:
        full = W.clone().requires_grad_(True)
        term = entropy_penalty(x @ full / 0.3, over_ranks=False)  # one process, the whole batch
        term.backward()
        d = lambda a, b: (a - b).abs().max().item()
        json.dump({"entropy term, 2 ranks: value": d(rows["ours"][0], rows["release"][0]),
                   "entropy term, 2 ranks: gradient": d(rows["ours"][1], rows["release"][1]),
                   "entropy term, 2 ranks vs 1 process: gradient": d(rows["ours"][1], full.grad)},
                  open(out, "w"))
    dist.destroy_process_group()


def part_entropy_ranks(root: Path) -> list[tuple[str, float]]:
    import json
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "entropy.json")
        mp.spawn(_entropy_rank, args=(2, str(root), port, out), nprocs=2)
        return list(json.loads(Path(out).read_text()).items())


# ---- one whole GEAR iteration ------------------------------------------------------------------

RELEASE_HELPERS = ("requires_grad", "build_repa_projector", "ProjectorBank", "repa_align_loss", "project_repa")


def _release_helpers(root: Path) -> dict:
    """The release's own loop helpers, taken from src/train_gear.py by name (the file itself imports
    accelerate, wandb and the data stack, so it is parsed, not imported)."""
    import ast

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    source = (root / "src/train_gear.py").read_text()
    defs = [n for n in ast.parse(source).body if getattr(n, "name", None) in RELEASE_HELPERS]
    ns = {"torch": torch, "nn": nn, "F": F}
    exec(compile(ast.Module(body=defs, type_ignores=[]), "src/train_gear.py", "exec"), ns)
    return ns


class _Losses(dict):
    """The attribute-and-get access ReconstructionLossVQ reads its OmegaConf config with."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def part_gear_iteration(ref_vq, ref_gpt, ref_losses, root: Path, tmp: Path) -> list[tuple[str, float]]:
    """One full GEAR training iteration on both sides from identical weights and inputs: the
    release's loop body (src/train_gear.py, section 7: VQ generator step with the soft alignment
    through the frozen, early-exiting AR -> discriminator step -> AR + projector step on the hard
    indices, each clipped and stepped with its own AdamW) against ours (gear/stages/tune.py's order:
    tokenizer_step -> ar_step -> discriminator step). Rows: the hard indices; each module's update
    (after - before, mapped into our layout), its worst tensor relative to the release's update
    (_worst_tensor), with the release's own float32 noise floor; the discriminator's BatchNorm
    running statistics (absolute). The release's LPIPS term is stubbed (weight 0 on both sides: its
    weights are a download); class dropout is on and drawn from the same seed on both sides."""
    import contextlib
    import copy

    import torch

    from gear.config import params_from_dict
    from gear.models.ar import GPT, GPTConfig, Projector
    from gear.models.discriminator import PatchDiscriminator
    from gear.models.llamagen import convert_state_dict
    from gear.models.llamagen_gpt import from_llamagen
    from gear.models.tokenizer import Tokenizer, TokenizerConfig
    from gear.train.gear_step import GearKnobs, GearModels, ar_step, tokenizer_step
    from gear.train.tokenizer_objective import TokenizerObjective, adamw, clip_and_step

    h = _release_helpers(root)
    K, code_dim, mult, z, B, res, Dt = 64, 8, [1, 2], 32, 4, 32, 16
    tau, tap = 0.5, 2
    lam, lam_ar, clip, lr, betas, wd = 1.5, 0.5, 1.0, 1e-4, (0.9, 0.999), 0.0  # the release's defaults
    # -- the release's modules (as section 1-3 build them) and ours, loaded from them
    r_vq = ref_vq.VQModel(ref_vq.ModelArgs(codebook_size=K, codebook_embed_dim=code_dim, codebook_l2_norm=True,
                                           commit_loss_beta=0.25, entropy_loss_ratio=0.05, encoder_ch_mult=mult,
                                           decoder_ch_mult=mult, z_channels=z))
    with torch.no_grad():
        r_vq.quantize.embedding.weight.normal_()
    cfg = GPTConfig(vocab_size=K, grid=res // 2, n_layer=3, dim=64, n_head=4, num_classes=10, class_dropout=0.1,
                    token_dropout=0.0)
    r_ar = ref_gpt.Transformer(ref_gpt.ModelArgs(
        dim=cfg.dim, n_layer=cfg.n_layer, n_head=cfg.n_head, vocab_size=K, block_size=cfg.seq_len,
        num_classes=cfg.num_classes, cls_token_num=1, class_dropout_prob=cfg.class_dropout, token_dropout_p=0.0,
        resid_dropout_p=0.0, ffn_dropout_p=0.0, multiple_of=cfg.ffn_multiple))
    with torch.no_grad():
        for p in r_ar.parameters():  # the release zero-inits its head: random weights everywhere instead
            p.normal_(0.0, 0.1).add_(1.0 if p.dim() == 1 else 0.0)
    r_proj = h["ProjectorBank"](in_dim=cfg.dim, hidden=32, out_dims=[Dt])

    class ZeroPerceptual(torch.nn.Module):  # the release's LPIPS at weight 0 (its weights are a download)
        def forward(self, inputs, reconstructions):
            return inputs.new_zeros(())

    stub = ref_losses.PerceptualLoss
    ref_losses.PerceptualLoss = lambda name: ZeroPerceptual()
    try:
        r_loss = ref_losses.ReconstructionLossVQ(_Losses(losses=_Losses(
            reconstruction_loss="l1", reconstruction_weight=1.0, perceptual_loss="lpips", perceptual_weight=0.0,
            discriminator_start=0, discriminator_factor=1.0, discriminator_weight=0.1,
            lecam_regularization_weight=0.0, quantizer_weight=1.0, entropy_weight=1.0)))
    finally:
        ref_losses.PerceptualLoss = stub

    tok = Tokenizer(TokenizerConfig(quantizer="vq", ch=128, ch_mult=mult, enc_res_blocks=2, dec_res_blocks=3,
                                    z_channels=z, attn_lowest=True, norm_groups=32, codebook_size=K,
                                    code_dim=code_dim, l2_norm=True, commit_weight=0.25, codebook_weight=1.0,
                                    entropy_weight=0.05, entropy_temperature=0.01))
    _load_through_a_file(r_vq, tok, tmp)
    ar = GPT(cfg)
    ar.load_state_dict(from_llamagen(r_ar.state_dict(), cfg))
    proj = Projector(cfg.dim, Dt, hidden=32)
    proj.load_state_dict(_projector_state(r_proj, proj))
    disc = PatchDiscriminator(ch=64, n_layers=3)
    disc.load_state_dict(r_loss.discriminator.state_dict(), strict=True)
    params = params_from_dict({"tokenizer": {"perceptual": "none", "gan_weight": 0.1, "gan_start": 0,
                                             "recon_loss": "l1", "recon_weight": 1.0}})

    # the four modules' states in our layout
    def states(vq, gpt, pr, d) -> dict:
        out = {"tokenizer": convert_state_dict(vq.state_dict(), tok), "AR": from_llamagen(gpt.state_dict(), cfg),
               "projector": _projector_state(pr, proj), "discriminator": d.state_dict()}
        return {m: {k: v.detach().clone() for k, v in sd.items()} for m, sd in out.items()}

    before = states(r_vq, r_ar, r_proj, r_loss.discriminator)
    x = torch.rand(B, 3, res, res) * 2 - 1
    labels = torch.randint(0, cfg.num_classes, (B,))
    zs = [torch.randn(B, cfg.seq_len, Dt)]

    # -- the release: section 7's loop body, single process (accelerator.backward -> backward,
    # clip_grad_norm_ -> torch's), warm-up 0: constant lr
    def release_iteration(r_vq, r_ar, r_proj, r_loss, x, zs):
        adam = lambda ps: torch.optim.AdamW(ps, lr=lr, betas=betas, weight_decay=wd, eps=1e-8)
        opt_ar, opt_vq, opt_disc = adam([*r_ar.parameters(), *r_proj.parameters()]), adam(r_vq.parameters()), \
            adam(r_loss.parameters())
        L, global_step = cfg.seq_len, 0
        r_vq.train()
        recon, _, (vq_l, commit_l, ent_l, _), (_, _, indices), d = r_vq(x, return_distance=True)
        r_ar.eval()
        h["requires_grad"](r_ar, False); h["requires_grad"](r_proj, False)
        vq_total, _ = r_loss(x, recon, quantizer_losses=(vq_l, commit_l, ent_l), global_step=global_step,
                             mode="generator")
        soft = torch.softmax(-d / tau, dim=-1).view(B, L, K)
        _, hidden = r_ar(idx=soft[:, :-1, :], cond_idx=labels, return_hidden_at=tap, early_exit=True)
        vq_total = vq_total + lam * h["repa_align_loss"](h["project_repa"](hidden, 1, r_proj), zs)
        vq_total.backward()
        torch.nn.utils.clip_grad_norm_(r_vq.parameters(), clip)
        opt_vq.step(); opt_vq.zero_grad(set_to_none=True)
        d_loss, _ = r_loss(x, recon, quantizer_losses=(vq_l, commit_l, ent_l), global_step=global_step,
                           mode="discriminator")
        d_loss.backward()
        torch.nn.utils.clip_grad_norm_(r_loss.parameters(), clip)
        opt_disc.step(); opt_disc.zero_grad(set_to_none=True)
        r_ar.train()
        h["requires_grad"](r_ar, True); h["requires_grad"](r_proj, True)
        targets = indices.detach().view(B, L)
        torch.manual_seed(1)  # the class-dropout draw
        logits, hidden_ar = r_ar(idx=targets[:, :-1], cond_idx=labels, return_hidden_at=tap)
        ar_total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        ar_total = ar_total + lam_ar * h["repa_align_loss"](h["project_repa"](hidden_ar, 1, r_proj), zs)
        ar_total.backward()
        torch.nn.utils.clip_grad_norm_([*r_ar.parameters(), *r_proj.parameters()], clip)
        opt_ar.step(); opt_ar.zero_grad(set_to_none=True)
        return states(r_vq, r_ar, r_proj, r_loss.discriminator), indices

    # its noise floor: the release against itself with the tokenizer, AR and projector in float64
    # (its loss head casts to float32 itself). Adam's first step is lr * g / (|g| + eps): an entry
    # whose float32 gradient is rounding noise, |g| ~ eps, moves by up to lr either way
    twin = [copy.deepcopy(m).double() for m in (r_vq, r_ar, r_proj)] + [copy.deepcopy(r_loss)]
    floor_states, _ = release_iteration(*twin, x.double(), [z.double() for z in zs])
    release, indices = release_iteration(r_vq, r_ar, r_proj, r_loss, x, zs)

    # -- ours: gear/stages/tune.py's loop body (fp32: no autocast)
    rt = type("Rt", (), {"autocast": contextlib.nullcontext, "conv_autocast": contextlib.nullcontext})()
    models = GearModels(tok, ar, proj, TokenizerObjective(params, None, disc, gan=True, gan_start=0))
    knobs = GearKnobs(mode="gear", tau=tau, align_weight=lam, align_weight_ar=lam_ar, align_layer=tap, grad_clip=clip)
    o_tok, o_ar = adamw(tok.parameters(), lr, betas, wd), adamw([*ar.parameters(), *proj.parameters()], lr, betas, wd)
    o_d = adamw(disc.parameters(), lr, betas, wd)
    out, _ = tokenizer_step(models, knobs, o_tok, x, labels, zs[0], 0, rt)
    torch.manual_seed(1)
    ar_step(models, knobs, o_ar, out.q.indices, labels, zs[0], rt)
    loss_d, _ = models.objective.discriminator_loss(x, out.recon)
    clip_and_step(loss_d, o_d, clip)
    ours = {"tokenizer": tok.state_dict(), "AR": ar.state_dict(), "projector": proj.state_dict(),
            "discriminator": disc.state_dict()}

    unequal = float((out.q.indices.flatten() != indices.flatten()).sum())
    rows = [("gear iteration: hard indices (count unequal)", unequal)]
    for m in ("tokenizer", "AR", "projector", "discriminator"):
        names = [k for k, v in before[m].items() if v.is_floating_point() and "running" not in k]
        moved = {k: release[m][k].double() - before[m][k].double() for k in names}
        rows.append((f"gear iteration: {m} update, worst tensor (relative)",
                     _worst_tensor(ours[m], before[m], moved, names, lr),
                     _worst_tensor(floor_states[m], before[m], moved, names, lr)))
    stats = [k for k in before["discriminator"] if "running" in k]
    rows.append(("gear iteration: disc BatchNorm running stats",
                 max(diff(ours["discriminator"][k], release["discriminator"][k]) for k in stats)))
    return rows


def _worst_tensor(after: dict, before: dict, moved: dict, names: list, lr: float) -> float:
    """The largest relative difference of one parameter tensor's update from the release's (`moved`):
    max over tensors of |(after - before) - moved| / |moved|, Euclidean over the tensor's entries.
    Not per entry: Adam's first step is lr * g / (|g| + eps), so an entry whose gradient is
    float32 noise moves by up to lr either way, on either side. Tensors the release moves by less
    than 1% of lr (RMS) are left out: their gradient is zero in exact arithmetic (attention key
    biases: softmax ignores a shift common to all keys), their update rounding noise."""
    def rel(k):
        return ((after[k].double() - before[k].double() - moved[k]).norm() / moved[k].norm()).item()
    return max(rel(k) for k in names if moved[k].square().mean().sqrt() >= 0.01 * lr)


def _projector_state(bank, ours) -> dict:
    """The release's one-teacher ProjectorBank (projs.0.*) in our Projector's layout (net.*)."""
    sd = bank.state_dict()
    return {k: sd[k.replace("net.", "projs.0.")] for k in ours.state_dict()}

class _Out:
    """The fields of a tokenizer output that TokenizerObjective.generator_loss reads."""

    def __init__(self, recon):
        self.recon = recon
        self.q = type("Q", (), {"losses": {}})()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=os.environ.get("GEAR_REFERENCE"),
                    help="checkout of the GEAR release (default: $GEAR_REFERENCE)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-5, help="float32 noise: largest |difference| that passes")
    args = ap.parse_args(argv)
    ref = load_reference(args.reference)
    if isinstance(ref, str):
        print(f"conformance: {ref}", file=sys.stderr)
        return 2
    import torch

    import tempfile

    ref_vq, ref_gpt, ref_disc, ref_losses, ref_lfq, ref_ibq = ref
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    rows = []
    root = Path(args.reference).expanduser().resolve()
    with tempfile.TemporaryDirectory() as tmp:
        for part in (lambda: part_vq(ref_vq, Path(tmp)), lambda: part_lfq(ref_lfq, Path(tmp)),
                     lambda: part_ibq(ref_ibq, Path(tmp)), lambda: part_gpt(ref_gpt),
                     lambda: part_disc(ref_disc, ref_losses), lambda: part_entropy_ranks(root),
                     lambda: part_gear_iteration(ref_vq, ref_gpt, ref_losses, root, Path(tmp))):
            torch.manual_seed(args.seed)
            rows += part()
    width = max(len(row[0]) for row in rows)
    print(f"{'quantity':<{width}}  max |ours - release|  tolerance  within")
    bad = 0
    for name, d, *floor in rows:
        tol = 0.0 if "count" in name else max(args.tol, 3 * floor[0]) if floor else args.tol
        ok = d <= tol
        bad += not ok
        note = f"  (release vs itself: {floor[0]:.1e})" if floor else ""
        print(f"{name:<{width}}  {d:20.3e}  {tol:9.1e}  {'yes' if ok else 'NO'}{note}")
    print(f"{len(rows) - bad} of {len(rows)} within tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
