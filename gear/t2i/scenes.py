"""The embedded text-to-image set: one coloured shape per image, with a caption that says what is drawn.

Offline and deterministic (numpy + PIL only). Scene i of a split is a pure function of
(SEED, split, i): its generator draws, in this order,
  - the attributes, uniformly and independently: shape (circle, square, triangle, cross), colour
    (six saturated RGB colours) and position (the image quadrant holding the shape's centre), so
    the 96 combinations are equally likely and the default 3000 train scenes cover them all;
  - the caption template (CAPTIONS): every template names the three attribute words verbatim;
  - the jitter that keeps the set from being trivially constant: shape size (SIZE of the image
    side), centre within its quadrant (always inside the image, and away from the midlines so
    the quadrant is unambiguous), a small rotation of square / triangle / cross, the background
    grey level (BACKGROUND of the 0..255 range) and mild greyscale pixel noise.
Shapes are drawn at SUPERSAMPLE x the resolution and box-downsampled (anti-aliased edges), so
they stay recognisable at 16 px.

`prompts()` is every attribute combination once, canonically captioned, in a fixed shuffled
order: the held-out prompts of the room (any prefix covers varied combinations).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image, ImageDraw

ATTRIBUTES = {
    "shape": ("circle", "square", "triangle", "cross"),
    "colour": ("red", "green", "blue", "yellow", "magenta", "cyan"),
    "position": ("top left", "top right", "bottom left", "bottom right"),
}
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
       "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255)}
# (column, row) of each position's quadrant: 0 = left / top, 1 = right / bottom
QUADRANT = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
CANONICAL = "a {colour} {shape} in the {position}"
CAPTIONS = (
    CANONICAL,
    "a {colour} {shape} at the {position} corner",
    "{position}: a {colour} {shape}",
    "{colour} {shape}, {position}",
    "there is a {colour} {shape} in the {position}",
)
SPLITS = ("train", "val")
SEED = 4711                 # fixed: the set depends on (split, index, resolution) only
PROMPT_SEED = 4712          # fixed order of prompts()
SIZE = (0.3, 0.45)          # shape extent as a fraction of the image side
MAX_ROTATION = 15.0         # degrees, square / triangle / cross
BACKGROUND = (0.1, 0.35)    # grey level as a fraction of 255
NOISE = 3.0                 # std of the greyscale pixel noise, in 0..255 levels
SUPERSAMPLE = 4


def _layout(split: str, index: int) -> dict:
    """Every random choice of one scene, in units of the image side (cheap: nothing is drawn)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: must be train or val")
    rng = np.random.default_rng([SEED, SPLITS.index(split), index])
    attrs = {k: str(v[rng.integers(len(v))]) for k, v in ATTRIBUTES.items()}
    template = CAPTIONS[rng.integers(len(CAPTIONS))]
    r = float(rng.uniform(*SIZE)) / 2
    # Centre: the shape's farthest point (<= 1.15 r, the triangle's) stays 0.01 inside the image,
    # and the centre stays >= 0.6 r from the midline, so the quadrant is clear at a glance.
    col, row = QUADRANT[attrs["position"]]
    lo, hi = 1.15 * r + 0.01, 0.5 - 0.6 * r
    cx, cy = (float(rng.uniform(lo, hi)) for _ in range(2))
    cx, cy = (cx if col == 0 else 1 - cx), (cy if row == 0 else 1 - cy)
    rotation = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)) if attrs["shape"] != "circle" else 0.0
    grey = float(rng.uniform(*BACKGROUND)) * 255
    noise_seed = int(rng.integers(2**31))
    return {"attributes": attrs, "caption": template.format(**attrs), "radius": r, "centre": (cx, cy),
            "rotation": rotation, "grey": grey, "noise_seed": noise_seed}


def _polygon(shape: str, r: float, rotation: float) -> list[tuple[float, float]]:
    """Vertices around the origin (image y points down), for everything but the circle."""
    if shape == "square":
        h = 0.85 * r  # a little smaller than the circle: similar area
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":  # equilateral, apex up, centroid at the origin
        R = 1.15 * r
        pts = [(R * math.sin(a), -R * math.cos(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    elif shape == "cross":  # a plus sign: arms of half-width 0.35 r
        a, w = r, 0.35 * r
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
    else:
        raise ValueError(f"shape {shape!r}: not one of {ATTRIBUTES['shape']}")
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(x * c - y * s, x * s + y * c) for x, y in pts]


def _render(lay: dict, resolution: int) -> Image.Image:
    side = resolution * SUPERSAMPLE
    grey = round(lay["grey"])
    img = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    colour = RGB[lay["attributes"]["colour"]]
    cx, cy, r = lay["centre"][0] * side, lay["centre"][1] * side, lay["radius"] * side
    shape = lay["attributes"]["shape"]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx + x, cy + y) for x, y in _polygon(shape, r, lay["rotation"])], fill=colour)
    small = np.asarray(img.resize((resolution, resolution), Image.Resampling.BOX), dtype=np.float32)
    # Greyscale noise: texture without hue, so the colour word stays the only colour in the image.
    noise = np.random.default_rng(lay["noise_seed"]).normal(0.0, NOISE, (resolution, resolution, 1))
    return Image.fromarray(np.rint(small + noise).clip(0, 255).astype(np.uint8), mode="RGB")


def scene(split: str, index: int, resolution: int) -> tuple[Image.Image, str, dict]:
    """(RGB image of resolution x resolution, caption, {"shape", "colour", "position"}) of scene `index`."""
    lay = _layout(split, index)
    return _render(lay, resolution), lay["caption"], dict(lay["attributes"])


def prompts() -> list[dict]:
    """Every attribute combination once: [{"caption": canonical caption, "attributes": {...}}], in a
    fixed shuffled order."""
    combos = [dict(zip(ATTRIBUTES, values)) for values in itertools.product(*ATTRIBUTES.values())]
    order = np.random.default_rng(PROMPT_SEED).permutation(len(combos))
    return [{"caption": CANONICAL.format(**combos[i]), "attributes": combos[i]} for i in order]
