"""params.yaml as typed, validated plain data.

`load_params(path, overrides)` is the only way the CLI, the Snakefile and the tests read params:
params.yaml's values (the one source of defaults: it lists every key), the file at `path` laid
over them (a preset lists only what it changes), then the `--set` overrides. Types and ranges
(gear/schema.py) are checked field by field, unknown keys are rejected by name (with a
suggestion), cross-field rules once after, and every problem raises `ParamsError` with a one-line
message that names the key, the bad value and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
from operator import attrgetter
import os
import shlex
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from gear.schema import (AR_SIZES, E2E_MODES, QUANTIZERS, TEACHERS, TEXT_ENCODERS, Params,  # noqa: F401
                         Range)

# Any file other than this one is an overlay laid over it. One rule, with no `base:` key to keep
# right: a preset, a test's scratch params or a sweep file works from any folder, and a tree's
# complete params.yaml copy (Snakemake/DVC workdirs) sets every key, so it means the same anywhere.
DEFAULTS = Path(__file__).resolve().parents[1] / "params.yaml"
MERGED_FROM = "# merged-from: "  # header line of a `gear params --out` file: the overlay it holds


class ParamsError(ValueError):
    """A bad params file or override; the message is one line a person can act on."""

    def __init__(self, message: str):  # one line, whatever a key or value in it holds
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


# ----------------------------------------------------------------------------------------------
# types and ranges, field by field


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any, rng: Range | None) -> Any:
    """Check `value` against the annotation `tp` and the range; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], rng)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):  # YAML 1.1 reads on/off as bools
            value = "on" if value else "off"
        if value not in allowed:
            raise ParamsError(f"{key} = {value!r}: must be one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key} = {value!r}: must be a {_type_name(tp)}")
        (inner,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, inner, rng) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key} = {value!r}: must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key} = {value!r}: must be an integer")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key} = {value!r}: must be a number")
        try:
            value = float(value)  # an int of 400 digits overflows here
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):  # .inf / .nan parse as floats; no knob means anything there
            raise ParamsError(f"{key} = {value!r}: must be a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key} = {value!r}: must be a string")
        return value
    else:
        raise TypeError(f"unsupported annotation {tp} for {key}")
    problem = rng.problem(value, tp is int) if rng else None
    if problem:
        raise ParamsError(f"{key} = {value!r}: {problem}")
    return value


@functools.cache
def _fields(cls: type) -> list[tuple[str, Any, Range | None]]:
    """(name, annotation, range) of each field of a params dataclass."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.metadata.get("range")) for f in dataclasses.fields(cls)]


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix[:-1] or 'params'}: must be a mapping of keys, got {raw!r}")
    fields = _fields(cls)
    names = [name for name, _, _ in fields]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ParamsError(f"unknown key {prefix}{key}{hint}; allowed here: {', '.join(names)}")
    kwargs = {}
    for name, tp, rng in fields:
        if name not in raw:  # only a defaults file can lack a key (_missing names it with the file)
            raise ParamsError(f"missing key {prefix}{name}")
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", raw[name], tp, rng)
    return cls(**kwargs)


def _missing(cls: type, raw: dict, prefix: str = "") -> str | None:
    """The first key of `cls` (sections walked) that `raw` does not list, or None."""
    for name, tp, _ in _fields(cls):
        if name not in raw:
            return prefix + name
        if dataclasses.is_dataclass(tp) and isinstance(raw[name], dict):
            if (key := _missing(tp, raw[name], f"{prefix}{name}.")) is not None:
                return key
    return None


# ----------------------------------------------------------------------------------------------
# cross-field rules


def _check(cond: bool, key: str, value: Any, rule: str) -> None:
    if not cond:
        raise ParamsError(f"{key} = {value!r}: {rule}")


PAIRS = ("tokenizer.betas", "ar.betas", "tune.betas", "t2i.ar.betas", "sample.cfg_interval", "t2i.sample.cfg_interval")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")  # .ckpt: Lightning (Open-MAGVIT2, IBQ)


def validate(p: Params) -> Params:
    """Cross-field rules (types and ranges were checked as the params were built); raises
    ParamsError on the first problem. The ablation grid's rows are checked at the edges
    (gear.dag.load_params), which build them through this module."""
    from gear.models.registry import ar_depth  # local: keep config import light

    for key in PAIRS:
        _check(len(attrgetter(key)(p)) == 2, key, attrgetter(key)(p), "must be two numbers")
    for key in ("sample", "t2i.sample"):  # the AR's vocabulary is the tokenizer's codebook (tokens' manifest)
        s = attrgetter(key)(p)
        _check(s.cfg_interval[0] <= s.cfg_interval[1], f"{key}.cfg_interval", s.cfg_interval,
               "must be [start, end] with start <= end")
        _check(s.top_k <= p.tokenizer.codebook_size, f"{key}.top_k", s.top_k,
               f"must be <= the codebook size {p.tokenizer.codebook_size} (tokenizer.codebook_size)")
    _check(p.compute.val_every % p.compute.log_every == 0, "compute.val_every", p.compute.val_every,
           f"must be a multiple of compute.log_every ({p.compute.log_every}): validation rides on a log row")
    _check((p.ar.custom_dim // p.ar.custom_heads) % 4 == 0, "ar.custom_heads", p.ar.custom_heads,
           f"ar.custom_dim {p.ar.custom_dim} / heads must give a head dim divisible by 4 (2D RoPE)")
    _check(p.ar.custom_dim % p.ar.custom_heads == 0, "ar.custom_heads", p.ar.custom_heads,
           f"must divide ar.custom_dim {p.ar.custom_dim}")
    _check(len(p.ar.sizes) > 0, "ar.sizes", p.ar.sizes, "must list at least one size")
    for s in sorted((set() if p.ar.align_layers else set(p.ar.sizes)) | {p.tune.ar_size}):
        depth = ar_depth(s, p)
        _check(p.align_layer <= depth, "align_layer", p.align_layer,
               f"must be within 1..{depth} (depth of AR size {s})")
    if p.ar.align_layers:
        _check(len(p.ar.align_layers) == len(p.ar.sizes), "ar.align_layers", p.ar.align_layers,
               f"must have one entry per ar.sizes {p.ar.sizes} (or be [])")
        for i, (s, l) in enumerate(zip(p.ar.sizes, p.ar.align_layers)):
            depth = ar_depth(s, p)
            _check(l <= depth, f"ar.align_layers[{i}]", l, f"must be within 1..{depth} (depth of AR size {s})")

    d, t = p.data, p.tokenizer
    if d.source == "imagefolder":
        _check(bool(d.train_root), "data.train_root", d.train_root, "required when data.source = imagefolder")
    _check(d.resolution % t.downsample == 0, "tokenizer.ch_mult", t.ch_mult,
           f"downsampling {t.downsample} must divide data.resolution {d.resolution}")
    arch_quantizer = {"lfq16": "lfq", "ibq16": "ibq"}.get(t.arch, p.quantizer)  # vq16 carries any
    _check(p.quantizer == arch_quantizer, "quantizer", p.quantizer,
           f"must be {arch_quantizer} for tokenizer.arch {t.arch}")
    if p.quantizer == "lfq":
        _check(t.codebook_size & (t.codebook_size - 1) == 0, "tokenizer.codebook_size", t.codebook_size,
               "must be a power of two for quantizer lfq")
    _check(t.ch % t.norm_groups == 0, "tokenizer.norm_groups", t.norm_groups, f"must divide tokenizer.ch {t.ch}")
    _check(t.warmup_steps < max(t.steps, 1), "tokenizer.warmup_steps", t.warmup_steps,
           f"must be in [0, tokenizer.steps = {t.steps})")
    if t.init != "scratch":
        _check(Path(t.init).suffix in CHECKPOINT_SUFFIXES, "tokenizer.init", t.init,
               "must be 'scratch' or a checkpoint path (.pt/.pth/.ckpt/.safetensors)")
    _check(t.init_key is None or t.init != "scratch", "tokenizer.init_key", t.init_key,
           "needs tokenizer.init (a checkpoint file)")
    if p.ar.init is not None:
        _check(Path(p.ar.init).suffix in CHECKPOINT_SUFFIXES, "ar.init", p.ar.init,
               "must be null or a GPT checkpoint path (.pt/.pth/.safetensors/.bin)")
    _check(p.ar.init_key is None or p.ar.init is not None, "ar.init_key", p.ar.init_key, "needs ar.init")
    for sec_name in ("tokenizer", "ar"):  # 0 steps: write the init checkpoint unchanged (a release evaluated)
        sec = getattr(p, sec_name)
        if sec.init in (None, "scratch"):
            _check(sec.steps > 0, f"{sec_name}.steps", sec.steps, f"must be > 0 (0 only with {sec_name}.init)")

    if p.stage2 == "ar-init":  # stage 1 runs per AR size; its steps count toward the AR's budget
        _check(p.ar.steps > p.tune.steps, "stage2", p.stage2,
               f"needs ar.steps ({p.ar.steps}) > tune.steps ({p.tune.steps}): the stage-1 AR's steps count "
               f"toward the budget, so ar-init continues it for ar.steps - tune.steps")
        _check(p.ar.init is None, "stage2", p.stage2, f"starts the GEAR AR from stage 1, not ar.init ({p.ar.init})")

    st = p.study
    _check(len(st.seeds) > 0, "study.seeds", st.seeds, "must list at least one seed")
    _check(len(set(st.seeds)) == len(st.seeds), "study.seeds", st.seeds, "must not repeat a seed")
    if p.teacher == "demo":
        _check(p.teachers.demo_patch == t.downsample, "teachers.demo_patch", p.teachers.demo_patch,
               f"must equal the tokenizer downsampling {t.downsample} so teacher patches match tokens")
    _validate_t2i(p)
    return p


def _validate_t2i(p: Params) -> None:
    from gear.models.registry import ar_depth

    d, a = p.t2i.data, p.t2i.ar
    if d.source == "folder":
        _check(bool(d.root), "t2i.data.root", d.root, "required when t2i.data.source = folder")
    if d.source == "jsonl":
        _check(bool(d.manifest), "t2i.data.manifest", d.manifest, "required when t2i.data.source = jsonl")
    depth = ar_depth(a.size, p)
    _check(a.align_layer <= depth, "t2i.ar.align_layer", a.align_layer, f"must be within 1..{depth} (depth of AR size {a.size})")
    _check(a.warmup_steps < a.steps, "t2i.ar.warmup_steps", a.warmup_steps, f"must be in [0, t2i.ar.steps = {a.steps})")
    _check(len(a.eval_steps) > 0 and a.eval_steps == sorted(set(a.eval_steps)) and a.eval_steps[-1] == a.steps,
           "t2i.ar.eval_steps", a.eval_steps,
           f"must be increasing steps in [1, t2i.ar.steps], ending at t2i.ar.steps = {a.steps}")


# ----------------------------------------------------------------------------------------------
# reading files: the defaults, an overlay, the --set overrides


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, at any depth: YAML keeps the
    last one silently, so a repeated `tokenizer:` block would replace the whole section."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _unique_keys(node, "", set())
        return self.construct_document(node)


def _unique_keys(node: yaml.Node, prefix: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: checked where its anchor is (and no loop on a recursive one)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys given here win, as YAML says
                continue
            name, line = f"{prefix}{key.value}", key.start_mark.line + 1
            if name in lines:
                raise ParamsError(f"key {name} is given twice (lines {lines[name]} and {line})")
            lines[name] = line
            _unique_keys(value, f"{name}.", seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _unique_keys(item, f"{prefix[:-1]}[{i}].", seen)


def _yaml(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except ParamsError as e:
        raise ParamsError(f"{what}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ParamsError(f"{what} is not valid YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as e:  # an int of 4,300+ digits; lists nested 1,000 deep
        raise ParamsError(f"{what} cannot be read: {str(e).split(':')[0] or type(e).__name__}") from None


def _read(path: Path) -> tuple[dict, str]:
    """(the mapping a params file holds, its text); anything else is a one-line ParamsError."""
    if not path.is_file():
        raise ParamsError(f"params file {path} not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a BOM some editors write is dropped
    except UnicodeDecodeError as e:
        raise ParamsError(f"params file {path} is not UTF-8 text (byte {e.start}): binary, or saved as UTF-16?") from None
    if "\x00" in text:
        raise ParamsError(f"params file {path} holds NUL bytes: binary, or saved as UTF-16?")
    raw = _yaml(text, f"params file {path}")
    if raw is None:
        raise ParamsError(f"params file {path} is empty (no keys, only comments or blanks)")
    if not isinstance(raw, dict):
        raise ParamsError(f"params file {path} must be a mapping of keys, got a {type(raw).__name__}")
    return raw, text


@functools.lru_cache(maxsize=4)
def _defaults_at(path: Path, stamp: tuple[int, int]) -> tuple[dict, Path | None]:
    raw, text = _read(path)
    if (key := _missing(Params, raw)) is not None:
        raise ParamsError(f"{path}: key {key} is missing; the defaults file lists every key "
                          f"(presets and --set only change them)")
    header = [line for line in text.splitlines()[:8] if line.startswith(MERGED_FROM)]
    origin = (path.parent / header[0][len(MERGED_FROM):].strip()).resolve() if header else None
    return raw, origin


def _defaults() -> tuple[dict, Path | None]:
    """(params.yaml's mapping, the overlay it was merged from by `gear params --out`, if any)."""
    try:
        st = DEFAULTS.stat()
    except OSError:
        raise ParamsError(f"defaults file {DEFAULTS} not found (gear reads its defaults from the "
                          f"repository's params.yaml)") from None
    raw, origin = _defaults_at(DEFAULTS, (st.st_mtime_ns, st.st_size))
    return copy.deepcopy(raw), origin


def _merge(base: dict, over: dict) -> dict:
    """`over` laid on `base`: sections merge key by key, any other value (a list too) replaces."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merge(base[key], value) if both else value
    return out


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, eq, value = text.partition("=")
    path = key.strip().split(".")
    if not eq or not all(path):
        raise ParamsError(f"override {text!r}: expected key=value (e.g. tau=0.5 or ar.lr=3e-4)")
    return path, _yaml(value, f"override {text!r}: the value")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Each key=value laid on `raw` in turn (a section value merges into the section, as in a file)."""
    for text in overrides:
        path, value = _parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {text!r}: {part} is not a section")
        old = node.get(path[-1])
        node[path[-1]] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return raw


def params_from_dict(raw: dict) -> Params:
    """`raw` laid over params.yaml's values, checked: `params_from_dict({})` is the defaults."""
    defaults, _ = _defaults()
    return validate(_build(Params, _merge(defaults, raw), ""))


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """params.yaml's values, the file at `path` laid over them, then `overrides` (key=value, the
    value in YAML); `load_params()` is the defaults."""
    defaults, origin = _defaults()
    path = Path(path) if path is not None else DEFAULTS
    overlay, _ = _read(path)
    if origin not in (None, DEFAULTS, path.resolve()) and _missing(Params, overlay) is not None:
        # the defaults are a preset already: this overlay would inherit that preset's values
        raise ParamsError(f"{DEFAULTS.name} was written by `gear params --out` from "
                          f"{os.path.relpath(origin)}: {path} would be laid over that preset, not "
                          f"over the defaults; restore them first (git checkout {DEFAULTS.name})")
    return validate(_build(Params, apply_overrides(_merge(defaults, overlay), overrides or []), ""))


def params_yaml(params: Params, source: str | Path, overrides: list[str], out: str | Path) -> str:
    """`params` as a complete params file for `out` (what DVC reads), headed by the command that
    wrote it and a MERGED_FROM line naming the overlay (load_params refuses to stack another on it)."""
    def one_line(text: str) -> str:  # a newline in a --set value must not end the comment
        return text.replace("\r", "\\r").replace("\n", "\\n")

    command = shlex.join(["gear", "params", "--params", str(source),
                          *(a for o in overrides for a in ("--set", o)), "--out", str(out)])
    restore = "; `git checkout params.yaml` restores the defaults" if Path(out).resolve() == DEFAULTS else ""
    header = (f"# Written by `{one_line(command)}`:\n"
              f"# params.yaml's defaults with the overlay and --set values laid over them, validated. Edit\n"
              f"# the overlay and rerun that command rather than editing this file{restore}.\n"
              f"{MERGED_FROM}{one_line(os.path.relpath(Path(source).resolve(), Path(out).resolve().parent))}\n")
    return header + yaml.safe_dump(params.to_dict(), sort_keys=False)
