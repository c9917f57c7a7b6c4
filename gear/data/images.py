"""One conversion from any decoded PIL image to 8-bit RGB, shared by `gear shard` and the loader.

`Image.convert("RGB")` is wrong for several modes a real folder holds: 16-bit PNGs (mode I;16,
or I) are clipped at 255 instead of rescaled (a typical 16-bit photo becomes almost all white),
float images (F) are clipped the same way, and transparent pixels (RGBA, LA, PA, P with a
transparency entry) reveal whatever colour the file stored under them. Here:
  - 16-bit and 32-bit integer modes are read as 16-bit (0..65535) and rescaled by 255/65535;
    values outside that range have no known scale and are refused;
  - F is read as [0, 1] when its values fit, else [0, 255], else [0, 65535]; NaN/Inf or
    negative values are refused;
  - alpha is composited over white (the usual page background), so transparent pixels do not
    depend on what the encoder left under them;
  - everything else (1, L, P, RGB, CMYK, YCbCr, LAB, HSV, RGBX) goes through PIL's convert.
A refusal is an `ImageModeError` whose message is the reason a skipped file is listed with.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

BACKGROUND = (255, 255, 255)   # what transparent pixels become
INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")


class ImageModeError(ValueError):
    """An image whose pixel values have no known 8-bit meaning."""


def _from_levels(arr: np.ndarray, top: float) -> Image.Image:
    """Grayscale array with values in [0, top] -> 8-bit RGB (rounded)."""
    scaled = np.rint(arr.astype(np.float64) * (255.0 / top)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as an 8-bit RGB image (see the module doc for each mode); raises ImageModeError."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in INT_MODES:
        arr = np.asarray(img)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageModeError(f"{mode} image with values {lo}..{hi}: outside 0..65535, no known 8-bit scale")
        return _from_levels(arr, 65535.0)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageModeError("float (F) image holds NaN or Inf pixels")
        lo, hi = float(arr.min()), float(arr.max())
        top = next((t for t in (1.0, 255.0, 65535.0) if hi <= t), None)
        if lo < 0 or top is None:
            raise ImageModeError(f"float (F) image with values {lo:g}..{hi:g}: no known 8-bit scale")
        return _from_levels(arr, top)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ALPHA_MODES:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")
