"""The seed's ablation grid: one axis varies at a time, every other knob at its default.

    rows = grid(params)               # the default row, then every other value of each axis
    row = find(params, "tau-0.5")     # name -> Row (an unknown name is a one-line ParamsError)
    p = row_params(params, row)       # params with the row's overrides, validated
    layout(params, row)               # where its stages read and write (a gear.paths.Layout)

Axes (params.ablations): training (gear / ste / no_gan), quantizer, tau, align_weight (lambda),
align_layer, teacher, tune_ar_size (the AR that guides the tokenizer in the end-to-end stage) and
init (warmup / scratch). An axis's default is the params' own value, so the default row of every
table is the main DAG's GEAR arm (models/tune/seed<N>/gear and what follows): it costs nothing
extra. Every other row is named <axis>-<value> (tau-0.5, training-ste) and runs the GEAR arm's
stages, tune .. evaluate, under ablations/<row>/. It shares what its overrides cannot change:
the shards, the real-image statistics, the teacher (unless the row needs a demo teacher the
main DAG does not train) and the warm-up (unless the row changes the quantizer or the tokenizer,
or the teacher that a `teacher` perceptual loss reads). So a tau row reuses shards, teacher and
warm-up, and a quantizer row trains its own warm-up.

A row whose teacher cannot be loaded here (no weights offline, or its library missing) is
skipped, with the reason, and the report lists it; an invalid value (tau 0, an unknown teacher)
is refused when params load, before any work.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from gear import paths
from gear.config import AR_SIZES, QUANTIZERS, TEACHERS, ParamsError, apply_overrides, params_from_dict

# training mode -> the params it sets (both, so each row is defined whatever the defaults are)
TRAINING = {"gear": {"e2e_mode": "gear", "tune.gan": True},
            "ste": {"e2e_mode": "ste", "tune.gan": True},
            "no_gan": {"e2e_mode": "gear", "tune.gan": False}}


@dataclass(frozen=True)
class Axis:
    name: str            # params.ablations.<name>
    title: str           # the report's heading
    key: str | None      # the param a value sets (None: training, see TRAINING)
    allowed: tuple = ()  # the values it may take (empty: any the param's own check accepts)


AXES = (
    Axis("training", "Training", None, tuple(TRAINING)),
    Axis("quantizer", "Quantizer", "quantizer", QUANTIZERS),
    Axis("tau", "Soft temperature tau", "tau"),
    Axis("align_weight", "Alignment weight lambda", "align_weight"),
    Axis("align_layer", "Alignment layer", "align_layer"),
    Axis("teacher", "Teacher encoder", "teacher", TEACHERS),
    Axis("tune_ar_size", "AR size in the end-to-end stage", "tune.ar_size", AR_SIZES),
    Axis("init", "Tokenizer init", "tune.init", ("warmup", "scratch")),
)
AXIS = {a.name: a for a in AXES}


def value_name(value) -> str:
    """0.5 -> '0.5', 1.0 -> '1', 'lfq' -> 'lfq' (the row name's value part)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Row:
    axis: str                       # "" for the default row
    value: object
    overrides: tuple                # ((dotted key, value), ...)

    @property
    def default(self) -> bool:
        return not self.overrides

    @property
    def name(self) -> str:
        return "default" if self.default else f"{self.axis}-{value_name(self.value)}"


DEFAULT = Row("", None, ())


def overrides(axis: Axis, value) -> dict:
    return dict(TRAINING[value]) if axis.key is None else {axis.key: value}


def default_value(params, axis: Axis):
    """The params' value of an axis (training: the mode whose settings the params hold)."""
    if axis.key is not None:
        return attrgetter(axis.key)(params)
    for name, sets in TRAINING.items():
        if all(attrgetter(k)(params) == v for k, v in sets.items()):
            return name
    return f"{params.e2e_mode}, gan {params.tune.gan}"


def _row(params, axis: Axis, value) -> Row:
    if value == default_value(params, axis):
        return DEFAULT
    return Row(axis.name, value, tuple(overrides(axis, value).items()))


def table(params, axis_name: str) -> list[Row]:
    """One axis's rows in the params' order, its default among them (first when not listed)."""
    axis = AXIS[axis_name]
    values = list(getattr(params.ablations, axis.name))
    rows = [_row(params, axis, v) for v in values]
    return rows if DEFAULT in rows else [DEFAULT, *rows]


def grid(params) -> list[Row]:
    """Every row once: the default row, then each axis's other values."""
    rows = [DEFAULT]
    for axis in AXES:
        rows += [r for r in table(params, axis.name) if r not in rows]
    return rows


def find(params, name: str) -> Row:
    """A row of the grid, or of the scaling study's ladder (gear/scaling.py: same machinery)."""
    from gear import scaling

    rows = {r.name: r for r in [*grid(params), *scaling.rows(params)]}
    if name not in rows:
        raise ParamsError(f"ablation row {name!r}: not in the grid; rows: {', '.join(rows)}")
    return rows[name]


def row_params(params, row: Row):
    """The params a row runs with. Hub teachers of teacher rows come from the Hugging Face cache
    (teachers.weights is the main teacher's file, not theirs)."""
    if row.default:
        return params
    raw = params.to_dict()
    sets = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in row.overrides]
    if row.axis == "teacher":
        sets.append("teachers.weights=null")
    return params_from_dict(apply_overrides(raw, sets))


def check_grid(params) -> None:
    """Every axis value is allowed and gives valid params (one line naming the first that does not)."""
    ab = params.ablations
    for axis in AXES:
        values = getattr(ab, axis.name)
        for i, v in enumerate(values):
            key = f"ablations.{axis.name}[{i}]"
            if axis.allowed and v not in axis.allowed:
                raise ParamsError(f"{key} = {v!r}: must be one of {', '.join(map(str, axis.allowed))}")
            if v in values[:i]:
                raise ParamsError(f"{key} = {v!r}: listed twice")
            row = _row(params, axis, v)
            try:
                row_params(params, row)
            except ParamsError as e:
                raise ParamsError(f"{key} = {v!r}: row {row.name} is invalid: {e}") from None
    if ab.eval_size is not None and ab.eval_size not in params.ar.sizes:
        raise ParamsError(f"ablations.eval_size = {ab.eval_size!r}: must be one of ar.sizes {params.ar.sizes}")


def skip_reason(params, row: Row) -> str | None:
    """Why a row does not run, from params alone (never from what a cache holds, so the job set of
    both tools is a function of the params): a hub teacher row while ablations.hub_teachers is false."""
    if row.axis == "teacher" and row.value != "demo" and not params.ablations.hub_teachers:
        return (f"teacher {row.value} needs hub weights: set ablations.hub_teachers true where they load "
                "(the Hugging Face cache or network)")
    if row.axis == "tune_ar_size" and params.stage2 == "ar-init":
        return "stage2 = ar-init guides stage 1 with each AR's own size (tune.ar_size is not read)"
    if row.axis == "align_layer" and params.stage2 == "ar-init" and params.ar.align_layers:
        return "stage2 = ar-init taps each size at its entry of ar.align_layers (align_layer is not read)"
    return None


def runnable(params) -> list[Row]:
    """The rows the ablation DAG runs beyond the main one (not the default, not skipped)."""
    return [r for r in grid(params) if not r.default and skip_reason(params, r) is None]


def layout(params, row: Row) -> paths.Layout:
    """Where a row's stages live: its own folder, the main teacher and warm-up unless it changes them.
    A row that changes compute.seed (the scaling study's upstream-<seed>) retrains both under its
    seed, and, where its teacher is the feature space (metrics.feature_space demo), measures against
    real statistics of its own."""
    if row.default:
        return paths.Layout()
    rp, root, here = row_params(params, row), paths.ablation_root(row.name), Path(".")
    reseeded = rp.compute.seed != params.compute.seed
    own_teacher = reseeded or (demo_needed(rp) and not demo_needed(params)) or rp.teachers != params.teachers
    warm = ("quantizer", "tokenizer")
    own_warmup = reseeded or rp.digest(*warm) != params.digest(*warm) or (
        rp.tokenizer.perceptual == "teacher" and (own_teacher or rp.teacher != params.teacher))
    own_real = reseeded and rp.metrics.feature_space == "demo"
    return paths.Layout(teacher=root if own_teacher else here, warmup=root if own_warmup else here, tuned=root,
                        real=root if own_real else here)


def eval_size(params) -> str:
    """The fresh AR size each row's gFID is measured with."""
    return params.ablations.eval_size or params.ar.sizes[0]


def outputs(params, row: Row, seed: int) -> dict[str, Path]:
    """The files a row's report numbers come from, for one study seed (the default row: the main DAG's)."""
    size = eval_size(params)
    lay = layout(params, row)
    if params.stage2 == "ar-init":  # a row's tokenizer is the one tuned for its eval size
        lay = dataclasses.replace(lay, guide=size)
    with paths.using(lay):
        return {"tokenizer": paths.eval_tokenizer_json("gear", seed),
                "samples": paths.eval_samples_json("gear", size, seed),
                "train_ar": paths.train_ar_metrics_dir("gear", size, seed) / "metrics.json"}


def reuses_ste_variant(params, row: Row) -> bool:
    """The `training-ste` row is the run `tune --variant ste` (tune.ablations) already makes: same
    params but e2e_mode, which the variant sets itself. The DAG copies that run instead of repeating it."""
    return row.axis == "training" and row.value == "ste" and "ste" in params.tune.ablations and params.tune.gan


def demo_needed(params) -> bool:
    """Whether the pipeline trains the demo teacher (as the alignment teacher or the feature space)."""
    return params.teacher == "demo" or params.metrics.feature_space == "demo"

