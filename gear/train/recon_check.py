"""Reconstruction check of a tokenizer on the val split: PSNR, SSIM, codebook usage and a grid
of originals (top row of each pair) vs reconstructions (bottom row)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from gear.data.loader import eval_batches
from gear.metrics.codebook import CodebookAccumulator
from gear.metrics.recon import psnr, ssim


@dataclass
class ReconCheck:
    metrics: dict[str, float]
    grid: Image.Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, 3, H, W) -> uint8 (B, H, W, 3)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(rows: list[np.ndarray], pad: int = 1) -> Image.Image:
    """rows of uint8 (N, H, W, 3) images -> one PIL grid."""
    n, h, w, _ = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, imgs in enumerate(rows):
        for c, img in enumerate(imgs):
            grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return Image.fromarray(grid)


@torch.no_grad()
def reconstruction_check(params, model, rt, max_images: int | None = None, grid_images: int = 16) -> ReconCheck:
    """Runs on rank 0 only (val is small); other ranks return empty metrics."""
    if not rt.is_main:
        return ReconCheck({}, Image.new("RGB", (1, 1)))
    model.eval()
    acc = CodebookAccumulator(model.codebook_size)
    psnrs, ssims, originals, recons, seen = [], [], [], [], 0
    for x, _ in eval_batches(params, "val", params.metrics.batch_size):
        x = x.to(rt.device)
        with rt.conv_autocast():
            out = model(x)
        a, b = to_uint8(x), to_uint8(out.recon)
        psnrs.append(psnr(a, b)); ssims.append(ssim(a, b))
        acc.update(out.q.indices)
        if len(originals) * a.shape[0] < grid_images:
            originals.append(a); recons.append(b)
        seen += len(x)
        if max_images and seen >= max_images:
            break
    stats = acc.result()
    metrics = {"psnr": float(np.mean(np.concatenate(psnrs))), "ssim": float(np.mean(np.concatenate(ssims))),
               "usage": stats["usage"], "usage_entropy": stats["entropy"], "effective_size": stats["effective_size"],
               "num_images": seen}
    o, r = np.concatenate(originals)[:grid_images], np.concatenate(recons)[:grid_images]
    half = max(1, len(o) // 2)
    grid = image_grid([o[:half], r[:half], o[half:2 * half], r[half:2 * half]] if len(o) >= 2 else [o, r])
    return ReconCheck(metrics, grid)
