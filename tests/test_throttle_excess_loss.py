"""``driver train --throttle-excess-weight``: the risk-averse motor loss (too much throttle costs more)."""

import pytest
import torch

from driver.training import TrainConfig
from driver.training.evaluate import per_clip_loss


def _cfg(k: float) -> TrainConfig:
    return TrainConfig(data="unused", throttle_excess_weight=k, target_norm=False, steer_weight=1.0,
                       motor_weight=1.0)


def _loss(k: float, steer_err: float, motor_err: float) -> float:
    target = torch.zeros(1, 3, 1, 2)  # (B, T, horizon, 2)
    out = target.clone()
    out[..., 0] += steer_err
    out[..., 1] += motor_err
    return float(per_clip_loss(out, target, _cfg(k))[0])


def test_too_much_throttle_costs_k_times_too_little():
    assert _loss(4.0, 0.0, 0.2) == pytest.approx(4.0 * _loss(4.0, 0.0, -0.2))
    assert _loss(4.0, 0.0, -0.2) == pytest.approx(_loss(1.0, 0.0, -0.2))  # too little: as before
    assert _loss(4.0, 0.0, 0.2) == pytest.approx(4.0 * _loss(1.0, 0.0, 0.2))


def test_steering_error_is_not_weighted():
    assert _loss(4.0, 0.3, 0.0) == pytest.approx(_loss(1.0, 0.3, 0.0))
    assert _loss(4.0, -0.3, 0.0) == pytest.approx(_loss(1.0, 0.3, 0.0))


def test_default_is_symmetric():
    assert TrainConfig(data="x").throttle_excess_weight == 1.0
    assert _loss(1.0, 0.0, 0.2) == pytest.approx(_loss(1.0, 0.0, -0.2))


def test_a_gradient_pushes_the_motor_down_harder_when_above():
    target = torch.zeros(2, 1, 1, 2)
    out = torch.tensor([[[[0.0, 0.1]]], [[[0.0, -0.1]]]], requires_grad=True)
    per_clip_loss(out, target, _cfg(3.0)).sum().backward()
    g = out.grad[..., 1].flatten()
    assert g[0] == pytest.approx(-3.0 * g[1])  # same error size, three times the push back


@pytest.mark.parametrize("bad", [0.5, 0.0, 101.0])
def test_out_of_range_is_named(bad):
    with pytest.raises(ValueError, match=r"throttle_excess_weight=.* must be a number in 1.0..100.0"):
        TrainConfig(data="x", throttle_excess_weight=bad)
