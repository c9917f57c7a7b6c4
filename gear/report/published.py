"""The published figures the `released` target compares against, typed once, each with its source
and the settings it was measured at. Nothing here is derived: a figure a source does not print is
absent (the report shows "not published"), never filled in.

Sources (checked against the files themselves):
  GEAR.md section 10   the GEAR release README's reconstruction table: ImageNet val, bicubic
                       resize to 256 px, rFID / PSNR / SSIM of every tokenizer file
  LlamaGen README      FoundationVision/LlamaGen README.md, "Class-conditional image generation on
                       ImageNet": vq_ds16_c2i rFID 2.19 (16x16 tokens, 256 px, the same figure as
                       GEAR.md's VQ-16 original) and the AR table's FID (256x256) per weight file.
                       It prints FID only: IS / precision / recall of these files are not published
                       there. The only XL file released is c2i_XL_384.pt (24x24 tokens), FID 2.62.
  LlamaGen GETTING_STARTED.md  the sampling commands behind those FIDs: cfg 2.0 for GPT-B and
                       GPT-L, 1.75 for GPT-XL, generated and resized to --image-size-eval 256; the
                       evaluation's sample file names top-k 0, top-p 1.0, temperature 1.0; scored by
                       ADM's evaluator against VIRTUAL_imagenet256_labeled.npz (50k samples).
"""
from __future__ import annotations

from typing import NamedTuple

GEAR_TABLE = "GEAR release README reconstruction table (shared/reference/GEAR.md section 10)"
LLAMAGEN_README = "LlamaGen README.md, class-conditional ImageNet tables (github.com/FoundationVision/LlamaGen)"
LLAMAGEN_SAMPLING = "LlamaGen GETTING_STARTED.md, Sampling and Evaluation commands"

TOKENIZER_SETTINGS = "ImageNet val (50,000 images), bicubic resize to 256 px, rFID against the val images"
GPT_SETTINGS = ("ImageNet 256x256, 50,000 samples (50 per class) scored by ADM's evaluator against "
                "VIRTUAL_imagenet256_labeled.npz")


class Published(NamedTuple):
    values: dict        # metric -> figure (only the metrics the source prints)
    source: str
    settings: str       # what it was measured at


def _tok(rfid: float, psnr: float, ssim: float) -> Published:
    return Published({"rfid": rfid, "psnr": psnr, "ssim": ssim}, GEAR_TABLE, TOKENIZER_SETTINGS)


TOKENIZERS = {
    "vq_original": _tok(2.19, 20.79, 0.55),   # LlamaGen's README gives the same rFID, 2.19
    "vq_warmup": _tok(1.72, 21.06, 0.57),
    "vq_gear": _tok(1.64, 20.78, 0.56),
    "lfq_original": _tok(2.82, 21.47, 0.58),
    "lfq_warmup": _tok(2.42, 20.97, 0.56),
    "lfq_gear": _tok(2.13, 20.48, 0.55),
    "ibq_original": _tok(2.23, 21.23, 0.58),
    "ibq_warmup": _tok(1.97, 21.18, 0.58),
    "ibq_gear": _tok(1.72, 20.92, 0.57),
}

GPTS = {
    "B": Published({"fid": 5.46}, f"{LLAMAGEN_README}; settings: {LLAMAGEN_SAMPLING}",
                   f"{GPT_SETTINGS}; c2i_B_256.pt, 16x16 tokens; cfg 2.0, top-k 0, top-p 1.0, temperature 1.0"),
    "L": Published({"fid": 3.80}, f"{LLAMAGEN_README}; settings: {LLAMAGEN_SAMPLING}",
                   f"{GPT_SETTINGS}; c2i_L_256.pt, 16x16 tokens; cfg 2.0, top-k 0, top-p 1.0, temperature 1.0"),
    "XL": Published({"fid": 2.62}, f"{LLAMAGEN_README}; settings: {LLAMAGEN_SAMPLING}",
                    f"{GPT_SETTINGS}; c2i_XL_384.pt, 24x24 tokens generated at 384 px, resized to 256; "
                    f"cfg 1.75, top-k 0, top-p 1.0, temperature 1.0"),
}

# The tolerance rule: |ours - published| <= abs + rel * |published|. Chosen, not derived: FID moves
# by a few percent between evaluators (torch-fidelity's Inception vs ADM's TensorFlow graph) and
# seeds, and the published PSNR / SSIM are rounded to 0.01.
TOLERANCE = {"rfid": (0.05, 0.05), "fid": (0.05, 0.05), "is_mean": (0.0, 0.05), "precision": (0.02, 0.0),
             "recall": (0.02, 0.0), "psnr": (0.2, 0.0), "ssim": (0.01, 0.0)}
TOLERANCE_RULE = ("A number is within tolerance when |ours - published| <= a + r x |published|, with (a, r) = "
                  "FID and rFID (0.05, 5%), IS (0, 5%), precision and recall (0.02, 0), PSNR (0.2 dB, 0), "
                  "SSIM (0.01, 0)")


def tolerance(metric: str, published: float) -> float:
    a, r = TOLERANCE[metric]
    return a + r * abs(published)
