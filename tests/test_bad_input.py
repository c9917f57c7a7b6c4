"""The bad-input matrix: hostile images, folders, params, checkpoints and shards, through the CLI.

Every case runs `gear <stage>` in-process (gear.cli.main) in a scratch folder and asserts
  - the exit code (2 for an expected failure; 0 where the input is handled: a listed skip, a
    conversion, a warning),
  - that the problem is named in one line (the error line, the manifest's skip reason or the
    warning),
  - that a failing run wrote or changed no declared output (a snapshot of the folder).
Stages never see the network and the configs are tiny (tests/tiny.py), so the file runs in
well under a minute.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import errno
import io
import json
import os
import re
import pickle
import shutil
import struct
import tarfile
import typing
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from gear import cli
from gear.config import Params
from gear.data.images import decode, to_rgb
from gear.io import ArtifactError, atomic_path, exclusive, save_tensors
from gear.models.llamagen import load_tokenizer_state
from gear.models.tokenizer import Tokenizer, TokenizerConfig
from tiny import PARAMS, ROOT, TINY, sets

RES = 16  # tiny.TINY's data.resolution


def gear(stage: list[str], *extra: str) -> int:
    return cli.main([*stage, "--params", str(PARAMS), *sets(*extra)])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*") if not p.is_dir()}


def one_error_line(capsys, stage: str, *needles: str) -> str:
    """The one `gear <stage>: error:` line on stderr; it must contain every needle."""
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith(f"gear {stage}: error:")]
    assert len(lines) == 1, lines
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


class Exploit:
    """A pickle that runs code on load: os.mkdir(marker)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def write_exploit(path: Path, marker: Path) -> Path:
    torch.save({"model": Exploit(marker)}, path)
    torch.load(path, weights_only=False)  # it really does run code when trusted...
    assert marker.is_dir()
    marker.rmdir()  # ...so every loader must refuse it unread
    return path


# ---------------------------------------------------------------------------------------------
# images: one bad file among good ones in an ImageFolder, through `gear shard`


def noise(path: Path, size=(24, 20), seed=0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def good_folder(root: Path) -> Path:
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            noise(root / name / f"good{i}.png", seed=10 * c + i)
    return root


def uniform(mode: str, value, fmt: str, **save):
    def write(folder: Path) -> Path:
        img = Image.new(mode, (RES, RES), value) if not isinstance(value, np.ndarray) else Image.fromarray(value)
        path = folder / f"special.{fmt}"
        img.save(path, **save)
        return path
    return write


def png_16bit(folder: Path) -> Path:
    Image.fromarray(np.full((RES, RES), 32768, np.uint16)).save(folder / "special.png")  # mode I;16
    return folder / "special.png"


def palette_transparent(folder: Path) -> Path:
    img = Image.new("P", (RES, RES), 0)
    img.putpalette([10, 20, 30] * 256)  # what a plain convert("RGB") would show
    img.save(folder / "special.png", transparency=0)
    return folder / "special.png"


def raw(name: str, data: bytes):
    def write(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return write


def png_bytes(size=(RES, RES)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bomb(folder: Path) -> Path:
    """A valid PNG header claiming 40000 x 40000 pixels (> 2x PIL's MAX_IMAGE_PIXELS): PIL refuses
    it on open, before decoding; the file itself is tiny."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    (folder / "bomb.png").write_bytes(data)
    return folder / "bomb.png"


def symlink(target: str):
    def write(folder: Path) -> Path:
        (folder / "link.png").symlink_to(target if target != "self" else folder / "link.png")
        return folder / "link.png"
    return write


def fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.png")  # opening it would block forever
    return folder / "pipe.png"


def huge(folder: Path) -> Path:
    noise(folder / "huge.png", size=(2400, 1600))
    return folder / "huge.png"


def truncated_png(folder: Path) -> Path:
    data = png_bytes((64, 64))
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return folder / "cut.png"


def trns(mode: str, value, fmt: str = "png"):
    """A PNG whose every pixel is its single transparent colour (tRNS): a viewer shows the page."""
    def write(folder: Path) -> Path:
        img = Image.fromarray(np.full((RES, RES), value, np.uint16)) if mode == "I;16" else Image.new(mode, (RES, RES), value)
        img.save(folder / "trns.png", transparency=value)
        return folder / "trns.png"
    return write


def animated_gif(folder: Path) -> Path:
    red, blue = Image.new("RGB", (RES, RES), (255, 0, 0)), Image.new("RGB", (RES, RES), (0, 0, 255))
    red.save(folder / "anim.gif", save_all=True, append_images=[blue], duration=100, loop=0)
    return folder / "anim.gif"


def garbage_icc(folder: Path) -> Path:
    Image.new("RGB", (RES, RES), (50, 60, 70)).save(folder / "icc.png", icc_profile=b"not a profile" * 20)
    return folder / "icc.png"


WHITE = (255, 255, 255)
IMAGE_CASES = {
    # PIL modes: converted by gear/data/images.py, kept, with the exact 8-bit value
    "mode_I;16_png16": (png_16bit, "kept", (128, 128, 128)),          # convert("RGB") gives 255
    "mode_I_tiff32": (uniform("I", np.full((RES, RES), 16448, np.int32), "tif"), "kept", (64, 64, 64)),
    "mode_F_tiff": (uniform("F", np.full((RES, RES), 0.25, np.float32), "tif"), "kept", (64, 64, 64)),
    "mode_P_transparent": (palette_transparent, "kept", WHITE),
    "mode_PA_tiff": (uniform("PA", (0, 0), "tif"), "kept", WHITE),
    "mode_LA": (uniform("LA", (0, 0), "png"), "kept", WHITE),
    "mode_RGBA_transparent": (uniform("RGBA", (255, 0, 0, 0), "png"), "kept", WHITE),
    "mode_CMYK": (uniform("CMYK", (255, 0, 0, 0), "tif"), "kept", (0, 255, 255)),
    "mode_L": (uniform("L", 100, "png"), "kept", (100, 100, 100)),
    "mode_1": (uniform("1", 1, "png"), "kept", WHITE),
    # transparency in every form, as a viewer composites it (over white)
    "trns_rgb_png": (trns("RGB", (10, 20, 30)), "kept", WHITE),      # convert("RGB") gives (10, 20, 30)
    "trns_grey_png": (trns("L", 7), "kept", WHITE),
    "trns_grey16_png": (trns("I;16", 1000), "kept", WHITE),
    "multi_frame_first_frame": (animated_gif, "kept", (255, 0, 0)),
    "icc_profile_unreadable": (garbage_icc, "skipped", "embedded ICC profile unusable"),
    "icc_profile_of_another_space": (uniform("CMYK", (0, 0, 0, 0), "tif", icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("sRGB")).tobytes()), "skipped", "embedded ICC profile for 'RGB' pixels on a CMYK image"),
    "mode_I_out_of_range": (uniform("I", np.full((RES, RES), -5, np.int32), "tif"), "skipped", "no known 8-bit scale"),
    "mode_F_nan": (uniform("F", np.full((RES, RES), np.nan, np.float32), "tif"), "skipped", "NaN or Inf"),
    # broken files: counted skips with the reason
    "truncated": (truncated_png, "skipped", "truncated"),
    "zero_byte": (raw("empty.png", b""), "skipped", "UnidentifiedImageError"),
    "text_as_png": (raw("notes.png", b"not an image\n"), "skipped", "UnidentifiedImageError"),
    "png_named_jpg": (raw("really_png.jpg", png_bytes()), "kept", None),  # content decides, not the name
    "decompression_bomb": (bomb, "skipped", "DecompressionBomb"),
    "dangling_symlink": (symlink("/nonexistent/target.png"), "skipped", "dangling symlink"),
    "looping_symlink": (symlink("self"), "skipped", "looping symlink"),
    "fifo_unreadable": (fifo, "skipped", "not a regular file"),
    # sizes
    "huge": (huge, "kept", None),
    "tiny_upscaled": (lambda f: (noise(f / "tiny.png", size=(8, 6)), f / "tiny.png")[1], "upscaled", [8, 6]),
    "tiny_below_min_size": (lambda f: (noise(f / "tiny.png", size=(8, 6)), f / "tiny.png")[1], "skipped",
                            "smaller than data.min_size = 7"),
}


def shard_images(shard_dir: Path) -> list[np.ndarray]:
    out = []
    for tar_path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            out += [np.asarray(Image.open(tar.extractfile(m))) for m in tar if m.name.endswith(".png")]
    return out


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image(case, tmp_path, monkeypatch, capsys):
    write, outcome, expect = IMAGE_CASES[case]
    monkeypatch.chdir(tmp_path)
    root = good_folder(tmp_path / "images")
    path = write(root / "a")
    extra = ["data.min_size=7"] if case == "tiny_below_min_size" else []
    rc = gear(["shard"], "data.source=imagefolder", f"data.train_root={root}", "data.val_fraction=0.3", *extra)
    assert rc == 0
    man = json.loads(Path("data/shards/manifest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in man["skipped"]}
    kept = man["splits"]["train"]["count"] + man["splits"]["val"]["count"]
    if outcome == "skipped":
        assert list(skipped) == [str(path)] and expect in skipped[str(path)] and "\n" not in skipped[str(path)]
        assert kept == 6
        assert f"warning: skipped {path}" in capsys.readouterr().err
        return
    assert skipped == {} and kept == 7
    if outcome == "upscaled":
        assert man["upscaled"] == [{"split": man["upscaled"][0]["split"], "path": str(path), "size": expect}]
        assert "1 " in capsys.readouterr().err  # "warning: 1 train images are smaller ..."
    if isinstance(expect, tuple):
        assert any((im == np.array(expect, np.uint8)).all() for im in shard_images(Path("data/shards"))), case


def test_one_conversion_handles_every_mode():
    """The conversion itself, beside the bug it fixes: convert('RGB') clips 16-bit to white."""
    img16 = Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257))  # 0..65535 ramp
    assert img16.mode == "I;16"
    assert (np.asarray(img16.convert("RGB")) == 255).mean() > 0.99
    assert np.array_equal(np.asarray(to_rgb(img16))[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))
    for mode in ("1", "L", "P", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "I", "F",
                 "I;16", "I;16B", "RGBX"):
        out = to_rgb(Image.new(mode, (4, 4)))
        assert out.mode == "RGB" and out.size == (4, 4), mode


# ---------------------------------------------------------------------------------------------
# folders: refused in one line before any image is read, nothing written


def empty_class(root: Path):
    good_folder(root)
    (root / "c_empty").mkdir()


def all_unreadable_class(root: Path):
    good_folder(root)
    (root / "c_broken").mkdir()
    for i in range(2):
        (root / "c_broken" / f"{i}.png").write_bytes(b"garbage")


def no_classes(root: Path):
    root.mkdir()
    noise(root / "loose.png")


def unknown_val_class(root: Path):
    good_folder(root)
    (root.parent / "val" / "zebra").mkdir(parents=True)
    noise(root.parent / "val" / "zebra" / "z.png")


def only_symlinks_class(root: Path):
    good_folder(root)
    (root / "c_links").mkdir()
    (root / "c_links" / "x.png").symlink_to("/nonexistent.png")


def class_link(target):
    """A class folder that is a symlink: target(root) -> what it points at."""
    def build(root: Path):
        good_folder(root)
        (root / "c_link").symlink_to(target(root))
    return build


def class_not_utf8(root: Path):
    good_folder(root)
    folder = Path(os.fsdecode(os.fsencode(root) + b"/c_\xff"))
    folder.mkdir()
    noise(folder / "x.png")


FOLDER_CASES = {
    "empty_class": (empty_class, [], "class folder 'c_empty' holds no files"),
    "class_with_only_unreadable_files": (all_unreadable_class, [], "class 'c_broken' has no readable train image"),
    "class_with_only_dangling_symlinks": (only_symlinks_class, [], "class folder 'c_links' holds no files"),
    "no_class_folders": (no_classes, [], "no class folders"),
    "unknown_val_class": (unknown_val_class, ["data.val_root={val}"], "class folders not in data.train_root: zebra"),
    "missing_root": (lambda root: None, [], "folder not found"),
    # class symlinks: never dropped (every later label would shift), never read twice
    "class_symlink_broken": (class_link(lambda root: "/nonexistent/class"), [], "class folder 'c_link' is a broken symlink"),
    "class_symlink_loop": (class_link(lambda root: root / "c_link"), [], "class folder 'c_link' is a looping symlink"),
    "class_symlink_to_root": (class_link(lambda root: root), [], "class folder 'c_link' links back to"),
    "class_symlink_to_ancestor": (class_link(lambda root: root.parent), [], "class folder 'c_link' links back to"),
    "class_symlink_to_other_class": (class_link(lambda root: root / "a"), [],
                                     "class folder 'c_link' is the same folder as (or nested with) class folder 'a'"),
    "class_name_not_utf8": (class_not_utf8, [], "class folder 'c_\\udcff' is not valid UTF-8 (raw bytes b'c_\\xff')"),
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_folder(case, tmp_path, monkeypatch, capsys):
    build, extra, needle = FOLDER_CASES[case]
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "images"
    build(root)
    before = snapshot(tmp_path)
    extra = [e.format(val=tmp_path / "val") for e in extra]
    assert gear(["shard"], "data.source=imagefolder", f"data.train_root={root}", *extra) == 2
    one_error_line(capsys, "shard", needle)
    assert snapshot(tmp_path) == before and not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------------------------
# params: every numeric key, negative / zero / nan / inf / wrong type


def numeric_keys() -> list[tuple[str, typing.Any]]:
    out = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif tp in (int, float) or tp in (list[int], list[float]):
                out.append((f"{prefix}{f.name}", tp))
    walk(Params, "")
    return out


NUMERIC = numeric_keys()
# keys for which 0 is a meaningful value (a weight, an off switch, a start step, ...); every other
# numeric key must refuse 0
ZERO_OK = {
    "align_weight", "align_weight_ar", "data.min_size", "teachers.zscore_strength",
    "tokenizer.commit_weight", "tokenizer.codebook_weight", "tokenizer.entropy_weight", "tokenizer.recon_weight",
    "tokenizer.perceptual_weight", "tokenizer.gan_weight", "tokenizer.gan_start", "tokenizer.warmup_steps",
    "tokenizer.weight_decay", "tokenizer.grad_clip", "tokenizer.ema_decay", "tokenizer.betas",
    "ar.class_dropout", "ar.token_dropout", "ar.resid_dropout", "ar.ffn_dropout", "ar.weight_decay", "ar.grad_clip", "ar.ema_decay", "ar.warmup_steps",
    "ar.betas", "tune.gan_start", "tune.weight_decay", "tune.grad_clip", "tune.ema_decay", "tune.betas",
    "sample.top_k", "sample.cfg_interval", "compute.workers", "compute.seed", "study.seeds",
    "study.recon_margin_db", "resources.train_gpus",
    "t2i.ar.align_weight", "t2i.ar.caption_dropout", "t2i.ar.token_dropout", "t2i.ar.resid_dropout",
    "t2i.ar.ffn_dropout", "t2i.ar.warmup_steps",
    "t2i.ar.weight_decay", "t2i.ar.grad_clip", "t2i.ar.ema_decay", "t2i.ar.betas", "t2i.sample.top_k", "t2i.sample.cfg_interval",
    "released.gpts.B.top_k", "released.gpts.L.top_k", "released.gpts.XL.top_k",
    "scaling.lambdas", "scaling.ladder_seeds",  # lambda 0: the guide without alignment; seed 0
    "compute.val_every",  # 0: validate on every log row
}


def value_for(tp, x) -> str:
    text = {float("nan"): ".nan", float("inf"): ".inf"}.get(x, repr(x)) if isinstance(x, float) else str(x)
    if x != x:
        text = ".nan"
    return {list[int]: f"[{text}]", list[float]: f"[{text}, {text}]"}.get(tp, text)


# huge: YAML reads 2**70 written out as an int; every int key has an upper bound (2**31 - 1 at most)
PARAM_CASES = [(key, tp, bad) for key, tp in NUMERIC for bad in ("neg", "zero", "nan", "inf", "type", "huge")
               if bad != "huge" or tp in (int, list[int])]


@pytest.mark.parametrize("key, tp, bad", PARAM_CASES, ids=[f"{k}-{b}" for k, _, b in PARAM_CASES])
def test_param(key, tp, bad, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    value = {"neg": value_for(tp, -1), "zero": value_for(tp, 0), "nan": value_for(tp, float("nan")),
             "inf": value_for(tp, float("inf")), "type": value_for(tp, "abc"), "huge": value_for(tp, 2**70)}[bad]
    rc = cli.main(["params", "--params", str(PARAMS), "--set", f"{key}={value}"])
    if bad == "zero" and key in ZERO_OK:
        assert rc == 0
        return
    assert rc == 2, f"{key}={value} accepted"
    line = one_error_line(capsys, "params", key)
    assert {"nan": "finite", "inf": "finite"}.get(bad, "") in line or tp in (int, list[int])
    assert list(tmp_path.iterdir()) == []


def test_params_table_row_values():
    """The issues' rows, verbatim: tau .inf and compute.workers -1 are refused; so are a seed numpy
    and torch cannot take, a resolution no image has and more loader processes than any node."""
    from gear.config import ParamsError, load_params
    for override, message in [
        ("tau=.inf", "tau = inf: must be a finite number"),
        ("compute.workers=-1", "compute.workers = -1: must be >= 0"),
        ("compute.workers=257", "compute.workers = 257: must be <= 256"),
        (f"compute.seed={2**70}", f"compute.seed = {2**70}: must be <= {2**32 - 1}"),
        (f"study.seeds=[0, {2**32}]", f"study.seeds[1] = {2**32}: must be <= {2**32 - 1}"),
        (f"data.resolution={2**40}", f"data.resolution = {2**40}: must be <= 4096"),
        (f"tau={10**400}", "tau = inf: must be a finite number"),  # an int too large for a float
    ]:
        with pytest.raises(ParamsError) as e:
            load_params(PARAMS, [override])
        assert str(e.value).startswith(message), (override, str(e.value))
    assert load_params(PARAMS, [f"compute.seed={2**32 - 1}", "compute.workers=256"]).compute.seed == 2**32 - 1


def test_sampling_knobs_are_refused_at_the_edge_for_both_conditions():
    """top_k beyond the codebook (the AR's vocabulary) and a reversed cfg_interval: one line when the
    params are read, for class and caption sampling alike, not after a snapshot is loaded."""
    from gear.config import ParamsError, load_params
    k = load_params(PARAMS).tokenizer.codebook_size
    for sec in ("sample", "t2i.sample"):
        for override, message in [(f"{sec}.top_k={k + 1}", f"{sec}.top_k = {k + 1}: must be <= the codebook size {k}"),
                                   (f"{sec}.cfg_interval=[0.5, 0.25]", f"{sec}.cfg_interval = [0.5, 0.25]: must be "
                                                                       "[start, end] with start <= end")]:
            with pytest.raises(ParamsError) as e:
                load_params(PARAMS, [override])
            assert str(e.value).startswith(message), (override, str(e.value))
        assert load_params(PARAMS, [f"{sec}.top_k={k}"]) is not None


# A params file (an overlay of params.yaml) or a --set value that is not what it should be.
PARAMS_FILE_CASES = {
    # a key given twice, at any depth: YAML keeps the last one silently
    "duplicate_top_key": ("tau: 0.1\ndata:\n  resolution: 32\ntau: 0.2\n", [],
                          "key tau is given twice (lines 1 and 4)"),
    "duplicate_section": ("tokenizer:\n  steps: 9\n  lr: 0.01\ntokenizer:\n  steps: 5\n", [],
                          "key tokenizer is given twice (lines 1 and 4)"),
    "duplicate_nested_key": ("t2i:\n  ar:\n    steps: 6\n    lr: 0.1\n    steps: 9\n", [],
                             "key t2i.ar.steps is given twice (lines 3 and 5)"),
    "duplicate_in_set": (None, ["tokenizer={steps: 5, steps: 6}"], "key steps is given twice"),
    # no mapping of keys
    "empty_file": ("", [], "is empty"),
    "comments_only": ("# all defaults, surely\n\n   \n", [], "is empty"),
    "a_list": ("- tau: 0.5\n", [], "must be a mapping of keys, got a list"),
    "a_scalar": ("tau\n", [], "must be a mapping of keys, got a str"),
    "empty_section": ("tokenizer:\ntau: 0.5\n", [], "tokenizer: must be a mapping of keys, got None"),
    # not UTF-8 text
    "binary": (bytes(range(256)) * 4, [], "is not UTF-8 text"),
    "utf16_bom": ("tau: 0.5\n".encode("utf-16"), [], "is not UTF-8 text (byte 0)"),
    "utf16_no_bom": ("tau: 0.5\n".encode("utf-16-le"), [], "holds NUL bytes"),
    "latin1": ("# r\xe9glages\ntau: 0.5\n".encode("latin-1"), [], "is not UTF-8 text (byte 3)"),
    "invalid_yaml": ("tau: [0.5\n", [], "is not valid YAML at line 2"),
    "int_of_5000_digits": ("compute:\n  seed: 1" + "0" * 5000 + "\n", [], "cannot be read: Exceeds the limit"),
    "nested_5000_deep": ("tau: " + "[" * 5000 + "]" * 5000 + "\n", [], "cannot be read: maximum recursion depth"),
    # --set values
    "set_invalid_yaml": (None, ["ar.sizes=[tiny"], "override 'ar.sizes=[tiny': the value is not valid YAML"),
    "set_no_value": (None, ["ar.sizes"], "expected key=value"),
    "set_empty_key": (None, ["ar..lr=0.1"], "expected key=value"),
    "set_newline_in_key": (None, ["ta\nu=0.5"], "unknown key ta\\nu"),
}


@pytest.mark.parametrize("case", PARAMS_FILE_CASES)
def test_params_file(case, tmp_path, monkeypatch, capsys):
    content, overrides, needle = PARAMS_FILE_CASES[case]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "overlay.yaml"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = ["--params", str(path if content is not None else PARAMS)]
    assert cli.main(["shard", *args, *(a for o in overrides for a in ("--set", o))]) == 2
    one_error_line(capsys, "shard", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["overlay.yaml"] if content is not None else [])


def test_params_file_utf8_bom_and_yaml_merge_keys_are_fine(tmp_path):
    from gear.config import load_params
    (tmp_path / "a.yaml").write_bytes("\ufefftau: 0.5\n".encode())
    assert load_params(tmp_path / "a.yaml").tau == 0.5
    (tmp_path / "b.yaml").write_text("t2i:\n  sample: &s {top_k: 5}\n  judge: {steps: 3}\n"
                                     "tune:\n  <<: {steps: 4, lr_ar: 0.5}\n  steps: 7\n")
    p = load_params(tmp_path / "b.yaml")
    assert (p.t2i.sample.top_k, p.tune.steps, p.tune.lr_ar) == (5, 7, 0.5)  # a merge key is no duplicate


# ---------------------------------------------------------------------------------------------
# checkpoints: `gear tokenizer-init` with tokenizer.init, and resumable training state


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Tiny embedded shards, shared read-only by the checkpoint cases and copied by the shard ones."""
    root = tmp_path_factory.mktemp("bad_input_shards")
    with contextlib.chdir(root):
        assert gear(["shard"]) == 0
    return root / "data" / "shards"


def tiny_tokenizer(**over) -> Tokenizer:
    """A tokenizer of tests/tiny.py's TINY params (or another config, with `over`)."""
    kv = dict(item.split("=", 1) for item in TINY if item.startswith("tokenizer."))
    fields = {k: int(kv[f"tokenizer.{k}"]) for k in ("ch", "z_channels", "norm_groups", "codebook_size", "code_dim")}
    torch.manual_seed(0)
    return Tokenizer(TokenizerConfig(**{"quantizer": "vq", "ch_mult": [1, 2, 2], **fields, **over}))


def ckpt_other_width(d: Path) -> Path:
    torch.save({"model": tiny_tokenizer(ch=16, norm_groups=4).state_dict()}, d / "other_width.pt")
    return d / "other_width.pt"


def ckpt_other_codebook(d: Path) -> Path:
    torch.save({"model": tiny_tokenizer(codebook_size=64).state_dict()}, d / "other_codebook.pt")
    return d / "other_codebook.pt"


def ckpt_other_quantizer(d: Path) -> Path:
    torch.save(tiny_tokenizer(quantizer="lfq", codebook_size=16, code_dim=4).state_dict(), d / "lfq.pt")
    return d / "lfq.pt"


def ckpt_truncated(d: Path) -> Path:
    torch.save({"model": tiny_tokenizer().state_dict()}, d / "cut.pt")
    data = (d / "cut.pt").read_bytes()
    (d / "cut.pt").write_bytes(data[: len(data) // 2])
    return d / "cut.pt"


def ckpt_pickle_as_safetensors(d: Path) -> Path:
    torch.save(tiny_tokenizer().state_dict(), d / "tok.safetensors")
    return d / "tok.safetensors"


def ckpt_code_pickle(d: Path) -> Path:
    return write_exploit(d / "evil.pt", d / "MARKER")


def ckpt_release_ar_ema(d: Path) -> Path:
    """The GEAR release's stage-1 layout; naming its "ema" (the AR's EMA) is refused."""
    tok = tiny_tokenizer().state_dict()
    torch.save({"vq": tok, "vq_ema": tok, "ema": {"layers.0.attention.wqkv.weight": torch.zeros(3, 1)}},
               d / "gear_stage1.pt")
    return d / "gear_stage1.pt"


def ckpt_not_a_dict(d: Path) -> Path:
    torch.save([torch.zeros(2)], d / "list.pt")
    return d / "list.pt"


CKPT_CASES = {
    "other_width": (ckpt_other_width, [], ("first mismatch encoder.conv_in.weight (16, 3, 3, 3) vs model (8, 3, 3, 3)",
                    "it fits quantizer=vq tokenizer.codebook_size=32 tokenizer.code_dim=4 tokenizer.ch=16 ")),
    "other_codebook": (ckpt_other_codebook, [], ("first mismatch quantize.embedding.weight (64, 4) vs model (32, 4)",
                       "it fits quantizer=vq tokenizer.codebook_size=64")),
    "other_quantizer": (ckpt_other_quantizer, [], ("first mismatch quantize.embedding.weight (missing)",
                        "it fits quantizer=lfq tokenizer.codebook_size=16")),
    "truncated_file": (ckpt_truncated, [], "is unreadable or truncated"),
    "pickle_named_safetensors": (ckpt_pickle_as_safetensors, [], "is not a readable safetensors file"),
    "pickle_that_runs_code": (ckpt_code_pickle, [], "holds non-tensor objects, refused unread"),
    "release_key_is_the_ar_ema": (ckpt_release_ar_ema, ["tokenizer.init_key=ema"],
                                  "entry 'ema' of {path} holds no tokenizer"),
    "release_key_absent": (ckpt_release_ar_ema, ["tokenizer.init_key=model"],
                           "tokenizer.init_key = 'model': the tokenizer checkpoint has no dict entry 'model'"),
    "not_a_dict": (ckpt_not_a_dict, [], "holds a list, not a dict of tensors"),
    "missing_file": (lambda d: d / "absent.pt", [], "not found"),
}


@pytest.mark.parametrize("case", CKPT_CASES)
def test_checkpoint(case, shards, tmp_path, monkeypatch, capsys):
    make, extra, needle = CKPT_CASES[case]
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    before = snapshot(tmp_path)
    rc = gear(["tokenizer-init"], f"data.shard_dir={shards}", f"tokenizer.init={path}", *extra)
    assert rc == 2
    needles = needle if isinstance(needle, tuple) else (needle.format(path=path),)
    one_error_line(capsys, "tokenizer-init", *needles)
    assert snapshot(tmp_path) == before and not (tmp_path / "models").exists()
    assert not (tmp_path / "MARKER").exists()


def write_state(d: Path, obj) -> Path:
    path = d / ".gear_state" / "tokenizer_init" / "state.pt"
    path.parent.mkdir(parents=True)
    torch.save(obj, path)
    return path


STATE_CASES = {
    "older_format": (lambda d: write_state(d, {"step": 3, "format": 1}), "has format 1, this gear writes 2"),
    "no_format_key": (lambda d: write_state(d, {"step": 3}), "has format 1"),
    "code_pickle": (lambda d: write_state(d, {"step": Exploit(d / "MARKER")}), "is unreadable (UnpicklingError)"),
}


@pytest.mark.parametrize("case", STATE_CASES)
def test_training_state(case, shards, tmp_path, monkeypatch, capsys):
    make, needle = STATE_CASES[case]
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    before = snapshot(tmp_path)
    assert gear(["tokenizer-init"], f"data.shard_dir={shards}") == 2
    one_error_line(capsys, "tokenizer-init", needle)
    assert snapshot(tmp_path) == before and not (tmp_path / "models").exists()
    assert not (tmp_path / "MARKER").exists()


def test_release_wrapping_prefers_tokenizer_ema_and_key_is_nameable():
    ema, raw = tiny_tokenizer(), tiny_tokenizer()
    with torch.no_grad():
        raw.quant_conv.weight.add_(1.0)
    release = {"vq": raw.state_dict(), "vq_ema": ema.state_dict(), "model": {"layers.0.attention.wqkv.weight": 0},
               "ema": {"layers.0.attention.wqkv.weight": torch.zeros(3, 1)}}  # the AR's EMA: never picked
    got = load_tokenizer_state(tiny_tokenizer(), release)
    assert torch.equal(got.quant_conv.weight, ema.quant_conv.weight)
    got = load_tokenizer_state(tiny_tokenizer(), release, key="vq")
    assert torch.equal(got.quant_conv.weight, raw.quant_conv.weight)
    no_ema = {k: v for k, v in release.items() if k != "vq_ema"}
    assert torch.equal(load_tokenizer_state(tiny_tokenizer(), no_ema).quant_conv.weight, raw.quant_conv.weight)


def test_every_torch_load_is_weights_only():
    """Static guard: no torch.load in the package can unpickle code."""
    for path in sorted((ROOT / "gear").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path.relative_to(ROOT)}:{node.lineno}"
    state = (ROOT / "gear" / "train" / "state.py").read_text()
    assert "weights_only=True, mmap=True" in state  # resumable state: paged in, not copied per rank


def test_code_pickle_refused_by_every_loader(tmp_path):
    from gear.io import ArtifactError
    from gear.metrics.features import _load_stats
    from gear.models.ar import GPT, GPTConfig
    from gear.models.llamagen_gpt import load_gpt

    evil = write_exploit(tmp_path / "evil.pt", tmp_path / "MARKER")
    gpt = GPT(GPTConfig(vocab_size=8, grid=2, n_layer=1, dim=16, n_head=1, num_classes=2, class_qk="zero"))
    with pytest.raises(ArtifactError, match="refused unread"):
        load_gpt(gpt, evil)
    with pytest.raises(ArtifactError, match="is unreadable"):
        _load_stats(evil)
    assert not (tmp_path / "MARKER").exists()


# ---------------------------------------------------------------------------------------------
# shards: damaged or foreign shard sets, through `gear teacher` (the first stage that reads them)


def rewrite_tar(path: Path, drop_suffix: str | None = None, keep: int | None = None) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        dropped = False
        for m, data in members:
            if drop_suffix and not dropped and m.name.endswith(drop_suffix):
                dropped = True
                continue
            tar.addfile(m, io.BytesIO(data))


def fix_manifest(shard_dir: Path) -> None:
    """Record the current bytes of each shard: what a shard writer that lost a member would write."""
    man = json.loads((shard_dir / "manifest.json").read_text())
    for split in man["splits"].values():
        for s in split["shards"]:
            s["bytes"] = (shard_dir / s["name"]).stat().st_size
    (shard_dir / "manifest.json").write_text(json.dumps(man))


def truncate_shard(d: Path):
    tar = d / "train-000000.tar"
    os.truncate(tar, tar.stat().st_size // 2)


def label_missing(d: Path):
    rewrite_tar(d / "train-000000.tar", drop_suffix=".cls")
    fix_manifest(d)


def foreign_shard(d: Path):
    shutil.copy(d / "val-000000.tar", d / "train-000000.tar")  # another split's shard under this name


def same_count_other_bytes(d: Path):
    with open(d / "train-000000.tar", "ab") as f:
        f.write(bytes(10240))  # extra zero blocks: the tar still reads, but it is not this manifest's file


def all_shards_missing(d: Path):
    for p in d.glob("train-*.tar"):
        p.unlink()


SHARD_CASES = {
    "truncated_tar": (truncate_shard, [], 0, "truncated or corrupt"),
    "member_missing_its_label": (label_missing, [], 0, "samples lack some of their members (cls, png)"),
    "manifest_count_mismatch": (foreign_shard, [], 2, "the manifest does not describe these shards"),
    "manifest_bytes_mismatch": (same_count_other_bytes, [], 2, "the manifest does not describe these shards"),
    # the shards' provenance record (gear/provenance.py) names the key and the command
    "manifest_other_resolution": (lambda d: None, ["data.resolution=32"], 2,
                                  "was made with data.resolution = 16, params give 32; remake it: `gear shard"),
    "manifest_not_json": (lambda d: (d / "manifest.json").write_text("{"), [], 2, "is not valid JSON"),
    "manifest_missing": (lambda d: (d / "manifest.json").unlink(), [], 2, "run `gear shard` first"),
    "every_train_shard_missing": (all_shards_missing, [], 2, "no readable samples in the train shards"),
}


@pytest.mark.parametrize("case", SHARD_CASES)
def test_shards(case, shards, tmp_path, monkeypatch, capsys):
    damage, extra, code, needle = SHARD_CASES[case]
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    damage(copy)
    before = snapshot(tmp_path)
    if code == 0:
        with pytest.warns(RuntimeWarning) as record:
            assert gear(["teacher"], f"data.shard_dir={copy}", *extra) == 0
        lines = [str(w.message) for w in record if needle in str(w.message)]
        assert lines and all("\n" not in line for line in lines)
        assert (tmp_path / "models" / "teacher" / "model.safetensors").exists()
        return
    assert gear(["teacher"], f"data.shard_dir={copy}", *extra) == code
    one_error_line(capsys, "teacher", needle)
    assert snapshot(tmp_path) == before and not (tmp_path / "models").exists()


# ---------------------------------------------------------------------------------------------
# decoded as a viewer shows it: EXIF orientation, ICC profiles (gear/data/images.py)

P3_COLORANTS = ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))  # D50
SRGB_COLORANTS = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


def icc_profile(colorants, gamma: float = 2.2, name: str = "Display P3 (test)") -> bytes:
    """A minimal ICC v2 RGB display profile (matrix + one gamma curve), built byte by byte: PIL can
    only create sRGB, and a phone's Display-P3 profile is exactly this kind."""
    def s15(x): return struct.pack(">i", round(x * 65536))
    def xyz(v): return b"XYZ " + bytes(4) + b"".join(s15(c) for c in v)
    desc = name.encode() + b"\0"
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = {b"desc": b"desc" + bytes(4) + struct.pack(">I", len(desc)) + desc + bytes(79),
            b"wtpt": xyz((0.9642, 1.0, 0.8249)), b"rXYZ": xyz(colorants[0]), b"gXYZ": xyz(colorants[1]),
            b"bXYZ": xyz(colorants[2]), b"rTRC": curve, b"gTRC": curve, b"bTRC": curve}
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags.items():
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + bytes(12) + b"acsp" + bytes(32) + s15(0.9642) + s15(1.0) + s15(0.8249))
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + table + data


def p3_to_srgb(rgb) -> np.ndarray:
    """The sRGB rendering of a P3 (gamma 2.2) colour, computed independently of LittleCMS."""
    lin = (np.asarray(rgb) / 255.0) ** 2.2
    srgb = np.linalg.solve(np.array(SRGB_COLORANTS).T, np.array(P3_COLORANTS).T @ lin).clip(0, 1)
    return 255 * np.where(srgb <= 0.0031308, 12.92 * srgb, 1.055 * srgb ** (1 / 2.4) - 0.055)


P3_COLOUR = (200, 100, 50)


def quadrants() -> np.ndarray:
    """16 x 32 image (H x W): red, green / blue, white quadrants."""
    a = np.zeros((16, 32, 3), np.uint8)
    a[:8, :16], a[:8, 16:], a[8:, :16], a[8:, 16:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
    return a


def oriented_jpeg(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(quadrants()).save(path, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    return path


def p3_jpeg(path: Path) -> Path:
    Image.new("RGB", (RES, RES), P3_COLOUR).save(path, "JPEG", quality=95, subsampling=0,
                                                 icc_profile=icc_profile(P3_COLORANTS))
    return path


@pytest.mark.parametrize("orientation, turns", [(6, -1), (3, 2), (1, 0)])  # np.rot90 turns (-1: clockwise)
def test_exif_orientation_is_applied(orientation, turns, tmp_path):
    with Image.open(oriented_jpeg(tmp_path / "photo.jpg", orientation)) as im:
        seen = decode(im)
    want = np.rot90(quadrants(), turns)
    got = np.asarray(seen.image).astype(int)
    assert got.shape == want.shape and np.abs(got - want).mean() < 6
    assert seen.rotated == (orientation != 1) and not seen.colour_converted


def test_icc_profile_is_converted_to_srgb(tmp_path):
    want = p3_to_srgb(P3_COLOUR)  # about (216, 93, 24): a P3 orange is more saturated in sRGB
    with Image.open(p3_jpeg(tmp_path / "p3.jpg")) as im:
        assert im.info["icc_profile"]
        seen = decode(im)
        raw = np.asarray(im.convert("RGB")).reshape(-1, 3).mean(0)
    got = np.asarray(seen.image).reshape(-1, 3).mean(0)
    assert np.abs(got - want).max() < 3, (got, want)
    assert np.abs(raw - want).max() > 15  # what ignoring the profile gave
    assert seen.colour_converted and not seen.rotated
    # alpha is carried through the conversion, then composited over white
    img = Image.new("RGBA", (4, 4), P3_COLOUR + (0,))
    img.info["icc_profile"] = icc_profile(P3_COLORANTS)
    assert (np.asarray(decode(img).image) == 255).all()
    # an sRGB-tagged image keeps its colours, in every mode that can carry a profile
    grey16 = Image.fromarray(np.full((4, 4), 100 * 257, np.uint16))
    for img, want in ((Image.new("RGB", (4, 4), P3_COLOUR), P3_COLOUR),
                      (Image.new("RGB", (4, 4), P3_COLOUR).quantize(4), P3_COLOUR),  # palette
                      (Image.new("L", (4, 4), 100), (100,) * 3), (grey16, (100,) * 3)):
        img.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        seen = decode(img)
        assert seen.colour_converted and np.abs(np.asarray(seen.image).astype(int) - want).max() <= 1, img.mode


def test_shards_carry_decoded_pixels_and_the_manifest_counts_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = good_folder(tmp_path / "images")
    oriented_jpeg(root / "a" / "portrait.jpg", 6)
    oriented_jpeg(root / "b" / "upside_down.jpg", 3)
    p3_jpeg(root / "b" / "p3.jpg")
    assert gear(["shard"], "data.source=imagefolder", f"data.train_root={root}", "data.val_fraction=0.3") == 0
    man = json.loads(Path("data/shards/manifest.json").read_text())
    assert man["decoded"] == {"rotated": 2, "colour_converted": 1} and man["skipped"] == []
    images = shard_images(Path("data/shards"))
    assert len(images) == 9
    assert any(np.abs(im.reshape(-1, 3).mean(0) - p3_to_srgb(P3_COLOUR)).max() < 3 for im in images)
    # both turned photos, as seen (turned, then center-cropped to 16 x 16); the stored, sideways
    # crops would be red|green over blue|white
    seen = [np.rot90(quadrants(), -1)[8:24], np.rot90(quadrants(), 2)[:, 8:24]]
    for want in seen:
        assert any(np.abs(im.astype(int) - want).mean() < 12 for im in images)


# ---------------------------------------------------------------------------------------------
# names: not UTF-8, or holding a newline

def test_names_that_are_not_utf8_or_hold_a_newline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = good_folder(tmp_path / "images")
    a = os.fsencode(root / "a")
    kept = Path(os.fsdecode(a + b"/ok_\xff.png"))          # kept by its bytes, hashed for the hold-out
    noise(kept, seed=99)
    broken = Path(os.fsdecode(a + b"/bad\nname_\xfe.png"))  # skipped: its warning stays on one line
    broken.write_bytes(b"garbage")
    assert gear(["shard"], "data.source=imagefolder", f"data.train_root={root}", "data.val_fraction=0.3") == 0
    man = json.loads(Path("data/shards/manifest.json").read_text())
    assert man["splits"]["train"]["count"] + man["splits"]["val"]["count"] == 7
    assert [s["path"] for s in man["skipped"]] == [str(broken)]  # the exact name, back from JSON
    assert "\n" not in man["skipped"][0]["reason"]
    err = capsys.readouterr().err.splitlines()
    lines = [l for l in err if "name_" in l]
    assert len(lines) == 1 and lines[0].startswith("warning: skipped ") and "bad\\nname_\\udcfe.png" in lines[0]
    assert not any(l.startswith("name_") for l in err)
    # the same tree gives the same split again (the hold-out hashes the raw bytes, not a lossy text)
    first = {p.name: p.read_bytes() for p in Path("data/shards").glob("*.tar")}
    assert gear(["shard"], "data.source=imagefolder", f"data.train_root={root}", "data.val_fraction=0.3") == 0
    assert {p.name: p.read_bytes() for p in Path("data/shards").glob("*.tar")} == first


# ---------------------------------------------------------------------------------------------
# one writer per output: a second `gear shard` while one runs

def test_second_shard_run_is_refused_while_one_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert gear(["shard"]) == 0
    before = snapshot(tmp_path)
    with exclusive(Path("data/shards"), "gear shard"):  # what the running one holds
        assert gear(["shard"]) == 2
        one_error_line(capsys, "shard", f"data/shards is being written by a running `gear shard` (pid {os.getpid()})")
    assert snapshot(tmp_path) == before  # nothing of either run's temp folder or lock is left
    assert gear(["shard"]) == 0  # the lock went with its holder
    assert snapshot(tmp_path).keys() == before.keys()


# ---------------------------------------------------------------------------------------------
# disk full: one line naming the path, the old file intact

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"w": torch.ones(3)})
    old = path.read_bytes()
    monkeypatch.setattr("safetensors.torch.save_file", no_space)
    with pytest.raises(ArtifactError, match=f"^disk full while writing {path} "):
        save_tensors(path, {"w": torch.zeros(3)})
    with pytest.raises(ArtifactError, match="disk full"):  # the fsync / rename can hit it too
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"new")
            monkeypatch.setattr("gear.io.os.fsync", no_space)
    assert path.read_bytes() == old and sorted(tmp_path.iterdir()) == [path]


def test_disk_full_while_sharding_keeps_the_old_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert gear(["shard"]) == 0
    before = snapshot(tmp_path)
    monkeypatch.setattr("gear.data.shard._add_member", no_space)
    assert gear(["shard"]) == 2
    one_error_line(capsys, "shard", "disk full while writing data/shards")
    assert snapshot(tmp_path) == before


def test_disk_full_during_the_state_save(tmp_path, monkeypatch):
    from types import SimpleNamespace
    from gear.train.state import Checkpointer

    rt = SimpleNamespace(distributed=False, is_main=True, world=1, rank=0)
    ckpt = Checkpointer(tmp_path, rt, compat={"a": 1})
    ckpt.save({"step": 3})
    monkeypatch.setattr("gear.train.state.torch.save", no_space)
    with pytest.raises(ArtifactError, match=f"^disk full while writing {ckpt.path} "):
        ckpt.save({"step": 4})
    monkeypatch.undo()
    assert ckpt.load()["step"] == 3 and sorted(tmp_path.iterdir()) == [ckpt.path]


def test_disk_full_at_the_final_write_keeps_model_and_metrics(shards, tmp_path, monkeypatch, capsys):
    """A failed run over an earlier output keeps the old model *and* its metrics: the live curve is
    staged under compute.state_dir and published only after the model (train/logger.py)."""
    monkeypatch.chdir(tmp_path)
    assert gear(["teacher"], f"data.shard_dir={shards}") == 0
    outputs = lambda: {k: v for k, v in snapshot(tmp_path).items() if k.startswith(("models", "metrics"))}
    before = outputs()
    assert any(k.startswith("metrics/teacher/") for k in before)
    capsys.readouterr()
    monkeypatch.setattr("safetensors.torch.save_file", no_space)
    assert gear(["teacher"], f"data.shard_dir={shards}") == 2
    one_error_line(capsys, "teacher", "disk full while writing models/teacher")
    assert outputs() == before


# ---------------------------------------------------------------------------------------------
# files read back: cached real statistics, LPIPS weights, go through the checked loader

def real_cache(folder: Path):
    from gear.metrics.features import _save, fid_statistics
    from gear.metrics.fidelity import Extractor, cache_files, meta_path, write_meta

    ext = Extractor("custom", "testfeat", "features", None)
    feats = torch.randn(20, 8, dtype=torch.float64)
    feat_file, stat_file = cache_files(folder, "k", ext, ["features"])
    _save(feats, feat_file)
    _save(fid_statistics(feats), stat_file)
    write_meta(meta_path(str(folder), "k", ext), 20, ext, ["features"])
    return ext, feat_file, stat_file


def damage(kind: str, path: Path, marker: Path) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "code_pickle":
        write_exploit(path, marker)
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"mu": 0}))
    elif kind == "wrong_content":
        torch.save({"mu": torch.zeros(3)}, path)


DAMAGE = ("truncated", "empty", "code_pickle", "plain_pickle", "wrong_content")


@pytest.mark.parametrize("which", ("features", "stats"))
@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_real_cache_is_one_line_before_evaluation(kind, which, tmp_path, monkeypatch):
    from gear.metrics import evaluation
    from gear.metrics.features import read_real_cache

    ext, feat_file, stat_file = real_cache(tmp_path)
    real = read_real_cache(tmp_path, "k", ext)
    assert real.num_real == 20 and real.stats["sigma"].shape == (8, 8)
    target = feat_file if which == "features" else stat_file
    damage(kind, target, tmp_path / "MARKER")
    # the check every rank runs before any compute (evaluation.check_real) is the read itself
    monkeypatch.setattr(evaluation.paths, "real_stats_dir", lambda: tmp_path)
    with pytest.raises(ArtifactError) as e:
        evaluation.check_real({"cache_key": "k"}, ext)
    assert str(target) in str(e.value) and "rerun `gear evaluate real`" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "MARKER").exists()


def test_evaluate_checks_the_real_cache_before_computing():
    """Static guard: each evaluation gets its real set from check_real, ahead of its first batch."""
    import inspect
    from gear.stages import evaluate

    from gear.metrics import evaluation

    # the samples get theirs through evaluation.feature_model, which calls check_real
    assert "check_real(summary, fm.ext)" in inspect.getsource(evaluation.feature_model)
    for fn, call in ((evaluate.evaluate_tokenizer, "real = check_real("), (evaluate.evaluate_samples, "real = feature_model(")):
        src = inspect.getsource(fn)
        assert call in src and "read_real_cache" not in src
        assert src.index(call) < src.index("my_batches(" if "my_batches(" in src else "ar_layer_similarity(")


@pytest.mark.parametrize("kind", ("truncated", "empty", "code_pickle", "plain_pickle"))
def test_damaged_lpips_weights_are_one_line(kind, tmp_path):
    from gear.models.perceptual import LPIPS

    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg16.pth")
    torch.save({}, tmp_path / "lpips_vgg.pth")
    damage(kind, tmp_path / "vgg16.pth", tmp_path / "MARKER")
    with pytest.raises(ArtifactError, match=f"LPIPS VGG16 weights {tmp_path / 'vgg16.pth'} is (unreadable|empty)") as e:
        LPIPS(tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("stage", (["tokenizer-init"], ["tune", "--variant", "gear"]))
@pytest.mark.parametrize("weights", (None, "absent", "no_heads"))
def test_lpips_without_weights_fails_before_any_work(stage, weights, shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    extra = ["tokenizer.perceptual=lpips"]
    if weights == "absent":
        extra.append(f"tokenizer.lpips_weights={tmp_path / 'absent'}")
    elif weights == "no_heads":
        (tmp_path / "w").mkdir()
        torch.save({}, tmp_path / "w" / "vgg16.pth")
        extra.append(f"tokenizer.lpips_weights={tmp_path / 'w'}")
    before = snapshot(tmp_path)
    assert gear(stage, f"data.shard_dir={shards}", *extra) == 2
    needle = {None: "tokenizer.perceptual = lpips needs tokenizer.lpips_weights", "absent": "not found",
              "no_heads": "no LPIPS heads"}[weights]
    one_error_line(capsys, stage[0], needle)
    assert snapshot(tmp_path) == before
    # weight 0: the loss is never built, so nothing is needed
    from gear.config import load_params
    from gear.models.perceptual import check_perceptual
    check_perceptual(load_params(PARAMS, [*TINY, "tokenizer.perceptual=lpips", "tokenizer.perceptual_weight=0"]).tokenizer)


@pytest.mark.parametrize("kind", ("truncated", "empty", "not_a_zip", "array_cut_short"))
def test_damaged_samples_file_is_one_line(kind, tmp_path):
    from gear.artifacts import read_samples
    from gear.npz import save_npz

    path = tmp_path / "samples.npz"
    save_npz(path, images=np.zeros((12, 4, 4, 3), np.uint8), labels=np.zeros(12, np.int64))
    assert read_samples(tmp_path).shape == (12, 4, 4, 3)
    data = path.read_bytes()
    cut = {"truncated": data[: len(data) // 3], "empty": b"", "not_a_zip": b"not a zip\n" * 50,
           "array_cut_short": data[:200]}[kind]
    path.write_bytes(cut)
    with pytest.raises(ArtifactError, match=rf"{re.escape(str(path))} is (unreadable or truncated|not an \.npz)") as e:
        np.asarray(read_samples(tmp_path)).sum()
    assert "\n" not in str(e.value)
