"""Everything `gear t2i-report` reads, over every study seed: each file with the command that writes
it, checked (a missing, corrupt or stale one: a one-line ArtifactError naming it and that command)
and loaded once, before any report work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from gear.report.readers import Need, bad, check_present, finite, read_curve, read_object, tsv
from gear.t2i import paths

ATTRIBUTES = ("all", "shape", "colour", "position")  # the judge's heads; "all": every attribute right
CURVES = {"ntp": "NTP loss (train)", "align": "REPA loss (-cos, train)", "val_ntp": "val NTP (EMA)"}


def _evaluate_cmd(arm: str, seed: int) -> str:
    return f"gear t2i-evaluate samples --arm {arm} --seed {seed}"


def _train_cmd(arm: str, seed: int) -> str:
    return f"gear t2i-train --arm {arm} --seed {seed}"


def _sample_cmd(arm: str, seed: int) -> str:
    return f"gear t2i-sample --arm {arm} --seed {seed}"


JUDGE_CMD = "gear t2i-judge"


def curve_names(params) -> list[str]:
    """The dvclive curves read: no REPA loss is logged without alignment."""
    return [c for c in CURVES if c != "align" or params.t2i.ar.align_weight > 0]


def _required(params) -> list[Need]:
    """(file, the command that writes it) of everything this stage reads."""
    seeds = list(params.study.seeds)
    need = [(paths.JUDGE_DIR / "config.json", JUDGE_CMD)]
    for seed in seeds:
        for arm in paths.ARMS:
            need.append((paths.eval_json(arm, seed), _evaluate_cmd(arm, seed)))
            need += [(tsv(paths.train_metrics_dir(arm, seed), c), _train_cmd(arm, seed)) for c in curve_names(params)]
    for arm in paths.ARMS:  # the samples shown are the first seed's
        d = paths.samples_dir(arm, seeds[0])
        need += [(d / "grid.png", _sample_cmd(arm, seeds[0])), (d / "config.json", _sample_cmd(arm, seeds[0]))]
    return need


def _accuracy(acc, path: Path, where: str, cmd: str) -> dict | None:
    if acc is None:
        return None
    if not isinstance(acc, dict) or not all(finite(acc.get(a)) for a in ATTRIBUTES):
        raise bad(path, f"{where} prompt_accuracy must hold numbers {', '.join(ATTRIBUTES)}", cmd)
    return {a: float(acc[a]) for a in ATTRIBUTES}


def _snapshots(e: dict, path: Path, cmd: str, params) -> dict[tuple[int, bool], dict]:
    """{(step, with CFG): snapshot} for every eval step, checked against params (stale otherwise)."""
    cfg = params.t2i.sample.cfg_scale
    found = {}
    for s in e["snapshots"] if isinstance(e.get("snapshots"), list) else []:
        if not isinstance(s, dict) or not isinstance(s.get("step"), int) or not finite(s.get("cfg_scale")):
            raise bad(path, "a snapshot without an integer step and a cfg_scale", cmd)
        where = f"snapshot step {s['step']} cfg {s['cfg_scale']}"
        nonfinite = [k for k in ("fdd", "precision", "recall") if not finite(s.get(k))]
        if nonfinite:
            raise bad(path, f"{where}: {nonfinite[0]} is not a finite number", cmd)
        s = dict(s, prompt_accuracy=_accuracy(s.get("prompt_accuracy"), path, where, cmd))
        if math.isclose(s["cfg_scale"], 1.0):
            found[(s["step"], False)] = s
        if math.isclose(s["cfg_scale"], cfg):  # cfg_scale 1: "with CFG" is the same snapshot
            found[(s["step"], True)] = s
    for step in params.t2i.ar.eval_steps:
        for with_cfg in (False, True):
            if (step, with_cfg) not in found:
                raise bad(path, f"no snapshot at step {step} with cfg_scale {cfg if with_cfg else 1.0} "
                                 f"(t2i.ar.eval_steps = {params.t2i.ar.eval_steps}, t2i.sample.cfg_scale = {cfg})", cmd)
    return found


@dataclass
class T2IResults:
    """Everything read, keyed by seed: evals[(seed, arm)] (the JSON), snaps[(seed, arm, step, with
    CFG)], curves[(seed, arm, name)]; judge = its config; prompts[arm] = the grid's captions."""
    seeds: list[int]
    evals: dict = field(default_factory=dict)
    snaps: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    judge: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)

    def values(self, arm: str, step: int, with_cfg: bool, get) -> list[float]:
        return [get(self.snaps[(seed, arm, step, with_cfg)]) for seed in self.seeds]

    @property
    def first(self) -> dict:
        return self.evals[(self.seeds[0], "gear")]


def load(params) -> T2IResults:
    """Check every input (a missing or corrupt one: a one-line ArtifactError naming it and the
    command that writes it), then read them all."""
    check_present(_required(params), "snakemake t2i")
    r = T2IResults(list(params.study.seeds))
    r.judge = read_object(paths.JUDGE_DIR / "config.json", JUDGE_CMD)
    if not isinstance(r.judge.get("available"), bool):
        raise bad(paths.JUDGE_DIR / "config.json", "no boolean 'available'", JUDGE_CMD)
    for seed in r.seeds:
        for arm in paths.ARMS:
            path, cmd = paths.eval_json(arm, seed), _evaluate_cmd(arm, seed)
            e = read_object(path, cmd)
            if e.get("arm") != arm or e.get("seed") != seed:
                raise bad(path, f"holds arm {e.get('arm')!r} seed {e.get('seed')!r}, not {arm!r} seed {seed}", cmd)
            if e.get("feature_space") != params.t2i.feature_space:  # stale: FDD measured in another space
                raise bad(path, f"feature_space {e.get('feature_space')!r}, but t2i.feature_space is "
                                 f"{params.t2i.feature_space!r}", cmd)
            for (step, with_cfg), s in _snapshots(e, path, cmd, params).items():
                if r.judge["available"] and s["prompt_accuracy"] is None:
                    raise bad(path, f"snapshot step {step}: no prompt_accuracy although the judge is available", cmd)
                r.snaps[(seed, arm, step, with_cfg)] = s
            r.evals[(seed, arm)] = e
            for name in curve_names(params):
                curve = tsv(paths.train_metrics_dir(arm, seed), name)
                r.curves[(seed, arm, name)] = read_curve(curve, _train_cmd(arm, seed))
    for arm in paths.ARMS:
        path, cmd = paths.samples_dir(arm, r.seeds[0]) / "config.json", _sample_cmd(arm, r.seeds[0])
        prompts = read_object(path, cmd).get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise bad(path, "no list of prompts (the captions of the grid rows)", cmd)
        r.prompts[arm] = prompts
    return r
