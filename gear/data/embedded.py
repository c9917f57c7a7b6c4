"""The embedded data set: small crops of photographs that ship inside installed packages.

Offline and deterministic: one class per source photo (scikit-image's bundled photos and
textures, scikit-learn's china and flower, matplotlib's grace_hopper), in the fixed order of
SOURCES. The right-most VAL_BAND of every photo's width is held out: val crops lie inside that
band and train crops lie left of it, so no val pixel is ever seen in training. Crops are square,
of a few sizes relative to the photo, and are resized to the configured resolution.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

# Every entry loads without a network (checked: other skimage.data entries need a download).
SOURCES = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
    "immunohistochemistry", "stereo_motorcycle", "brick", "grass", "gravel", "camera",
    "coins", "china", "flower", "grace_hopper",
)
VAL_BAND = 0.3                      # fraction of each photo's width held out for val (right side)
SCALES = (0.15, 0.2, 0.25, 0.3)     # crop side as a fraction of the photo's short side
SEED = 20240                        # fixed: the data set depends on params.data only


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package (importing
    sklearn takes seconds; the file is what sklearn.datasets.load_sample_image reads)."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.submodule_search_locations[0], *parts) if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"embedded data set: {'/'.join(parts)} of package {package} not found; is {package} installed?")
    return path


def _load(name: str) -> Image.Image:
    if name in ("china", "flower"):
        arr = np.asarray(Image.open(_package_file("sklearn", "datasets", "images", f"{name}.jpg")).convert("RGB"))
    elif name == "grace_hopper":
        arr = np.asarray(Image.open(_package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")).convert("RGB"))
    else:
        from skimage import data
        arr = getattr(data, name)()
        if name == "stereo_motorcycle":  # (left, right, disparity): keep the left view
            arr = arr[0]
    if arr.ndim == 2:  # grayscale textures and photos become 3-channel
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3], dtype=np.uint8))


@functools.cache
def photos() -> tuple[Image.Image, ...]:
    """The source photos as RGB images, in SOURCES order (loaded once per process)."""
    return tuple(_load(name) for name in SOURCES)


def val_band_start(width: int) -> int:
    """First column of the held-out val band; train crops end at or before it."""
    return width - round(VAL_BAND * width)


def crops(split: str, per_class: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(label, box) of every crop of a split, class by class; box = (left, top, right, bottom)."""
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: must be train or val")
    out = []
    for label, img in enumerate(photos()):
        w, h = img.size
        band = val_band_start(w)
        lo, hi = (0, band) if split == "train" else (band, w)
        rng = np.random.default_rng([SEED, label, int(split == "val")])
        for _ in range(per_class):
            # The largest crop (0.3 of the short side) fits in the band, which is 0.3 of the width.
            side = round(float(rng.choice(SCALES)) * min(w, h))
            x = int(rng.integers(lo, hi - side + 1))
            y = int(rng.integers(0, h - side + 1))
            out.append((label, (x, y, x + side, y + side)))
    return out


def render(label: int, box: tuple[int, int, int, int], resolution: int) -> Image.Image:
    """The crop `box` of photo `label`, resized (antialiased bicubic) to resolution x resolution."""
    return photos()[label].resize((resolution, resolution), Image.Resampling.BICUBIC, box=box)
