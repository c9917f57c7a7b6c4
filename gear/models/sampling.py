"""Sampling from the AR (class- or caption-conditioned): static KV cache, classifier-free guidance, temperature,
top-k and top-p, all driven by one torch.Generator so that a seed fixes the images.

Two ways to run a decoding step. The default attends to the filled prefix of the cache (shapes
grow with the position). `compile=True` runs `decode_step` instead: the token's position is a
tensor and the whole cache is attended under a mask, so every step has the same shapes;
torch.compile traces it once and, on CUDA, replays it as a CUDA graph (mode reduce-overhead):
what makes decoding at small batch fast on a GPU, where the eager loop is bound by kernel launches.
Measured on a 2-core CPU it is slower than the default (README, "Performance"): `gear sample` compiles
it only where params.sample.compile asks."""
from __future__ import annotations

import torch

from gear.models.ar import GPT


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Scale by 1/temperature, then keep the top_k largest logits (0 = all) and the smallest set
    whose probability reaches top_p (1.0 = all); the rest become -inf."""
    if temperature != 1.0:  # x / 1.0 == x exactly: skip the copy
        logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        srt, idx = logits.sort(dim=-1, descending=True)
        probs = srt.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs          # mass of the better tokens; first is 0
        srt = srt.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, srt)
    return logits


def _check(model: GPT, cond: tuple, cfg_scale, cfg_interval, temperature, top_k, top_p, generator) -> None:
    B = model.cond.check(None, *cond)
    if B == 0:
        raise ValueError("nothing to sample: the condition holds no rows")
    device = cond[0].device
    if device != model.head.weight.device:
        raise ValueError(f"condition on {device}, model on {model.head.weight.device}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator on {generator.device}, model on {device}")
    if cfg_scale < 1.0:
        raise ValueError(f"cfg_scale must be >= 1 (1 = no guidance), got {cfg_scale}")
    if not (len(cfg_interval) == 2 and 0.0 <= cfg_interval[0] <= cfg_interval[1] <= 1.0):
        raise ValueError(f"cfg_interval must be (lo, hi) with 0 <= lo <= hi <= 1, got {cfg_interval}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= top_k <= model.cfg.vocab_size:
        raise ValueError(f"top_k must be in [0, {model.cfg.vocab_size}], got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    model.cond.check(B, *cond, values=True)   # the one host sync (class labels), before any work


def decode_step(model: GPT, h: torch.Tensor, pos: torch.Tensor, cache: list,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits (B, K) of one position `pos` (0-d long tensor) whose input embeddings are h
    (B, 1, D); writes its keys and values into `cache` and attends to the valid positions 0..pos
    of it (key_valid (B, T): the caption's; None: all)."""
    T = cache[0][0].shape[2]
    mask = (torch.arange(T, device=h.device) <= pos).view(1, 1, 1, T)
    if key_valid is not None:  # as GPT.trunk's mask: the query sees itself even if invalid
        mask = (mask & key_valid[:, None, None, :]) | (torch.arange(T, device=h.device) == pos).view(1, 1, 1, T)
    return model.trunk(h, pos=pos, cache=cache, mask=mask).logits[:, -1].float()


_COMPILED: dict[str, object] = {}


def compiled_decode_step(device: torch.device):
    """decode_step under torch.compile, one per device type (a second compile of the same code
    would only hit its cache). CUDA: mode reduce-overhead, i.e. CUDA graphs."""
    if device.type not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[device.type] = torch.compile(decode_step, fullgraph=True, dynamic=False, mode=mode)
    return _COMPILED[device.type]


@torch.no_grad()
def generate(model: GPT, *cond: torch.Tensor, cfg_scale: float = 1.0,
             cfg_interval: tuple[float, float] = (0.0, 1.0), temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, generator: torch.Generator | None = None, use_cache: bool = True,
             bf16: bool = False, compile: bool = False) -> torch.Tensor:
    """Sample token grids (B, L) for the condition: class labels (B,), or captions text (B, P, Dt)
    with their mask (B, P).

    CFG (cfg_scale != 1) runs the batch doubled as [cond; null] (the null class or the learned
    null caption) and samples from u + cfg_scale * (c - u) for token k with lo <= k / L < hi,
    from c elsewhere. use_cache=False recomputes the whole sequence at every step (the reference
    for tests). bf16: autocast to bfloat16 (and a bf16 cache). compile: the fixed-shape
    decode_step under torch.compile (module doc; with the cache; a caption's prefill runs eager).
    The model is run in eval mode; its train/eval mode is restored afterwards."""
    _check(model, cond, cfg_scale, cfg_interval, temperature, top_k, top_p, generator)
    cfg, device = model.cfg, cond[0].device
    B, L = len(cond[0]), cfg.seq_len
    guided = cfg_scale != 1.0
    drop = None
    if guided:  # [cond; null]
        cond = tuple(torch.cat([c, c]) for c in cond)
        drop = torch.arange(2 * B, device=device) >= B
    out = torch.empty(B, L, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            prefix, valid = model.cond(*cond, drop=drop)
            key_valid = None if valid is None else torch.cat([valid, valid.new_ones(len(valid), L - 1)], dim=1)
            if use_cache:
                dtype = torch.bfloat16 if bf16 else model.head.weight.dtype
                shape = (len(prefix), cfg.n_head, cfg.total_len, cfg.head_dim)
                # zeros, not empty: the fixed-shape step weighs unwritten slots by exactly 0, and 0 * NaN is NaN
                alloc = torch.zeros if compile else torch.empty
                cache = [(alloc(shape, dtype=dtype, device=device), alloc(shape, dtype=dtype, device=device))
                         for _ in range(cfg.n_layer)]
                if compile:
                    step = compiled_decode_step(device)
                    for k, v in cache:  # fixed addresses: CUDA graphs may write them in place
                        torch._dynamo.mark_static_address(k)
                        torch._dynamo.mark_static_address(v)
                h, pos = prefix, 0                                 # prefill: the condition
            for t in range(L):
                if use_cache and compile and h.shape[1] == 1:
                    logits = step(model, h, torch.tensor(pos, device=device), cache, key_valid)
                elif use_cache:
                    logits = model.trunk(h, key_valid, pos=pos, cache=cache).logits[:, -1]
                else:
                    done = out[:, :t].repeat(2, 1) if guided else out[:, :t]
                    logits = model.trunk(torch.cat([prefix, model.tok_emb(done)], dim=1), key_valid).logits[:, -1]
                logits = logits.float()
                if guided:
                    c, u = logits.chunk(2)
                    logits = u + cfg_scale * (c - u) if cfg_interval[0] <= t / L < cfg_interval[1] else c
                probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)          # (B, 1)
                out[:, t] = nxt[:, 0]
                if use_cache and t + 1 < L:
                    pos += h.shape[1]
                    h = model.tok_emb(nxt.repeat(2, 1) if guided else nxt)
    finally:
        model.train(was_training)
    return out
