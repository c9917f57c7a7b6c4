import math

import pytest

from gear.config import ParamsError, params_from_dict
from gear.train.schedule import lr_at


def test_warmup_is_linear_then_constant():
    assert [lr_at(s, 10, 1.0, warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_starts_at_peak_after_warmup_and_ends_at_zero():
    steps, warmup = 101, 1
    lrs = [lr_at(s, steps, 2.0, warmup=warmup, decay="cosine") for s in range(steps)]
    assert lrs[0] == 2.0 and lrs[1] == 2.0
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # monotone decay
    assert lrs[51] == pytest.approx(1.0)                   # half-way: half the peak
    assert lr_at(steps, steps, 2.0, warmup=warmup, decay="cosine") == pytest.approx(0.0, abs=1e-12)
    assert not any(math.isnan(v) for v in lrs)


def test_unknown_decay_and_bad_warmup_are_rejected():
    with pytest.raises(ValueError, match="lr decay 'linear'"):
        lr_at(0, 10, 1.0, decay="linear")
    with pytest.raises(ParamsError, match="tokenizer.warmup_steps"):
        params_from_dict({"tokenizer": {"steps": 10, "warmup_steps": 10}})
    with pytest.raises(ParamsError, match="tokenizer.lr_decay"):
        params_from_dict({"tokenizer": {"lr_decay": "linear"}})
