"""The `demo` teacher: a small ViT classifier trained in the pipeline (offline default).

One patch per tokenizer token (patch size = tokenizer downsampling), a CLS token, learned absolute
position embeddings, pre-norm blocks, a final LayerNorm. The final-norm patch tokens are the
alignment targets, the final-norm CLS token is the pooled (FID) feature and the linear head on it
gives class logits (IS classifier).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no mask
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DemoViT(nn.Module):
    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int, num_classes: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"demo teacher: patch {patch} must divide image size {image_size}")
        if dim % heads:
            raise ValueError(f"demo teacher: heads {heads} must divide dim {dim}")
        self.config = dict(image_size=image_size, patch=patch, dim=dim, depth=depth, heads=heads,
                           num_classes=num_classes)
        self.patch = patch
        self.grid = image_size // patch
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.weight)  # start from uniform predictions

    def _pos_embed(self, grid: int) -> torch.Tensor:
        """Position embeddings for a grid x grid input (bicubic resample when it differs)."""
        if grid == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W), H = W = grid * patch -> final-norm tokens (B, 1 + grid^2, dim)."""
        if x.shape[-1] != x.shape[-2] or x.shape[-1] % self.patch:
            raise ValueError(f"demo teacher: input {tuple(x.shape)} must be square with a side divisible by {self.patch}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # row-major patch order
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._pos_embed(int(math.isqrt(x.shape[1] - 1)))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.tokens(x)[:, 0])
