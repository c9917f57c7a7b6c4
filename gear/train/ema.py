"""Exponential moving average of a model's parameters (buffers are copied)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # One foreach call instead of a Python loop over tensors (the loop was ~2% of a tokenizer
        # step). Parameters are listed at each update, not once: FSDP replaces them when it shards.
        ema, live = list(self.model.parameters()), [p.detach() for p in model.parameters()]
        if len(ema) != len(live):
            raise ValueError(f"EMA holds {len(ema)} parameters, the model {len(live)}")
        torch._foreach_lerp_(ema, live, 1.0 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd)
