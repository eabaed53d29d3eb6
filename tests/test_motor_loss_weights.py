"""The motor loss weights: ``--throttle-excess-weight`` (too much throttle costs more) and ``--brake-weight``
(the error where the driver brakes costs more)."""

import pytest
import torch

from driver.training import TrainConfig
from driver.training.evaluate import per_clip_loss


def _cfg(k: float, b: float = 1.0) -> TrainConfig:
    return TrainConfig(data="unused", throttle_excess_weight=k, brake_weight=b, target_norm=False,
                       steer_weight=1.0, motor_weight=1.0)


def _loss(k: float, steer_err: float, motor_err: float, b: float = 1.0, label: float = 0.0) -> float:
    target = torch.zeros(1, 3, 1, 2)  # (B, T, horizon, 2)
    target[..., 1] = label
    out = target.clone()
    out[..., 0] += steer_err
    out[..., 1] += motor_err
    return float(per_clip_loss(out, target, _cfg(k, b))[0])


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


def test_brake_labels_cost_b_times_on_either_side():
    for err in (0.2, -0.2):
        assert _loss(1.0, 0.0, err, b=3.0, label=-0.5) == pytest.approx(3.0 * _loss(1.0, 0.0, err, label=-0.5))
    for label in (0.0, 0.5):  # neutral and throttle labels: as before
        assert _loss(1.0, 0.0, 0.2, b=3.0, label=label) == pytest.approx(_loss(1.0, 0.0, 0.2, label=label))
    assert _loss(1.0, 0.3, 0.0, b=3.0, label=-0.5) == pytest.approx(_loss(1.0, 0.3, 0.0, label=-0.5))  # steering


def test_brake_and_excess_weights_multiply():
    assert _loss(2.0, 0.0, 0.2, b=3.0, label=-0.5) == pytest.approx(6.0 * _loss(1.0, 0.0, 0.2, label=-0.5))
    assert _loss(2.0, 0.0, -0.2, b=3.0, label=-0.5) == pytest.approx(3.0 * _loss(1.0, 0.0, -0.2, label=-0.5))


def test_brake_weight_per_element():
    """Within one clip only the braking steps' motor error is weighted."""
    target = torch.tensor([[[[0.0, -0.5]], [[0.0, 0.5]]]])  # (1, T=2, 1, 2): a brake step, a throttle step
    out = target + torch.tensor([0.0, 0.1])
    both = float(per_clip_loss(out, target, _cfg(1.0, 4.0))[0])
    assert both == pytest.approx((4.0 * 0.01 + 0.01) / 2 / 2)  # mean over T, / (steer_weight + motor_weight)


@pytest.mark.parametrize("bad", [0.5, 0.0, 101.0])
def test_brake_weight_out_of_range_is_named(bad):
    with pytest.raises(ValueError, match=r"brake_weight=.* must be a number in 1.0..100.0"):
        TrainConfig(data="x", brake_weight=bad)
