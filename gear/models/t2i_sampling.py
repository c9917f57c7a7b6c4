"""Caption-conditioned sampling: prefill the caption into a static KV cache, decode one token at a
time; classifier-free guidance against the learned null caption; temperature, top-k, top-p; one
torch.Generator, so a seed fixes the images."""
from __future__ import annotations

import torch

from gear.models.sampling import filter_logits
from gear.models.t2i_ar import T2IGPT


def _check(model: T2IGPT, text, mask, cfg_scale, temperature, top_k, top_p, generator) -> None:
    model.check_text(text, mask)
    if len(text) == 0:
        raise ValueError("no captions to sample")
    if text.device != model.head.weight.device:
        raise ValueError(f"captions on {text.device}, model on {model.head.weight.device}")
    if generator is not None and generator.device.type != text.device.type:
        raise ValueError(f"generator on {generator.device}, model on {text.device}")
    if cfg_scale < 1.0:
        raise ValueError(f"cfg_scale must be >= 1 (1 = no guidance), got {cfg_scale}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= top_k <= model.cfg.vocab_size:
        raise ValueError(f"top_k must be in [0, {model.cfg.vocab_size}], got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@torch.no_grad()
def generate_t2i(model: T2IGPT, text: torch.Tensor, mask: torch.Tensor, *, cfg_scale: float = 1.0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, use_cache: bool = True, bf16: bool = False) -> torch.Tensor:
    """Token grids (B, L) for captions text (B, P, Dt) with mask (B, P).

    CFG (cfg_scale != 1) runs the batch doubled as [caption; null caption] and samples from
    u + cfg_scale * (c - u) at every token. use_cache=False recomputes the whole sequence at every
    step (the reference for tests). The model runs in eval mode; its mode is restored after."""
    _check(model, text, mask, cfg_scale, temperature, top_k, top_p, generator)
    cfg, device = model.cfg, text.device
    B, L, P = text.shape[0], cfg.seq_len, cfg.text_len
    guided = cfg_scale != 1.0
    out = torch.empty(B, L, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(device) if guided else None
            t_in, m_in = (text.repeat(2, 1, 1), mask.repeat(2, 1)) if guided else (text, mask)
            prefix, valid = model.prefix(t_in, m_in, drop)
            key_valid = torch.cat([valid, valid.new_ones(len(valid), L - 1)], dim=1)
            if use_cache:
                dtype = torch.bfloat16 if bf16 else model.head.weight.dtype
                shape = (len(prefix), cfg.n_head, cfg.total_len, cfg.head_dim)
                cache = [(torch.empty(shape, dtype=dtype, device=device),
                          torch.empty(shape, dtype=dtype, device=device)) for _ in range(cfg.n_layer)]
                h, pos = prefix, 0
            for t in range(L):
                if use_cache:
                    logits = model.trunk(h, key_valid, pos=pos, cache=cache).logits[:, -1]
                    pos += h.shape[1]
                else:
                    done = out[:, :t].repeat(2, 1) if guided else out[:, :t]
                    seq = torch.cat([prefix, model.tok_emb(done)], dim=1)
                    logits = model.trunk(seq, key_valid).logits[:, -1]
                logits = logits.float()
                if guided:
                    c, u = logits.chunk(2)
                    logits = u + cfg_scale * (c - u)
                probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)          # (B, 1)
                out[:, t] = nxt[:, 0]
                if use_cache and t + 1 < L:
                    h = model.tok_emb(nxt.repeat(2, 1) if guided else nxt)
    finally:
        model.train(was_training)
    return out
