"""A fixed random subset of patches for CKA / CKNNA, streamed batch by batch and merged across ranks."""
from __future__ import annotations

import torch

from gear.metrics.similarity import cknna, linear_cka
from gear.runtime import Runtime, gather_to_main

PATCH_SEED = 1234  # which patches enter CKA / CKNNA (fixed: arms are compared on the same draw)


class PatchSample:
    """A uniform random subset of at most `size` patches, the same patches for every named
    feature set: the patches with the smallest of seeded random keys (one key per patch, drawn
    in stream order). The subset depends neither on the batch size nor on the number of
    processes: a rank draws (and drops) the keys of the other ranks' patches too (skip), and
    gather() merges the ranks' subsets on rank 0."""

    def __init__(self, size: int, seed: int = PATCH_SEED):
        self.size, self.gen, self.seen = size, torch.Generator().manual_seed(seed), 0
        self.keys, self.pos, self.feats = torch.empty(0), torch.empty(0, dtype=torch.long), {}

    def skip(self, n: int) -> None:
        """n patches that another rank adds: draw their keys, keep nothing."""
        torch.rand(n, generator=self.gen)
        self.seen += n

    def add(self, **feats: torch.Tensor) -> None:
        """feats: name -> (B, L, D) patch features of the same B x L patches."""
        flat = {k: v.detach().float().cpu().reshape(-1, v.shape[-1]) for k, v in feats.items()}
        n = {len(v) for v in flat.values()}
        if len(n) != 1:
            raise ValueError(f"feature sets disagree on the number of patches: {sorted(n)}")
        n = n.pop()
        keys = torch.cat([self.keys, torch.rand(n, generator=self.gen)])
        pos = torch.cat([self.pos, torch.arange(self.seen, self.seen + n)])
        self.seen += n
        self._keep(keys, pos, {k: torch.cat([self.feats[k], v]) if k in self.feats else v for k, v in flat.items()})

    def _keep(self, keys: torch.Tensor, pos: torch.Tensor, feats: dict) -> None:
        """The patches of the `size` smallest keys, in stream order."""
        keep = keys.topk(min(self.size, len(keys)), largest=False).indices
        keep = keep[pos[keep].argsort()]
        self.keys, self.pos, self.feats = keys[keep], pos[keep], {k: v[keep] for k, v in feats.items()}

    def gather(self, rt: Runtime) -> "PatchSample | None":
        """Rank 0: this sample merged with every other rank's (the subset of all their patches);
        the other ranks: None."""
        parts = gather_to_main((self.keys, self.pos, self.feats), rt)
        if parts is None:
            return None
        names = list(dict.fromkeys(k for _, _, f in parts for k in f))  # a rank without batches has none
        self._keep(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                   {k: torch.cat([f[k] for _, _, f in parts if k in f]) for k in names})
        return self

    def similarity(self, name: str, target: str, k: int) -> dict:
        x, y = self.feats[name], self.feats[target]
        return {"cka": linear_cka(x, y), "cknna": cknna(x, y, k=k)}


def patches(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latent -> (B, h*w, C) patches in row-major order (the teacher's order)."""
    return z.float().flatten(2).transpose(1, 2)
