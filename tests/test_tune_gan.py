"""The tune stage's GAN: its start counts tune steps (tune.gan_start), not the warm-up's, and
tune.gan=false (the w/o GAN ablation) removes it."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tiny import gear_proc

# the warm-up's own GAN start lies past its last step: tune must not inherit it
EXTRA = ("tokenizer.steps=3", "tokenizer.gan_start=1000", "tune.steps=4")


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tune_gan")
    for stage in (["shard"], ["teacher"], ["tokenizer-init"]):
        gear_proc(d, stage, *EXTRA)
    return d


def gan_steps(d: Path) -> list[int]:
    f = d / "metrics/tune/seed0/gear/plots/metrics/gan_g.tsv"
    return [int(r["step"]) for r in csv.DictReader(f.open(), delimiter="\t")] if f.exists() else []


@pytest.mark.parametrize("extra, want", [
    ((), [0, 1, 2, 3]),                       # default tune.gan_start = 0: from tune's first step
    (("tune.gan_start=2",), [2, 3]),
    (("tune.gan=false",), []),
])
def test_tune_gan_starts_at_tune_gan_start(warm, extra, want):
    gear_proc(warm, ["tune", "--variant", "gear"], *EXTRA, *extra)
    assert gan_steps(warm) == want
    d_tsv = warm / "metrics/tune/seed0/gear/plots/metrics/gan_d.tsv"
    assert d_tsv.exists() == bool(want)  # the discriminator trains exactly when the generator sees it
