"""The two car models: sign conventions (both), and the dynamic car's step response, terminal speed, braking
distance, reversing and slide threshold against hand-computed values."""

from __future__ import annotations

import math

import pytest

from driver.sim.car import Car, CarSpec, DynamicCar, DynamicSpec, G, KinematicCar, make_car

DT = 1 / 30


def drive(steer, motor=0.5, seconds=1.0, dt=DT, car=None):
    car = car or Car()
    car.reset(0.0, 0.0, 0.0)  # at the origin, facing +x (east)
    for _ in range(int(round(seconds / dt))):
        car.step(steer, motor, dt)
    return car.state


@pytest.mark.parametrize("kind", ["kinematic", "dynamic"])
def test_zero_steer_drives_straight(kind):
    st = drive(0.0, motor=0.8, seconds=2.0, car=make_car(kind))
    assert st.x > 1.0
    assert st.y == pytest.approx(0.0, abs=1e-12) and st.yaw == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["kinematic", "dynamic"])
def test_positive_steer_turns_right_clockwise(kind):
    right = drive(+0.3, seconds=2.0, car=make_car(kind))
    assert right.yaw < -0.3  # heading decreases: clockwise from above
    assert right.y < 0  # ended up to the right (south) of a car facing east
    left = drive(-0.3, seconds=2.0, car=make_car(kind))
    assert left.yaw > 0.3 and left.y > 0


def test_turn_radius_matches_bicycle_model():
    spec = CarSpec(steer_tau_s=0.0, speed_tau_s=0.0)
    car = Car(spec)
    car.reset(0, 0, 0)
    dt, n = 0.01, 100
    for _ in range(n):
        car.step(1.0, 0.5, dt)
    expected_rate = -1.5 * math.tan(spec.max_steer_rad) / spec.wheelbase_m
    assert car.state.yaw == pytest.approx(expected_rate * dt * n, rel=1e-6)


def test_kinematic_motor_sets_speed_with_lag_and_stops():
    assert Car is KinematicCar
    assert drive(0.0, motor=1.0, seconds=3.0).speed == pytest.approx(3.0, rel=0.01)
    assert drive(0.0, motor=0.0).speed == 0.0
    assert drive(0.0, motor=0.5, seconds=0.1).speed < 1.0  # first-order lag
    assert not drive(1.0, motor=1.0, seconds=3.0).sliding  # no grip limit


def test_dynamic_step_response_is_the_dc_motor_lag():
    """No resistance: dv/dt = F/M (m - v/v_top), so v(t) = m v_top (1 - exp(-t/tau)), tau = M v_top / F."""
    spec = DynamicSpec(rolling_resistance=0.0, drag_n_s2_m2=0.0, mu=3.0)
    tau = spec.mass_kg * spec.top_speed / spec.drive_force_n  # 1.5 kg * 4 m/s / 6 N = 1 s
    assert tau == pytest.approx(1.0)
    for t in (0.5, 1.0, 3.0):
        v = drive(0.0, motor=0.5, seconds=t, car=DynamicCar(spec)).speed
        assert v == pytest.approx(0.5 * 4.0 * (1 - math.exp(-t / tau)), rel=3e-3)


def test_dynamic_terminal_speed_balances_motor_drag_and_rolling():
    """F (1 - v/v_top) = M c_rr g + k v²: the positive root of k v² + (F/v_top) v + M c_rr g - F = 0."""
    sp = DynamicSpec()
    a, b = sp.drag_n_s2_m2, sp.drive_force_n / sp.top_speed
    c = sp.mass_kg * sp.rolling_resistance * G - sp.drive_force_n
    v_end = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)  # 3.60 m/s
    assert v_end == pytest.approx(3.60, abs=0.01)
    assert drive(0.0, motor=1.0, seconds=15.0, car=DynamicCar()).speed == pytest.approx(v_end, rel=2e-3)
    assert sp.motor_for(v_end, 0.0) == pytest.approx(1.0, abs=1e-6)  # the inverse model agrees


def test_dynamic_braking_distance():
    """Full brake from v0 on a straight: the brake asks 6 N / 1.5 kg = 4 m/s² but the tyres give mu g; rolling
    resistance and drag add, so d = M/(2k) ln(1 + (k/M) v0² / (a_b + c_rr g))."""
    sp = DynamicSpec()
    a_b = min(sp.brake_force_n / sp.mass_kg, sp.mu * G)  # 1.962 m/s² (grip-limited)
    kk = sp.drag_n_s2_m2 / sp.mass_kg
    for v0 in (1.0, 2.5):
        expected = math.log(1 + kk * v0 * v0 / (a_b + sp.rolling_resistance * G)) / (2 * kk)
        car = DynamicCar()
        car.reset(0.0, 0.0, 0.0, speed=v0)
        slid = []
        for _ in range(5000):  # one 2 ms substep per call, to see the car stop before it reverses
            slid.append(car.step(0.0, -1.0, sp.substep_s).sliding)
            if car.state.speed <= 0.0:
                break
        assert car.state.speed == 0.0  # the brake stops the car, it does not throw it backwards
        assert car.state.x == pytest.approx(expected, abs=0.01)
        assert sum(slid) > 0.9 * len(slid)  # braking at the grip limit
    assert expected == pytest.approx(1.370, abs=0.001)  # metres from 2.5 m/s


def test_negative_motor_brakes_then_reverses_at_limited_speed():
    car = DynamicCar()
    car.reset(0.0, 0.0, 0.0, speed=1.0)
    speeds = []
    for _ in range(240):
        speeds.append(car.step(0.0, -1.0, DT).speed)
    stop = next(i for i, v in enumerate(speeds) if v <= 0)
    assert all(b <= a for a, b in zip(speeds[:stop], speeds[1 : stop + 1], strict=True))  # braking
    assert speeds[-1] < -0.5 and car.state.x < 0.2  # then reversing
    assert speeds[-1] > -DynamicSpec().reverse_top_speed
    # coasting (motor 0) slows by rolling resistance and drag only, and never reverses
    coast = drive(0.0, motor=0.0, seconds=20.0, car=DynamicCar(DynamicSpec()))
    assert coast.speed == 0.0


def _circle(spec: DynamicSpec, steer: float, v: float, seconds: float = 1.0):
    car = DynamicCar(spec)
    car.reset(0.0, 0.0, 0.0, speed=v)
    yaw0, sliding = 0.0, []
    for _ in range(int(seconds / 0.01)):
        st = car.step(steer, v / spec.top_speed, 0.01)  # holds v exactly: no resistance, so no tyre force needed
        sliding.append(st.sliding)
    return (car.state.yaw - yaw0) / seconds, car.state.speed, all(sliding), any(sliding)


def test_slide_threshold_is_mu_g_on_the_friction_circle():
    """Steer 0.5 (14° road wheels): radius L / tan(14°) = 1.043 m; the tyres hold it up to v* = sqrt(mu g R)
    = 1.43 m/s. Above v* the car slides on the circle a_lat = mu g: radius v²/(mu g), yaw rate mu g / v."""
    spec = DynamicSpec(rolling_resistance=0.0, drag_n_s2_m2=0.0, steer_tau_s=0.0)
    radius = spec.wheelbase_m / math.tan(0.5 * spec.max_steer_rad)
    v_star = math.sqrt(spec.mu * G * radius)
    assert radius == pytest.approx(1.043, abs=1e-3) and v_star == pytest.approx(1.430, abs=1e-3)
    rate, v, all_slid, any_slid = _circle(spec, -0.5, 0.97 * v_star)  # left turn: yaw rate +
    assert not any_slid and v == pytest.approx(0.97 * v_star, rel=1e-9)
    assert rate == pytest.approx(0.97 * v_star / radius, rel=1e-3)
    for factor in (1.03, 1.5):
        rate, v, all_slid, _ = _circle(spec, -0.5, factor * v_star)
        assert all_slid and v == pytest.approx(factor * v_star, rel=1e-9)
        assert rate == pytest.approx(spec.mu * G / (factor * v_star), rel=1e-3)  # wider than the wheels ask


def test_spec_validation_names_field():
    with pytest.raises(ValueError, match="max_steer_deg=80 must be in 5..45 degrees"):
        CarSpec(max_steer_deg=80)
    with pytest.raises(ValueError, match="mu=0 must be in 0.01..3"):
        DynamicSpec(mu=0)
    with pytest.raises(ValueError, match="car='boat' must be one of dynamic, kinematic"):
        make_car("boat")
