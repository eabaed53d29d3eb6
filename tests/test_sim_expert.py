"""The expert and DART noise: recorded labels are the clean command, execution carries the noise."""

from __future__ import annotations

import numpy as np
import pytest
from driver.sim.car import Car
from driver.sim.expert import DartNoise, Expert, NoiseSpec
from driver.sim.track import make_track


def test_expert_steers_back_towards_the_centre():
    tr = make_track(2, "train")
    ex = Expert(tr)
    x, y, h = tr.point_at(4.0)
    car = Car()
    car.reset(x - 0.3 * np.sin(h), y + 0.3 * np.cos(h), h)  # 0.3 m left of centre
    steer_left_of_centre, motor = ex.command(car.state)
    car.reset(x + 0.3 * np.sin(h), y - 0.3 * np.cos(h), h)  # 0.3 m right of centre
    steer_right_of_centre, _ = ex.command(car.state)
    assert steer_left_of_centre > steer_right_of_centre
    assert steer_left_of_centre - steer_right_of_centre > 0.3
    assert 0.25 < motor < 0.7


def test_dart_noise_is_correlated_deterministic_and_zero_when_off():
    n1, n2 = DartNoise(NoiseSpec(scale=0.2), 30, seed=1), DartNoise(NoiseSpec(scale=0.2), 30, seed=1)
    s1 = np.array([n1.sample()[0] for _ in range(600)])
    s2 = np.array([n2.sample()[0] for _ in range(600)])
    assert np.array_equal(s1, s2)
    assert np.corrcoef(s1[:-1], s1[1:])[0, 1] > 0.8  # temporally correlated
    assert 0.05 < s1.std() < 0.6
    off = DartNoise(NoiseSpec(scale=0.0), 30, seed=1)
    assert all(off.sample() == (0.0, 0.0) for _ in range(100))


def test_noise_spec_validation():
    with pytest.raises(ValueError, match="scale=2"):
        NoiseSpec(scale=2)
