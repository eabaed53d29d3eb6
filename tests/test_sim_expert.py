"""The expert, its speed plan and DART noise: labels are the clean command, depend on the car's speed, and the
plan brakes before corners within the grip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driver.sim.car import CarSpec, CarState, DynamicSpec
from driver.sim.expert import DartNoise, Expert, ExpertSpec, NoiseSpec
from driver.sim.speed_plan import plan_speed
from driver.sim.track import make_track


@pytest.fixture(scope="module")
def track():
    return make_track(2, "train")


def _state(track, progress, offset=0.0, speed=0.0):
    x, y, h = track.point_at(progress)
    return CarState(x - offset * np.sin(h), y + offset * np.cos(h), h, speed)  # offset + = left of centre


def test_expert_steers_back_towards_the_centre(track):
    ex = Expert(track)
    steer_left_of_centre, motor = ex.command(_state(track, 4.0, +0.3))
    steer_right_of_centre, _ = ex.command(_state(track, 4.0, -0.3))
    assert steer_left_of_centre > steer_right_of_centre
    assert steer_left_of_centre - steer_right_of_centre > 0.3
    assert motor > 0.3  # from standstill: accelerate


def test_motor_label_depends_on_the_current_speed(track):
    """Same pose, three speeds: accelerate when slow, hold near the plan, brake (motor < 0) when far too fast."""
    ex = Expert(track)
    p = float(np.argmax(ex.plan.speed)) * track.ds  # on a straight, where the plan is at its top
    v_plan = ex.target_speed(_state(track, p, speed=ex.plan.at(p)))
    slow = ex.command(_state(track, p, speed=0.5 * v_plan))[1]
    hold = ex.command(_state(track, p, speed=v_plan))[1]
    fast = ex.command(_state(track, p, speed=v_plan + 1.0))[1]
    assert slow > hold > fast
    assert hold == pytest.approx(ex.car.motor_for(v_plan, 0.0), abs=0.05)  # steady throttle at the plan speed
    assert fast < 0  # brake: in run units below 49
    speeds = np.arange(0.5 * v_plan, v_plan + 1.0, 0.02)
    sweep = np.array([ex.command(_state(track, p, speed=v))[1] for v in speeds])
    assert np.abs(np.diff(sweep)).max() < 0.1  # a continuous function of the speed (learnable)
    assert (np.diff(sweep[speeds >= 0.9 * v_plan]) <= 1e-9).all()  # near the plan: less motor when faster


def test_speed_plan_respects_grip_and_brakes_before_corners(track):
    spec, ex_spec = DynamicSpec(), ExpertSpec()
    a_lat, a_brake = ex_spec.accelerations(spec)
    share = ex_spec.grip_fraction * spec.mu * 9.81
    assert a_lat == pytest.approx(share) and a_brake == pytest.approx(share)
    plan = plan_speed(track, a_lat, a_brake, ex_spec.v_max, ex_spec.v_min)
    v, k = plan.speed, np.abs(track.curvature)
    assert (v <= np.sqrt(a_lat / np.maximum(k, 1e-9)) + 1e-9).all() and v.max() <= ex_spec.v_max
    decel = (v**2 - np.roll(v, -1) ** 2) / (2 * track.ds)  # deceleration needed from each sample to the next
    assert decel.max() <= a_brake + 1e-6
    tight = int(np.argmax(k))
    assert v[tight] < 0.8 * ex_spec.v_max
    before = v[(tight - int(4.0 / track.ds)) % len(v)]  # 4 m before the tightest point: still faster
    assert before > v[tight] + 0.3
    assert plan.at(track.length + 1.0) == pytest.approx(plan.at(1.0))  # wraps
    # the expert's own plan also accelerates out of corners no faster than the motor and tyres allow
    ev = Expert(track).plan.speed
    gain = (np.roll(ev, -1) ** 2 - ev**2) / (2 * track.ds)
    limit = np.minimum(spec.grip_mps2, [spec.max_accel(v) for v in ev])
    assert (gain <= limit + 1e-6).all() and (gain < -0.5).any() and (gain > 0.5).any()


def test_kinematic_car_keeps_the_original_gentle_expert(track):
    ex = Expert(track, CarSpec())
    assert ex.spec == ExpertSpec.for_car(CarSpec()) and ex.spec.v_max == 1.8
    for p in np.linspace(0, track.length, 20, endpoint=False):
        st = _state(track, float(p), speed=1.2)
        motor = ex.command(st)[1]
        assert motor == pytest.approx(ex.target_speed(st) / CarSpec().max_speed, abs=1e-9)  # motor = target speed
        assert 0.8 / 3 - 1e-9 <= motor <= 1.8 / 3 + 1e-9


def test_dart_noise_is_correlated_deterministic_and_zero_when_off():
    n1, n2 = DartNoise(NoiseSpec(scale=0.2), 30, seed=1), DartNoise(NoiseSpec(scale=0.2), 30, seed=1)
    s1 = np.array([n1.sample()[0] for _ in range(600)])
    s2 = np.array([n2.sample()[0] for _ in range(600)])
    assert np.array_equal(s1, s2)
    assert np.corrcoef(s1[:-1], s1[1:])[0, 1] > 0.8  # temporally correlated
    assert 0.05 < s1.std() < 0.6
    off = DartNoise(NoiseSpec(scale=0.0), 30, seed=1)
    assert all(off.sample() == (0.0, 0.0) for _ in range(100))


def test_dart_steering_noise_keeps_its_lateral_acceleration_at_speed():
    slow, fast = DartNoise(NoiseSpec(scale=0.2), 30, seed=3), DartNoise(NoiseSpec(scale=0.2), 30, seed=3)
    a = np.array([slow.sample(speed=1.0) for _ in range(200)])
    b = np.array([fast.sample(speed=3.0) for _ in range(200)])
    assert np.allclose(b[:, 0], a[:, 0] * (1.5 / 3.0) ** 2)  # (reference_speed / speed)² above 1.5 m/s
    assert np.array_equal(a[:, 1], b[:, 1])  # motor noise unchanged


def test_dart_motor_noise_has_its_own_scale():
    """``motor_scale`` sets the throttle/brake noise alone (``driver sim record --motor-noise``); by default it
    is a quarter of the steering noise, and with no steering noise only the motor is perturbed."""
    a, b = DartNoise(NoiseSpec(scale=0.2), 30, seed=5), DartNoise(NoiseSpec(scale=0.2, motor_scale=0.05), 30, seed=5)
    default, same = np.array([a.sample() for _ in range(300)]), np.array([b.sample() for _ in range(300)])
    assert np.allclose(default, same, atol=1e-12)  # 0.25 x 0.2: the same noise as before the option
    motor_only = DartNoise(NoiseSpec(scale=0.0, motor_scale=0.2), 30, seed=5)
    m = np.array([motor_only.sample(speed=2.0) for _ in range(3000)])
    assert (m[:, 0] == 0.0).all() and 0.12 < m[:, 1].std() < 0.3
    with pytest.raises(ValueError, match=r"motor_scale=1.5 must be in 0..1"):
        NoiseSpec(motor_scale=1.5)


def test_throttle_surges_raise_the_motor_for_a_while_and_are_off_by_default():
    """Surges (``driver sim record --surge-rate``) add 0.5..1 x ``surge_gain`` to the motor for ``surge_s``
    seconds at about ``surge_rate_hz``; off, they draw nothing, so recordings without them are unchanged."""
    fps = 30
    plain = DartNoise(NoiseSpec(scale=0.2), fps, seed=9)
    off = DartNoise(NoiseSpec(scale=0.2, surge_rate_hz=0.0), fps, seed=9)
    assert np.array_equal([plain.sample() for _ in range(300)], [off.sample() for _ in range(300)])
    only = DartNoise(NoiseSpec(scale=0.0, motor_scale=0.0, surge_rate_hz=0.5, surge_gain=0.6, surge_s=(0.5, 1.5)),
                     fps, seed=9)
    m = np.array([only.sample()[1] for _ in range(fps * 600)])  # ten minutes
    assert (m >= 0).all() and (m[m > 0] >= 0.3 - 1e-12).all() and (m <= 0.6 + 1e-12).all()
    # each surge holds one level (drawn anew each time) for 0.5..1.5 s: runs of one nonzero value
    change = np.flatnonzero(np.diff(m)) + 1
    bounds = np.concatenate([[0], change, [len(m)]])
    surges = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if m[a] > 0 and a > 0 and b < len(m)]
    lengths = np.array([b - a for a, b in surges])
    assert lengths.min() >= 0.5 * fps and lengths.max() <= 1.5 * fps + 1
    # one starts at 0.5/s while none runs (~1 s each): ~1/3 of the time surging, ~0.33 starts per second
    assert 0.2 < (m > 0).mean() < 0.45 and 120 < len(surges) < 280
    with pytest.raises(ValueError, match=r"surge_rate_hz=3 must be in 0..2"):
        NoiseSpec(surge_rate_hz=3)
    with pytest.raises(ValueError, match=r"surge_s=\(2.0, 1.0\) must be"):
        NoiseSpec(surge_s=(2.0, 1.0))


def test_spec_validation():
    with pytest.raises(ValueError, match="scale=2"):
        NoiseSpec(scale=2)
    with pytest.raises(ValueError, match="grip_fraction=1.5 must be in 0.05..1"):
        ExpertSpec(grip_fraction=1.5)
    with pytest.raises(ValueError, match="lateral_accel and brake_accel must be set"):
        ExpertSpec().accelerations(CarSpec())
    with pytest.raises(ValueError, match="lateral_accel=-1"):
        plan_speed(make_track(0, "train"), -1, 1, 3)
    assert math.isinf(CarSpec().grip_mps2)
