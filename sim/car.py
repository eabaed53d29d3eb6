"""A kinematic bicycle model of a 1/10 RC car driven by normalised commands.

Commands are the ones models output: ``steer`` in [-1, 1] with -1 = full LEFT and +1 = full RIGHT, and
``motor`` in [-1, 1] with 0 = stop and +1 = full forward. Positive steer turns the car clockwise (seen
from above), so its yaw DECREASES; zero steer drives a straight line.

Pose: ``x``, ``y`` in metres (world frame, ``x`` east, ``y`` north) of the rear-axle centre and ``yaw``
in radians counter-clockwise from ``+x``. The steering and the speed follow their commands through
first-order lags; speed is ``motor * max_speed`` (reverse limited to ``max_reverse``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CarSpec:
    """Vehicle constants."""

    wheelbase_m: float = 0.26
    max_steer_deg: float = 28.0
    max_speed: float = 3.0  # m/s at motor = +1
    max_reverse: float = 1.0  # m/s at motor = -1
    steer_tau_s: float = 0.08  # steering servo lag
    speed_tau_s: float = 0.30  # drivetrain lag

    def __post_init__(self):
        if not 0.05 <= self.wheelbase_m <= 2.0:
            raise ValueError(f"wheelbase_m={self.wheelbase_m} must be in 0.05..2.0 m")
        if not 5.0 <= self.max_steer_deg <= 45.0:
            raise ValueError(f"max_steer_deg={self.max_steer_deg} must be in 5..45 degrees")
        if not 0.1 <= self.max_speed <= 20.0:
            raise ValueError(f"max_speed={self.max_speed} must be in 0.1..20 m/s")
        if self.steer_tau_s < 0 or self.speed_tau_s < 0:
            raise ValueError(f"steer_tau_s={self.steer_tau_s} and speed_tau_s={self.speed_tau_s} must be >= 0 s")

    @property
    def max_steer_rad(self) -> float:
        return math.radians(self.max_steer_deg)


@dataclass
class CarState:
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    speed: float = 0.0  # m/s, forward positive
    steer: float = 0.0  # actual (lagged) normalised steer, + right


class Car:
    """The bicycle model. ``step(steer, motor, dt)`` advances it; ``state`` is the current pose."""

    def __init__(self, spec: CarSpec | None = None, state: CarState | None = None):
        self.spec = spec or CarSpec()
        self.state = state or CarState()

    def reset(self, x: float, y: float, yaw: float, speed: float = 0.0) -> None:
        """Place the car (steering centred)."""
        self.state = CarState(x, y, yaw, speed, 0.0)

    def target_speed(self, motor: float) -> float:
        m = min(1.0, max(-1.0, float(motor)))
        return m * (self.spec.max_speed if m >= 0 else self.spec.max_reverse)

    def step(self, steer: float, motor: float, dt: float) -> CarState:
        """Apply commands for ``dt`` seconds (inputs are clipped to [-1, 1]); returns the new state."""
        sp, st = self.spec, self.state
        steer = min(1.0, max(-1.0, float(steer)))
        a_s = 1.0 if sp.steer_tau_s == 0 else 1.0 - math.exp(-dt / sp.steer_tau_s)
        a_v = 1.0 if sp.speed_tau_s == 0 else 1.0 - math.exp(-dt / sp.speed_tau_s)
        st.steer += a_s * (steer - st.steer)
        st.speed += a_v * (self.target_speed(motor) - st.speed)
        delta = -st.steer * sp.max_steer_rad  # road-wheel angle, + = left (counter-clockwise)
        yaw_rate = st.speed * math.tan(delta) / sp.wheelbase_m
        # exact integration along an arc for constant speed and steering over the step
        if abs(yaw_rate) < 1e-9:
            st.x += st.speed * dt * math.cos(st.yaw)
            st.y += st.speed * dt * math.sin(st.yaw)
        else:
            new_yaw = st.yaw + yaw_rate * dt
            r = st.speed / yaw_rate
            st.x += r * (math.sin(new_yaw) - math.sin(st.yaw))
            st.y -= r * (math.cos(new_yaw) - math.cos(st.yaw))
            st.yaw = new_yaw
        st.yaw = math.atan2(math.sin(st.yaw), math.cos(st.yaw))
        return st
