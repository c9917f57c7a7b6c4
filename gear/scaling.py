"""Issue 31's study: where does GEAR's direction appear? Target `scaling` (Snakemake) and
scaling/dvc.yaml, not part of `all`; `gear scaling-report` writes reports/scaling.{md,html,json}.

    rows(params)          # the ladder's rungs, the lambda rows at its top, the upstream rows, as ablation rows
    jobs(params)          # every job the target runs beyond the main DAG's
    row_tokenizer_json(...)   # the tokenizer evaluation a rung's numbers come from, per seed
    upstream_tokenizer_jsons(...)  # a reseeded seed's GEAR and baseline evaluations

Three parts, each on the machinery that already exists:
- The equal-compute control: the tune variant `continue` (tune.ablations; gear/stages/tune.py):
  the warm-up trained for tune.steps on its own losses (no AR, no alignment), same data order and
  seed as the GEAR tune; frozen and evaluated in the main DAG like any variant, tokenized and given
  its own fresh AR, sampled and evaluated here (the `*_continue` stages of gear/dag.py).
- The guide-capacity ladder: one ablation row per guide size in scaling.guides (tune.ar_size, the
  alignment tapped at the middle block), then one per lambda of scaling.lambdas at the largest
  guide. A rung runs only tune, freeze and evaluate tokenizer under ablations/<row>/: the
  tokenizer-side claims (C3, C4, C5 tokenizer) need no fresh AR. A rung equal to the params' own
  guide is the main DAG's GEAR arm (the default row: no run of its own).
- Every seed of scaling.ladder_seeds (default: study.seeds) runs every rung, with the same tune
  budget; the control and the claims run every study seed.
- Seeds that cover the whole pipeline (study.reseed_upstream): the main DAG's teacher and warm-up
  are single runs shared by every seed, so its intervals are conditional on them. With the option
  on, each study seed N also runs the row upstream-N (compute.seed = N): its own teacher, warm-up,
  baseline tokenizer (freeze, evaluation) and real statistics where its teacher is the feature
  space, then the GEAR tune at seed N, freeze and evaluation, all under ablations/upstream-N/. The
  tokenizer side only, as a rung (a fresh AR per reseeded seed is what it would cost); the report
  splits the spread of the tokenizer-side effects between the shared and the reseeded upstream.
  The seed equal to compute.seed is the main DAG's own (the default row: no run of its own).

No torch here: the Snakefile imports it.
"""
from __future__ import annotations

from operator import attrgetter
from pathlib import Path

from gear import ablations, paths
from gear.config import ParamsError
from gear.models.registry import ar_shape

LADDER_STAGES = ("tune", "freeze", "evaluate_tokenizer")
# an upstream row's jobs, in order (evaluate_real only where the row owns its real statistics)
UPSTREAM_STAGES = ("teacher", "tokenizer_init", "evaluate_real", "freeze_baseline", "evaluate_tokenizer_baseline",
                   *LADDER_STAGES)
CONTROL_STAGES = ("tokenize_continue", "train_ar_continue", "sample_continue", "evaluate_samples_continue")


def middle_block(size: str) -> int:
    """The tap of a rung: the middle block (tiny's 4 blocks: 2, as params.align_layer)."""
    return max(1, ar_shape(size)[0] // 2)


def guide_params(size: str) -> int:
    """A guide's transformer-block parameters, 12 L d^2 (attention 4 d^2 + MLP 8 d^2 per block):
    the ladder's x axis, independent of the codebook and the class table."""
    layers, dim, _ = ar_shape(size)
    return 12 * layers * dim * dim


def _row(params, axis: str, value, sets: dict) -> ablations.Row:
    changed = tuple((k, v) for k, v in sets.items() if attrgetter(k)(params) != v)
    return ablations.Row(axis, value, changed) if changed else ablations.DEFAULT


def _guide_sets(params, size: str) -> dict:
    """tune.ar_size and its tap; the fresh ARs keep their own taps (ar.align_layers pinned to the
    params' where it defers to align_layer): a rung trains none, and a shallow one must not refuse it."""
    sets = {"tune.ar_size": size, "align_layer": middle_block(size)}
    if not params.ar.align_layers and middle_block(size) != params.align_layer:
        sets["ar.align_layers"] = [params.align_layer] * len(params.ar.sizes)
    return sets


def guide_row(params, size: str) -> ablations.Row:
    """A rung: guide-<size> (the default row where size and tap are the params' own)."""
    return _row(params, "guide", size, _guide_sets(params, size))


def largest_guide(params) -> str:
    return max(params.scaling.guides, key=guide_params)


def lambda_row(params, weight: float) -> ablations.Row:
    """guide-<largest>-lambda-<w>: the largest rung with align_weight w."""
    size = largest_guide(params)
    return _row(params, f"guide-{size}-lambda", weight, {**_guide_sets(params, size), "align_weight": weight})


def ladder(params) -> list[tuple[str, ablations.Row]]:
    """(guide size, row) per rung, in parameter order."""
    return [(s, guide_row(params, s)) for s in sorted(params.scaling.guides, key=guide_params)]


def lambdas(params) -> list[tuple[float, ablations.Row]]:
    """(align_weight, row) at the largest guide: the params' own weight first, then scaling.lambdas."""
    ws = list(dict.fromkeys([params.align_weight, *params.scaling.lambdas]))
    top = guide_row(params, largest_guide(params))
    return [(w, top if w == params.align_weight else lambda_row(params, w)) for w in ws]


def ladder_rows(params) -> list[ablations.Row]:
    """Every ladder and lambda row beyond the main DAG (not the default row), each once."""
    out = []
    for r in [r for _, r in ladder(params)] + [r for _, r in lambdas(params)]:
        if not r.default and r not in out:
            out.append(r)
    return out


def reseeds(params) -> bool:
    """Whether the upstream rows run: study.reseed_upstream, a fresh-mode study as the ladder."""
    return params.study.reseed_upstream and params.stage2 == "fresh"


def upstream_row(params, seed: int) -> ablations.Row:
    """upstream-<seed>: compute.seed = seed, so its teacher and warm-up are trained under the study
    seed (the default row where compute.seed is that seed already: the main DAG's)."""
    return _row(params, "upstream", seed, {"compute.seed": seed})


def upstream(params) -> list[tuple[int, ablations.Row]]:
    """(study seed, its upstream row) per ladder seed when the study reseeds the upstream, else []:
    the upstream rows are tokenizer-side rows like the ladder's, and run its seeds (cost)."""
    return [(seed, upstream_row(params, seed)) for seed in ladder_seeds(params)] if reseeds(params) else []


def rows(params) -> list[ablations.Row]:
    """Every row the study runs beyond the main DAG (not the default row), each once."""
    return [*ladder_rows(params), *[r for _, r in upstream(params) if not r.default]]


def ladder_seeds(params) -> list[int]:
    """The seeds every ladder and lambda row runs (scaling.ladder_seeds; []: study.seeds)."""
    return list(params.scaling.ladder_seeds or params.study.seeds)


def control(params) -> bool:
    """Whether the equal-compute control runs (`continue` in tune.ablations)."""
    return paths.CONTROL in params.tune.ablations


def check(params) -> None:
    """One line for the first problem: a rung whose params are invalid, a size listed twice, a
    ladder row name an ablation row also has (they would share a folder)."""
    sc = params.scaling
    if len(set(sc.guides)) != len(sc.guides):
        raise ParamsError(f"scaling.guides = {sc.guides}: lists a size twice")
    if "custom" in sc.guides:
        raise ParamsError("scaling.guides: `custom` has no registry shape; name registry sizes")
    if len(sc.guides) == 0:
        raise ParamsError("scaling.guides: must list at least one guide size")
    stray = [x for x in sc.ladder_seeds if x not in params.study.seeds]
    if stray or len(set(sc.ladder_seeds)) != len(sc.ladder_seeds):
        raise ParamsError(f"scaling.ladder_seeds = {sc.ladder_seeds}: each must be one of study.seeds "
                          f"{params.study.seeds}, once")
    clash = {r.name for r in ablations.grid(params)} & {r.name for r in rows(params)}
    if clash:
        raise ParamsError(f"scaling rows {sorted(clash)}: an ablation row has the same name")
    for r in rows(params):
        try:
            ablations.row_params(params, r)
        except ParamsError as e:
            raise ParamsError(f"scaling row {r.name} is invalid: {e}") from None


def jobs(params) -> list:
    """Every job of the target `scaling` beyond the main DAG's (`all`): the control's fresh ARs, the
    ladder's tunes and the upstream rows; the report's own job apart."""
    from gear.dag import Job

    out = []
    if params.stage2 != "fresh":  # the control and the ladder are fresh-mode studies; ar-init adds its claims
        return out
    tuned = {"variant": "gear"}
    for seed in params.study.seeds:
        if control(params):
            out.append(Job.of("tokenize_continue", {"seed": seed}))
            for size in params.ar.sizes:
                out += [Job.of(s, {"seed": seed, "size": size}) for s in CONTROL_STAGES[1:]]
        for r in ladder_rows(params) if seed in ladder_seeds(params) else ():
            out += [Job.of(s, {"seed": seed, **tuned}, r.name) for s in LADDER_STAGES]
    for seed, r in upstream(params):
        out += [Job.of(s, {"seed": seed, **tuned}, r.name) for s in upstream_stages(params, r)]
    return out


def upstream_stages(params, row: ablations.Row) -> list[str]:
    """The stages an upstream row runs (none for the default row)."""
    if row.default:
        return []
    own_real = ablations.layout(params, row).real != Path(".")
    return [s for s in UPSTREAM_STAGES if s != "evaluate_real" or own_real]


def report_deps(params) -> list:
    """What `gear scaling-report` reads: the main report's jobs, the control's, the ladder's."""
    from gear import dag

    return [*dag.report_deps(params), *[j for j in jobs(params) if j.stage != "tokenize_continue"]]


def row_tokenizer_json(params, row: ablations.Row, seed: int) -> Path:
    """The tokenizer evaluation of a rung (the default row: the main DAG's GEAR arm). A rung changes
    neither the teacher nor the warm-up (its keys: the guide, its tap, lambda), so its layout is
    its own folder for the tuned arm alone (ablations.layout, without building the row's params:
    the report reads only its declared keys)."""
    layout = paths.Layout() if row.default else paths.Layout(tuned=paths.ablation_root(row.name))
    with paths.using(layout):
        return paths.eval_tokenizer_json("gear", seed)


def upstream_tokenizer_jsons(params, seed: int) -> dict[str, Path]:
    """A reseeded seed's tokenizer evaluations, GEAR's and its own baseline's (the default row: the
    main DAG's). The row owns teacher, warm-up and tuned arms (ablations.layout: its roots, without
    building its params, as row_tokenizer_json)."""
    row = upstream_row(params, seed)
    root = paths.ablation_root(row.name)
    layout = paths.Layout() if row.default else paths.Layout(teacher=root, warmup=root, tuned=root)
    with paths.using(layout):
        return {"gear": paths.eval_tokenizer_json("gear", seed), "baseline": paths.eval_tokenizer_json("baseline")}
