"""Bicycle model sign conventions: positive steer turns right (clockwise, yaw decreases)."""

from __future__ import annotations

import math

import pytest
from driver.sim.car import Car, CarSpec


def drive(steer, motor=0.5, seconds=1.0, dt=1 / 30):
    car = Car()
    car.reset(0.0, 0.0, 0.0)  # at the origin, facing +x (east)
    for _ in range(int(seconds / dt)):
        car.step(steer, motor, dt)
    return car.state


def test_zero_steer_drives_straight():
    st = drive(0.0, seconds=2.0)
    assert st.x > 1.0
    assert st.y == pytest.approx(0.0, abs=1e-12) and st.yaw == pytest.approx(0.0, abs=1e-12)


def test_positive_steer_turns_right_clockwise():
    st = drive(+1.0)
    assert st.yaw < -0.3  # heading decreases: clockwise from above
    assert st.y < 0  # ended up to the right (south) of a car facing east


def test_negative_steer_turns_left():
    st = drive(-1.0)
    assert st.yaw > 0.3 and st.y > 0


def test_turn_radius_matches_bicycle_model():
    spec = CarSpec(steer_tau_s=0.0, speed_tau_s=0.0)
    car = Car(spec)
    car.reset(0, 0, 0)
    dt, n = 0.01, 100
    for _ in range(n):
        car.step(1.0, 0.5, dt)
    expected_rate = -1.5 * math.tan(spec.max_steer_rad) / spec.wheelbase_m
    assert car.state.yaw == pytest.approx(expected_rate * dt * n, rel=1e-6)


def test_motor_sets_speed_with_lag_and_stops():
    assert drive(0.0, motor=1.0, seconds=3.0).speed == pytest.approx(3.0, rel=0.01)
    assert drive(0.0, motor=0.0).speed == 0.0
    assert drive(0.0, motor=0.5, seconds=0.1).speed < 1.0  # first-order lag


def test_spec_validation_names_field():
    with pytest.raises(ValueError, match="max_steer_deg=80"):
        CarSpec(max_steer_deg=80)
