"""reports/headline.json is DVC's metrics file: its keys are the columns of `dvc exp show`. After
`dvc exp run -S tau=0.5` on the embedded default, `dvc exp show --only-changed` must show tau and
the headline numbers of both experiments in 160 characters without eliding a column. The table is
rendered here by DVC's own code (dvc.repo.experiments.show.tabulate and the command's
show_experiments) from the headline `gear report` writes, without running the pipeline (a real
tiny `dvc exp` round takes minutes: the README's "DVC experiments" section pastes one).

DVC also adds a column per stage input whose hash changed, and has no setting that hides them:
the README's command drops them (--drop EXP_SHOW_DROP), here too."""
from __future__ import annotations

import io
import json
import re
from datetime import datetime

from rich.console import Console

from gear import paths
from gear.dvcfile import DVC_FILES, EXP_SHOW_DROP
from gear.report import main as report
from report_worlds import main_world

WIDTH = 160
# the stage inputs a tau experiment changes (measured: `dvc exp show --only-changed`, tiny world)
DEPS = ("data/tokens/seed0/gear", "eval", "metrics", "models/ar/seed0/gear/custom", "models/frozen/seed0/ste",
        "models/tune/seed0/gear", "models/tune/seed0/ste", "samples", "samples/seed0/gear/custom")


def exp_show(monkeypatch, base: tuple[float, dict], exp: tuple[float, dict]) -> str:
    """`dvc exp show --only-changed --no-pager` on a WIDTH-column terminal right after `dvc exp run`:
    the workspace (holding the experiment's results), the baseline commit `main` and its experiment
    `pavid-chay`, each (tau, headline)."""
    from dvc.commands.experiments.show import show_experiments
    from dvc.commands.metrics import DEFAULT_PRECISION
    from dvc.repo.experiments.serialize import ExpDep, ExpRange, ExpState, SerializableExp
    from dvc.repo.experiments.show import tabulate
    from dvc.ui import ui

    def data(rev, tau, head, minute=None):
        deps = {d: ExpDep(hash=f"{tau}{d}".encode().hex()[:32] + ".dir", size=1, nfiles=1) for d in DEPS}
        return SerializableExp(rev=rev, timestamp=None if minute is None else datetime(2026, 12, 7, 9, minute),
                               params={"params.yaml": {"data": {"tau": tau, "align_weight": 0.5}}},
                               metrics={"reports/headline.json": {"data": head}}, deps=deps)

    run = ExpRange(revs=[ExpState(rev="1a2b3c4" + "d" * 33, name="pavid-chay", data=data("1a2b3c4", *exp, 58))],
                   name="pavid-chay")
    states = [ExpState(rev="workspace", data=data("workspace", *exp)),
              ExpState(rev="f" * 40, name="main", data=data("f" * 40, *base, 43), experiments=[run])]
    td, headers = tabulate(states, precision=DEFAULT_PRECISION, fill_value="-", iso=False)
    out = io.StringIO()
    monkeypatch.setitem(ui.__dict__, "rich_console", Console(file=out, width=WIDTH, color_system=None))
    monkeypatch.setattr(ui, "_enabled", True)  # the CLI enables DVC's console; the library does not
    show_experiments(td, headers, pager=False, only_changed=True, drop=[EXP_SHOW_DROP])
    return out.getvalue()


def test_exp_show_of_a_tau_experiment_fits_160_columns(tmp_path, monkeypatch):
    p = main_world(tmp_path, monkeypatch, [0])  # the embedded default's key set: one seed, its AR sizes
    report.run(p)
    head = json.loads((paths.REPORTS_DIR / "headline.json").read_text())
    # tau reruns the GEAR arm's tuning and everything after it: every GEAR number moves, the
    # baseline's do not; the worst case of DVC's 5-digit rounding (e.g. 123.46)
    moved = json.loads(json.dumps(head))
    for key, value in head["gear"].items():
        if isinstance(value, dict):
            moved["gear"][key] = {m: 100 + 23.456789 * (i + 1) for i, m in enumerate(value)}
        else:
            moved["gear"][key] = 123.456789
    table = exp_show(monkeypatch, (0.1, head), (0.5, moved))
    lines = table.rstrip("\n").splitlines()
    widest = max(len(line) for line in lines)
    assert widest <= WIDTH and "…" not in table, f"{widest} characters:\n{table}"
    header = lines[1].split()
    gear_columns = [f"gear.{s}.{m}" for s in p.ar.sizes for m in ("gfid", "is", "prec", "rec")]
    gear_columns += [f"gear.{m}" for m in ("rfid", "psnr", "ent", "eff")]
    assert header == ["Experiment", "Created", *sorted(gear_columns), "tau"], table  # DVC sorts the metrics
    assert "123.46" in table and "pavid-chay" in table


def test_headline_keys_stay_few_and_short(tmp_path, monkeypatch):
    p = main_world(tmp_path, monkeypatch, [0])
    report.run(p)
    head = json.loads((paths.REPORTS_DIR / "headline.json").read_text())

    def columns(d, prefix=""):
        for k, v in d.items():
            yield from columns(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    names = list(columns(head))
    assert len(names) <= 24, names  # `dvc metrics show`: one line per file, one column per key
    assert all(re.fullmatch(r"[A-Za-z0-9_.]{1,20}", n) for n in names), names
    assert not any(re.match(EXP_SHOW_DROP, n) for n in [*names, "tau", "Experiment", "Created"])


def test_exp_show_drop_pattern_covers_every_stage_input():
    """Every input of every generated DVC stage is a column `dvc exp show` may add: the README's
    pattern drops each (and, above, no metric or param)."""
    import yaml

    from gear.config import load_params
    from tiny import PARAMS, ROOT

    shards = load_params(PARAMS).data.shard_dir
    deps = {d.replace("${data.shard_dir}", shards) for f in DVC_FILES.values()
            for st in yaml.safe_load((ROOT / f).read_text())["stages"].values() for d in st.get("deps", [])}
    assert len(deps) > 20 and {"eval", "metrics", "samples", "models/teacher"} <= deps
    assert [d for d in deps if not re.match(EXP_SHOW_DROP, d)] == []
    assert f"dvc exp show --only-changed --drop '{EXP_SHOW_DROP}'" in (ROOT / "README.md").read_text()
