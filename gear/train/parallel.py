"""Data-parallel training of the AR and its projector: DDP (every process holds everything) or
FSDP2 (`compute.fsdp`: parameters, gradients and optimizer state sharded across processes).

FSDP2 shards each parameter along dim 0 as a DTensor: one shard unit per transformer block (its
parameters are all-gathered just before the block runs and freed after) plus the root (embeddings,
final norm, head; for the projector, the whole MLP). Gradients are reduce-scattered after every
backward, so each process keeps only its shard of them and of the AdamW moments.

Saved state is the same with and without sharding: `state_dict` / `optim_state_dict` gather FULL
tensors onto rank 0's CPU (other ranks get {}) in the layout of `module.state_dict()` and
`opt.state_dict()`, and the loaders take those full dicts back into the shards. So an FSDP run
writes the safetensors `gear sample` reads, and resumes from (or into) an unsharded run's state.

FSDP modules are imported where they are used: ~2 s per process that unsharded runs skip.

Rules under FSDP: every process must run the same forwards (each forward gathers parameters), and
a copy of a sharded model cannot be made (build the EMA before `wrap`, then `shard_copy` it). Both
start every process from rank 0's weights, as DDP's constructor does: a stage may initialise its
models under per-process seeds (tune does), and FSDP shards what each process holds.

Which stages shard: train-ar, t2i-train and tune's guide AR (with its projector). The conv
tokenizer, the discriminator and the demo teacher always train replicated (`replicated`).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gear.runtime import Runtime
from gear.train.loop import part

# The projector returns a Linear's (reshaped, i.e. view) output; FSDP warns that an in-place edit
# of a view would skip its backward hook. Nothing edits these outputs in place.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


class DataParallel:
    """How the modules of one run are spread over its processes. With one process everything is
    a no-op (`compute.fsdp` included: there is nothing to shard)."""

    def __init__(self, rt: Runtime, fsdp: bool):
        self.rt = rt
        self.sharded = fsdp and rt.distributed
        self.mesh = None
        if self.sharded:
            from torch.distributed.device_mesh import init_device_mesh
            self.mesh = init_device_mesh(rt.device.type, (rt.world,))

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in training: DDP(model), or `model` itself sharded in place (its
        parameters become DTensor shards: build the optimizer after this)."""
        if self.sharded:
            self._shard(model, reshard_root=None)  # root stays gathered from forward to backward
            return model
        return DDP(model) if self.rt.distributed else model

    def shard_copy(self, model: nn.Module) -> None:
        """Shard a copy (the EMA) exactly like its trained original, so that an update is a
        shard-local op. No backward frees its parameters, so every unit reshards after forward."""
        if self.sharded:
            self._shard(model, reshard_root=True)

    def _shard(self, model: nn.Module, reshard_root: bool | None) -> None:
        from torch.distributed.fsdp import fully_shard
        with torch.no_grad():  # rank 0's weights everywhere (DDP's constructor does the same)
            for t in (*model.parameters(), *model.buffers()):
                dist.broadcast(t, src=0)
        for block in getattr(model, "blocks", ()):
            fully_shard(block, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh, reshard_after_forward=reshard_root)

    def no_sync(self, *wrapped: nn.Module) -> contextlib.AbstractContextManager:
        """For a non-final micro-step: DDP skips its all-reduce (the gradients add up locally).
        FSDP still reduce-scatters every micro-step, so no process holds full gradients."""
        stack = contextlib.ExitStack()
        for m in wrapped:
            if isinstance(m, DDP):
                stack.enter_context(m.no_sync())
        return stack

    # ---- full (unsharded) state: the same dicts with and without FSDP ---------------------------

    def state_dict(self, model: nn.Module) -> dict:
        """model.state_dict() with full tensors; sharded: collective, on rank 0's CPU, {} elsewhere."""
        if not self.sharded:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        return get_model_state_dict(model, options=_full())

    def load_state_dict(self, model: nn.Module, state: dict) -> None:
        if not self.sharded:
            model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        set_model_state_dict(model, dict(state), options=_full(load=True))  # (it pops keys from its input)

    def optim_state_dict(self, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
        """opt.state_dict() (state keyed by parameter index) with full tensors; `model` holds
        exactly the optimizer's parameters (e.g. nn.ModuleList([ar, proj])). Sharded: collective,
        rank 0 only."""
        if not self.sharded:
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        full = get_optimizer_state_dict(model, opt, options=_full())  # keyed by parameter name
        if not full:
            return {}
        index = {name: i for i, name in enumerate(self._names(model, opt))}
        return {"state": {index[k]: v for k, v in sorted(full["state"].items(), key=lambda kv: index[kv[0]])},
                "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in full["param_groups"]]}

    def load_optim_state_dict(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
        if not self.sharded:
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
        names = self._names(model, opt)
        full = {"state": {names[i]: v for i, v in state["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, opt, full, options=_full(load=True))

    def part(self, module: nn.Module):
        """`module` as a training-loop part (gear/train/loop.py) whose state is the full dict."""
        return part(lambda: self.state_dict(module), lambda sd: self.load_state_dict(module, sd))

    def optim_part(self, model: nn.Module, opt: torch.optim.Optimizer):
        return part(lambda: self.optim_state_dict(model, opt), lambda sd: self.load_optim_state_dict(model, opt, sd))

    @staticmethod
    def _names(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
        """Parameter names in the optimizer's index order."""
        name = {p: n for n, p in model.named_parameters()}
        return [name[p] for g in opt.param_groups for p in g["params"]]


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip to the global norm (over every shard) and return it as a plain tensor: over sharded
    parameters torch returns a DTensor of partial norms."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def replicated(rt: Runtime, fsdp: bool, stage: str, model: str) -> DataParallel:
    """The DDP wrapper of a stage with nothing worth sharding (a small ViT, a conv tokenizer);
    compute.fsdp says so in one line instead of being ignored silently."""
    if fsdp and rt.is_main:
        print(f"compute.fsdp shards the ARs; {stage} trains its {model} replicated (DDP)")
    return DataParallel(rt, fsdp=False)


def _full(load: bool = False):
    """Full (unsharded) state dicts: saving gathers them onto rank 0's CPU only (other ranks get
    {}); loading takes the full dict that every rank holds."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=not load)
