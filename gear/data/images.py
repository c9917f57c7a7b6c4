"""One decoder from an image file to the 8-bit sRGB pixels a viewer shows, for `gear shard`.

`decode(im)` applies, in this order:
  1. EXIF orientation (ImageOps.exif_transpose): a phone portrait saved sideways with
     orientation 6, or upside down with 3, is stored the way it is seen;
  2. transparency in every form becomes an alpha channel: RGBA/LA/PA, a palette entry, and the
     single transparent colour of an RGB or grey PNG (tRNS, PIL's `info["transparency"]`);
  3. an embedded ICC profile is converted to sRGB (ImageCms; a Display-P3 photo otherwise lands
     ~13 levels off); alpha is carried through untouched. A profile that cannot be read or does
     not fit the pixels is a refusal, like any undecodable file;
  4. `to_rgb` below: bit depths rescaled, alpha composited over white.
A multi-frame file (animated GIF/PNG/WebP, multi-page TIFF) gives its first frame: what a viewer
shows before it animates, and one image per file keeps the class counts honest.

`to_rgb(img)` is the mode conversion alone. `Image.convert("RGB")` is wrong for several modes a
real folder holds: 16-bit PNGs (mode I;16, or I) are clipped at 255 instead of rescaled (a
typical 16-bit photo becomes almost all white), float images (F) are clipped the same way, and
transparent pixels reveal whatever colour the file stored under them. Here:
  - 16-bit and 32-bit integer modes are read as 16-bit (0..65535) and rescaled by 255/65535;
    values outside that range have no known scale and are refused;
  - F is read as [0, 1] when its values fit, else [0, 255], else [0, 65535]; NaN/Inf or
    negative values are refused;
  - alpha (and the transparent colour of a tRNS image) is composited over white (the usual page
    background), so transparent pixels do not depend on what the encoder left under them;
  - everything else (1, L, P, RGB, CMYK, YCbCr, LAB, HSV, RGBX) goes through PIL's convert.
A refusal is an `ImageModeError` whose message is the reason a skipped file is listed with.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps

BACKGROUND = (255, 255, 255)   # what transparent pixels become
INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")
TRNS_MODES = ("1", "L", "P", "RGB")  # modes whose tRNS / palette transparency PIL's convert applies
PROFILE_MODES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}  # ICC colour space -> PIL mode
ORIENTATION = 0x0112           # EXIF tag; 1 = as stored
_SRGB = ImageCms.createProfile("sRGB")


class ImageModeError(ValueError):
    """An image whose pixel values have no known 8-bit meaning."""


@dataclass
class Decoded:
    image: Image.Image      # 8-bit RGB
    rotated: bool           # an EXIF orientation other than 1 was applied
    colour_converted: bool  # an embedded ICC profile was converted to sRGB


def decode(im: Image.Image) -> Decoded:
    """The opened file `im` (its first frame) as the 8-bit sRGB image a viewer shows; raises
    ImageModeError (or PIL's own errors) when it cannot be shown."""
    rotated = im.getexif().get(ORIENTATION, 1) not in (1, None)
    icc = im.info.get("icc_profile")
    img = ImageOps.exif_transpose(im) if rotated else im
    if img.mode in TRNS_MODES and "transparency" in img.info:
        img = img.convert("RGBA")  # palette entry or tRNS colour -> alpha, as a viewer composites it
    if icc:
        img = _to_srgb(img, icc)
    out = to_rgb(img)
    out.load()  # the pixels, read while the file is open (to_rgb returns an RGB file's image as is)
    return Decoded(out, rotated, bool(icc))


def _to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    """`img` converted from its embedded profile to sRGB (alpha kept as is). The colour part goes
    to the profile's space first when that only widens it (grey or palette under an RGB profile);
    a profile that cannot describe the pixels (an RGB image under a grey or CMYK profile) is a
    refusal, as is one LittleCMS cannot read."""
    alpha = img.getchannel("A") if img.mode in ALPHA_MODES else None
    colour = _colour_part(img)
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = src.profile.xcolor_space.strip()
        need = PROFILE_MODES.get(space)
        if need is None or not (colour.mode == need or (colour.mode == "L" and need == "RGB")):
            raise ImageModeError(f"embedded ICC profile for {space!r} pixels on a {img.mode} image")
        out = ImageCms.profileToProfile(colour.convert(need), src, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        if isinstance(e, ImageModeError):
            raise
        raise ImageModeError(f"embedded ICC profile unusable ({' '.join(str(e).split())})") from None
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _colour_part(img: Image.Image) -> Image.Image:
    """The 8-bit colour channels of `img`, alpha dropped: L for grey modes, CMYK as is, else RGB."""
    if img.mode in INT_MODES or img.mode == "F":
        return to_rgb(img).convert("L")  # rescaled like any 16-bit / float grey image
    if img.mode in ("1", "L", "LA"):
        return img.convert("L")
    return img if img.mode == "CMYK" else img.convert("RGB")


def _from_levels(arr: np.ndarray, top: float, transparent: np.ndarray | None = None) -> Image.Image:
    """Grayscale array with values in [0, top] -> 8-bit RGB (rounded); `transparent` pixels white."""
    scaled = np.rint(arr.astype(np.float64) * (255.0 / top)).clip(0, 255).astype(np.uint8)
    if transparent is not None:
        scaled[transparent] = BACKGROUND[0]
    return Image.fromarray(scaled, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as an 8-bit RGB image (see the module doc for each mode); raises ImageModeError."""
    mode, trns = img.mode, img.info.get("transparency")
    if mode in TRNS_MODES and trns is not None:
        img, mode = img.convert("RGBA"), "RGBA"  # palette entry or tRNS colour -> alpha
    if mode == "RGB":
        return img
    if mode in INT_MODES:
        arr = np.asarray(img)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageModeError(f"{mode} image with values {lo}..{hi}: outside 0..65535, no known 8-bit scale")
        return _from_levels(arr, 65535.0, arr == trns if isinstance(trns, int) else None)  # 16-bit grey tRNS
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageModeError("float (F) image holds NaN or Inf pixels")
        lo, hi = float(arr.min()), float(arr.max())
        top = next((t for t in (1.0, 255.0, 65535.0) if hi <= t), None)
        if lo < 0 or top is None:
            raise ImageModeError(f"float (F) image with values {lo:g}..{hi:g}: no known 8-bit scale")
        return _from_levels(arr, top)
    if mode in ALPHA_MODES:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")
