"""Logged training metrics: means over the log window, keys that join late, exact resume."""
from __future__ import annotations

import pytest
import torch

from gear.runtime import Runtime
from gear.train.logger import WindowMean

RT = Runtime(device=torch.device("cpu"), precision="fp32")


def test_window_mean_averages_each_key_over_the_steps_it_was_seen_and_resets():
    w = WindowMean()
    w.add({"recon": torch.tensor(0.4)})
    w.add({"recon": torch.tensor(0.2), "gan_g": torch.tensor(1.0)})  # the GAN joins mid-window
    w.add({"recon": torch.tensor(0.3), "gan_g": torch.tensor(3.0)})
    assert w.result(RT) == pytest.approx({"recon": 0.3, "gan_g": 2.0})
    w.add({"recon": torch.tensor(0.1)})
    assert w.result(RT) == pytest.approx({"recon": 0.1})  # the previous window is gone


def test_window_mean_state_round_trip_continues_the_same_window():
    a, b = WindowMean(), WindowMean()
    steps = [{"recon": torch.tensor(v), "commit": torch.tensor(2 * v)} for v in (0.5, 0.25, 0.125)]
    for s in steps:
        a.add(s)
    b.add(steps[0]); b.add(steps[1])
    resumed = WindowMean()
    resumed.load_state_dict(b.state_dict())
    resumed.add(steps[2])
    assert resumed.result(RT) == a.result(RT)
