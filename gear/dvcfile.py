"""dvc.yaml and t2i/dvc.yaml, generated from the stage table (gear/dag.py): `gear dag` writes them,
`gear dag --check` (and tests/test_dag.py) says whether the committed files are up to date."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from gear import dag
from gear.stagespec import GUIDE, Out, Stage



# `dvc exp show` adds a column per stage input whose hash differs between its rows (a 36-character
# hash each; 9 of them after `dvc exp run -S tau=0.5`), and DVC 3 has no setting that hides them:
# the README's `dvc exp show --only-changed --drop '...'` drops them by name. Every input is a path
# with a folder, or one of the reports' four top-level folders (the scaling report reads ablations/); no metric or param column has a slash.
EXP_SHOW_DROP = r".*/|eval$|metrics$|samples$|ablations$"


def _dvc_path(template: str) -> str:
    out = template.replace("{shard_dir}", "${data.shard_dir}")
    for k in ("seed", "variant", "size", "arm"):
        out = out.replace("{" + k + "}", "${item." + k + "}")
    return out


def dvc_stage(stage: Stage, params, wdir: str | None = None) -> dict:
    d: dict = {}
    axes = {}
    fixed = dict(stage.axes)
    for w in stage.wildcards:
        axes[w] = list(fixed[w]) if w in fixed else dag.AXES_DVC.get(w) or dag.tune_variants(params)
    if axes:
        d["matrix"] = axes
    if wdir:
        d["wdir"] = wdir
    args = {w: "${item." + w + "}" for w in stage.wildcards}
    d["cmd"] = f"gear {stage.cli.format(**args)} --params params.yaml"
    prods = dag.table(params.stage2)
    fix = lambda x: {k: "${tune.ar_size}" if v == GUIDE else v for k, v in x.fix}  # noqa: E731
    d["deps"] = [*stage.code, *[_dvc_path(prods[x.stage].outs[0].path.format_map(
        _Fixed(fix(x), args))) for x in stage.deps]]
    if stage.name == "report":
        d["deps"] += ["eval", "metrics", "samples"]
    if stage.name == "scaling_report":
        d["deps"] += ["eval", "metrics", "samples", "ablations"]
    if stage.name == "t2i_report":
        d["deps"] += ["t2i/eval", "t2i/metrics/train", "t2i/samples", "t2i/models/judge"]
    d["params"] = dag.leaves(stage.keys)
    if not d["params"]:  # the released report reads only its inputs
        del d["params"]
    for kind in ("outs", "metrics", "plots"):
        items = []
        for o in stage.outs:
            if _declared_as(stage, o) != kind:
                continue
            path = _dvc_path(o.path.format_map(_Fixed({}, args)))
            if kind == "plots":
                items.append({path: {"x": "step"}})
            elif not o.cache:
                items.append({path: {"cache": False}})
            else:
                items.append(path)
        if items:
            d[kind] = items
    if not d["deps"]:
        del d["deps"]
    return d


def _declared_as(stage: Stage, out: Out) -> str:
    """A separate room's curves are plain outputs: DVC reads every dvc.yaml in the repository, and
    a room `dvc repro` does not run would make `dvc plots diff` warn about its missing files (and
    `dvc metrics show` about metrics). `dvc plots show PATH` still draws them."""
    return out.dvc if stage.room in ("main", "report") else "outs"


class _Fixed(dict):
    """str.format_map mapping: fixed values first, then ${item.*} of the consumer's own axes."""

    def __init__(self, fixed: dict, args: dict):
        super().__init__({**args, **fixed})

    def __missing__(self, key):
        return "{" + key + "}"


def _in_row(stage: Stage, params, wdir: str, row: str, owned: set, matrix: dict) -> dict:
    """A stage's DVC declaration as an ablation row runs it (`row`: a name or a ${item.*} expression):
    its outputs under ablations/<row>/, and an input there too when the row owns its producer's root
    (`owned`: gear/paths.py Layout roots); any other input is ./dvc.yaml's output."""
    stage = dataclasses.replace(stage, room="scaling")  # its curves: plain outputs
    d = dvc_stage(stage, params, wdir)
    d = {"matrix": matrix, **{k: v for k, v in d.items() if k != "matrix"}}
    d["cmd"] += f" --ablation {row}"
    prefix = f"ablations/{row}/"
    local = {dag.STAGES[x.stage].outs[0].path for x in stage.deps if dag.STAGES[x.stage].root in owned}
    d["deps"] = [(prefix + p if any(_dvc_path(t.format_map(_Fixed({}, {}))) == p for t in local) else p)
                 for p in d["deps"]]
    for kind in ("outs", "metrics", "plots"):
        if kind in d:
            d[kind] = [prefix + o if isinstance(o, str) else {prefix + k: v for k, v in o.items()} for o in d[kind]]
    return d


def ladder_stages(params, wdir: str) -> dict:
    """The scaling ladder's rows (gear/scaling.py) as DVC stages: the main tune / freeze / evaluate
    tokenizer declarations with a row axis, under ablations/<row>/ (listed: regenerate after
    changing scaling.*). Their shared inputs (shards, teacher, warm-up) are ./dvc.yaml's outputs."""
    from gear import scaling

    rows = [r.name for r in scaling.ladder_rows(params)]
    if not rows or params.stage2 != "fresh":  # fresh-mode studies (gear/scaling.py `jobs`)
        return {}
    out = {}
    for name in scaling.LADDER_STAGES:
        seeds = list(params.scaling.ladder_seeds) or dag.AXES_DVC["seed"]  # listed ones: regenerate on change
        d = _in_row(dag.STAGES[name], params, wdir, "${item.row}", {"tuned"},
                    {"row": list(rows), "seed": seeds, "variant": ["gear"]})
        d["params"] = [*d["params"], "scaling"]
        out[f"ladder_{name}"] = d
    return out


def upstream_stages(params, wdir: str) -> dict:
    """The upstream rows (study.reseed_upstream, gear/scaling.py) as DVC stages: upstream_<stage> with
    a seed axis (listed: regenerate after changing study.seeds), run for the row upstream-<seed>,
    which owns its teacher, warm-up and tuned arms (and its real statistics where its teacher is
    the feature space); only the shards are ./dvc.yaml's."""
    from gear import ablations, scaling

    up = [(seed, r) for seed, r in scaling.upstream(params) if not r.default]
    if not up:
        return {}
    lay = ablations.layout(params, up[0][1])  # the same roots for every seed
    owned = {name for name, root in dag.roots(lay).items() if root != Path(".")}
    seeds = [seed for seed, _ in up]
    out = {}
    for name in scaling.upstream_stages(params, up[0][1]):
        stage = dag.STAGES[name]
        matrix = {"seed": list(seeds), **({"variant": ["gear"]} if "variant" in stage.wildcards else {})}
        out[f"upstream_{name}"] = _in_row(stage, params, wdir, "upstream-${item.seed}", owned, matrix)
    return out


def dvc_file(params, room: str) -> dict:
    stages = [s for s in dag.table(params.stage2).values()
              if (s.room in ("main", "report") if room == "main" else s.room == room)]
    wdir = None if room == "main" else ".."
    out = {"stages": {s.name: dvc_stage(s, params, wdir) for s in stages}}
    if room == "scaling":
        from gear import scaling

        # the control's stages only where its tune runs (`continue` in tune.ablations: ./dvc.yaml's freeze)
        control = scaling.control(params) and params.stage2 == "fresh"
        keep = {k: v for k, v in out["stages"].items() if control or not k.endswith("_continue")}
        out["stages"] = {**ladder_stages(params, wdir), **upstream_stages(params, wdir), **keep}
    if room != "main":
        out = {"vars": ["../params.yaml"], **out}
    return out


# ----------------------------------------------------------------------------------------------
# the generated DVC files

DVC_FILES = {"main": Path("dvc.yaml"), "t2i": Path("t2i/dvc.yaml"), "released": Path("released/dvc.yaml"),
             "scaling": Path("scaling/dvc.yaml")}
DVC_HEADER = {
    "main": ("GEAR pipeline (DVC): the main DAG. GENERATED from gear/dag.py by `gear dag`: edit the\n"
             "declarations there, never this file (tests/test_dag.py checks it is up to date). Each stage runs\n"
             "one `gear <stage>`; `params:` lists exactly the keys the stage reads (it cannot read others), so\n"
             "`dvc exp run -S tau=0.5` reruns tune and what follows. Seeds and AR sizes are matrix axes read\n"
             "from params.yaml; the tuned arms (gear + tune.ablations) are listed, and the stage-2 mode (stage2)\n"
             "shapes the DAG (ar-init: stage 1 per AR size): regenerate after changing them.\n"),
    "t2i": ("The text-to-image room (DVC): `dvc repro t2i/dvc.yaml`. GENERATED from gear/dag.py by\n"
            "`gear dag`. Every stage runs from the repository root (wdir: ..); the frozen tokenizers are\n"
            "outputs of ./dvc.yaml's freeze stages, which DVC runs first when they are stale.\n"),
    "scaling": ("Issue 31's scaling study (DVC): `dvc repro scaling/dvc.yaml`. GENERATED from gear/dag.py and\n"
                "gear/scaling.py by `gear dag`. Every stage runs from the repository root (wdir: ..): the control\n"
                "arm's fresh AR (list `continue` in tune.ablations), the guide ladder's rows and\n"
                "(study.reseed_upstream) the upstream rows under ablations/; tune, freeze and the tokenizer\n"
                "evaluations of the arms are ./dvc.yaml's stages.\n"),
    "released": ("The public checkpoints of params `released:` against their published numbers (DVC):\n"
                 "`dvc repro released/dvc.yaml`. GENERATED from gear/dag.py by `gear dag`. Every stage runs from the\n"
                 "repository root (wdir: ..); the shards, teacher and real statistics are ./dvc.yaml's outputs.\n"),
}


def dvc_text(params, room: str) -> str:
    import yaml

    header = "".join(f"# {line}".rstrip() + "\n" for line in DVC_HEADER[room].splitlines())
    body = yaml.safe_dump(dvc_file(params, room), sort_keys=False, width=120, default_flow_style=False)
    return header + "\n" + body


def write_dvc_files(params, check: bool = False) -> list[Path]:
    """Write (or, with check, compare) the DVC files of DVC_FILES; returns the files that differ."""
    from gear.io import atomic_path

    stale = []
    for room, path in DVC_FILES.items():
        text = dvc_text(params, room)
        if not path.is_file() or path.read_text() != text:
            stale.append(path)
            if not check:
                with atomic_path(path) as tmp:
                    tmp.write_text(text)
    return stale
