"""The tokenizer's own objective L_VQ, shared by `tokenizer-init` and `tune`.

L_VQ = recon_weight * L1/L2 + perceptual_weight * perceptual + gan_weight * hinge-G (from
gan_start) + the quantizer's weighted codebook / commitment / entropy terms. The discriminator is
trained with the hinge loss on detached reconstructions.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gear.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from gear.train.parallel import clip_grad_norm


class TokenizerObjective:
    """`gan_start` counts the caller's own steps: tokenizer-init passes tokenizer.gan_start, tune
    passes tune.gan_start (its step 0 is not the warm-up's step 0)."""

    def __init__(self, params, perceptual: nn.Module | None, discriminator: nn.Module | None, gan: bool = True,
                 gan_start: int | None = None):
        t = params.tokenizer
        self.t = t
        self.perceptual = perceptual if t.perceptual != "none" and t.perceptual_weight > 0 else None
        self.disc = discriminator if gan and t.gan_weight > 0 else None
        self.gan_start = t.gan_start if gan_start is None else gan_start
        self.disc_core = getattr(self.disc, "module", self.disc)  # without a DDP wrapper

    def gan_active(self, step: int) -> bool:
        return self.disc is not None and step >= self.gan_start

    def generator_loss(self, x: Tensor, out, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        t = self.t
        recon = out.recon.float()
        rec = F.l1_loss(recon, x) if t.recon_loss == "l1" else F.mse_loss(recon, x)
        logs = {"recon": rec.detach()}
        loss = t.recon_weight * rec
        if self.perceptual is not None:
            p = self.perceptual(recon, x)
            loss = loss + t.perceptual_weight * p
            logs["perceptual"] = p.detach()
        if self.gan_active(step):
            # the unwrapped discriminator with frozen weights: the generator's gradient reaches
            # the reconstruction only (its weight gradients were computed, all-reduced under
            # DDP, and then discarded by the discriminator step's zero_grad)
            with weights_frozen(self.disc_core):
                g = hinge_g_loss(self.disc_core(recon))
            loss = loss + t.gan_weight * g
            logs["gan_g"] = g.detach()
        for name, value in out.q.losses.items():
            loss = loss + value
            logs[name] = value.detach()
        return loss, logs

    def discriminator_loss(self, x: Tensor, recon: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        # two forwards, as the release: the discriminator's BatchNorm normalises real and fake
        # images each with their own batch statistics (one forward over [real; fake] would mix
        # them). The generator's term above is a forward of the fakes alone, as there.
        real = self.disc(x)
        fake = self.disc(recon.detach().float())
        d = hinge_d_loss(real, fake)
        return d, {"gan_d": d.detach(), "logit_real": real.mean().detach(), "logit_fake": fake.mean().detach()}


# ---- builders and small loop helpers shared by tokenizer-init and tune ------------------------

def build_tokenizer(params, init: str = "scratch") -> nn.Module:
    """A tokenizer shaped by params; `init` = 'scratch', a checkpoint file (LlamaGen layout or
    ours) or a folder written by one of our stages."""
    from pathlib import Path

    from gear.artifacts import check_tokenizer_matches, load_weights, read_config
    from gear.models.llamagen import load_tokenizer_state
    from gear.models.tokenizer import Tokenizer, TokenizerConfig

    model = Tokenizer(TokenizerConfig.from_params(params))
    if init == "scratch":
        return model
    path = Path(init)
    if path.is_dir():
        check_tokenizer_matches(read_config(path, "tokenizer"), params, path)
        return load_weights(model, path / "tokenizer.safetensors", "tokenizer weights")
    load_tokenizer_state(model, path, key=params.tokenizer.init_key)
    return model


def build_discriminator(params) -> nn.Module:
    t = params.tokenizer
    return PatchDiscriminator(ch=t.disc_ch, n_layers=t.disc_layers)


def build_perceptual(params, device) -> nn.Module | None:
    """LPIPS-VGG (local weights) or the frozen teacher's patch-feature distance (offline)."""
    from gear.models.perceptual import make_perceptual

    t = params.tokenizer
    if t.perceptual == "none" or t.perceptual_weight == 0:
        return None
    if t.perceptual == "lpips":
        return make_perceptual("lpips", weights_path=t.lpips_weights).to(device)
    from gear.teachers import load_teacher

    teacher = load_teacher(params, device)
    grid = params.data.resolution // t.downsample
    return make_perceptual("teacher", feature_fn=lambda img: teacher.features(img, grid, grad=True)).to(device)


@contextlib.contextmanager
def weights_frozen(module: nn.Module):
    """requires_grad False on the module's parameters for the duration (train/eval mode untouched:
    a discriminator's batch norm keeps using batch statistics); restores each flag afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def adamw(parameters, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over every tensor; ~3x cheaper than the default
    foreach path for the tokenizer's ~100 small tensors); the same update rule."""
    return torch.optim.AdamW(parameters, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)


def clip_and_step(loss: Tensor, opt: torch.optim.Optimizer, clip: float) -> Tensor:
    """zero_grad -> backward -> clip -> step; returns the pre-clip grad norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    norm = clip_grad_norm(params, clip if clip > 0 else float("inf"))  # a sharded AR's too
    opt.step()
    return norm.detach()


class CodebookWindow:
    """Index histogram over the steps since the last log (summed over ranks): usage, entropy,
    effective size, from gear.metrics.codebook. Saved with the training state: a save falls
    between two logs."""

    def __init__(self, K: int, device):
        self.hist = torch.zeros(K, dtype=torch.float64, device=device)

    def update(self, indices: Tensor) -> None:
        self.hist += torch.bincount(indices.detach().reshape(-1), minlength=len(self.hist)).to(self.hist)

    def result(self, rt) -> dict[str, float]:
        import torch.distributed as dist

        from gear.metrics.codebook import histogram_stats

        hist = self.hist.clone()
        if rt.distributed:
            dist.all_reduce(hist)
        self.hist.zero_()
        s = histogram_stats(hist)
        return {"usage": s["usage"], "usage_entropy": s["entropy"], "effective_size": s["effective_size"]}

    def state_dict(self) -> dict:
        return {"hist": self.hist.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.hist.copy_(state["hist"])
