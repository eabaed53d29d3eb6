"""The expert driver: pure pursuit on the centreline with a curvature-based speed plan, and DART-style
noise injection for recording.

With DART (Laskey et al., 2017) the car EXECUTES the expert's command plus temporally correlated noise,
while the run RECORDS the expert's clean command at the state actually reached. The noisy execution
drifts the car off the centre line and the labels show how to come back, so runs contain recoveries.

The expert's speed depends only on the track ahead (never on the current speed), so the motor label is
a function of what the camera sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .car import CarSpec, CarState
from .track import Track


@dataclass(frozen=True)
class ExpertSpec:
    """Pure-pursuit and speed-plan constants."""

    lookahead_m: float = 0.7  # pure-pursuit look-ahead along the centreline from the rear axle
    v_max: float = 1.8  # m/s on straights
    v_min: float = 0.8  # m/s in the tightest turns
    lateral_accel: float = 1.6  # m/s² allowed in turns: v = sqrt(a / |curvature|)
    preview_m: float = 1.5  # how far ahead the speed plan looks for curvature

    def __post_init__(self):
        if not 0.1 <= self.lookahead_m <= 5.0:
            raise ValueError(f"lookahead_m={self.lookahead_m} must be in 0.1..5 m")
        if not 0.0 < self.v_min <= self.v_max:
            raise ValueError(f"v_min={self.v_min}, v_max={self.v_max} must satisfy 0 < v_min <= v_max")


class Expert:
    """Privileged driver: reads the car's pose and the track, returns normalised (steer, motor)."""

    def __init__(self, track: Track, car: CarSpec | None = None, spec: ExpertSpec | None = None):
        self.track, self.car, self.spec = track, car or CarSpec(), spec or ExpertSpec()

    def command(self, state: CarState) -> tuple[float, float]:
        """Clean command at ``state``: steer in [-1, 1] (+ right), motor in [0, 1]."""
        tr, sp = self.track, self.spec
        loc = tr.locate(state.x, state.y)
        tx, ty, _ = tr.point_at(loc.progress + sp.lookahead_m)
        dx, dy = tx - state.x, ty - state.y
        c, s = math.cos(state.yaw), math.sin(state.yaw)
        fwd, left = dx * c + dy * s, -dx * s + dy * c
        ld2 = max(fwd * fwd + left * left, 1e-6)
        curvature = 2.0 * left / ld2  # pure pursuit: arc through the target, + = left
        delta = math.atan(curvature * self.car.wheelbase_m)
        steer = max(-1.0, min(1.0, -delta / self.car.max_steer_rad))
        kmax = tr.curvature_ahead(loc.progress, sp.preview_m)
        speed = min(sp.v_max, max(sp.v_min, math.sqrt(sp.lateral_accel / max(kmax, 1e-6))))
        return steer, speed / self.car.max_speed


@dataclass(frozen=True)
class NoiseSpec:
    """DART noise: an Ornstein-Uhlenbeck process plus occasional larger pulses (normalised units)."""

    scale: float = 0.15  # stationary std of the steering noise
    tau_s: float = 0.5  # correlation time
    pulse_rate_hz: float = 0.15  # expected larger perturbations per second
    pulse_gain: float = 3.0  # pulse amplitude, in multiples of scale (random sign, 0.5..1× this)
    pulse_s: tuple[float, float] = (0.3, 0.8)  # pulse duration range
    motor_fraction: float = 0.25  # motor noise std relative to steering noise

    def __post_init__(self):
        if not 0.0 <= self.scale <= 1.0:
            raise ValueError(f"scale={self.scale} must be in 0..1 (normalised steer units)")
        if self.tau_s <= 0:
            raise ValueError(f"tau_s={self.tau_s} must be > 0 s")


class DartNoise:
    """Temporally correlated command noise, deterministic per seed. ``scale == 0`` gives exact zeros."""

    def __init__(self, spec: NoiseSpec, fps: float, seed: int):
        self.spec, self.dt = spec, 1.0 / fps
        self.rng = np.random.default_rng([int(seed), 7])
        self.reset()

    def reset(self) -> None:
        self.steer = self.motor = 0.0
        self.pulse_left = 0.0
        self.pulse_value = 0.0

    def sample(self) -> tuple[float, float]:
        """Next (steer, motor) noise."""
        sp = self.spec
        if sp.scale == 0.0:
            return 0.0, 0.0
        rho = math.exp(-self.dt / sp.tau_s)
        k = math.sqrt(1 - rho * rho)
        e = self.rng.standard_normal(2)
        self.steer = rho * self.steer + sp.scale * k * float(e[0])
        self.motor = rho * self.motor + sp.scale * sp.motor_fraction * k * float(e[1])
        if self.pulse_left <= 0 and self.rng.random() < sp.pulse_rate_hz * self.dt:
            self.pulse_left = float(self.rng.uniform(*sp.pulse_s))
            self.pulse_value = float(self.rng.choice([-1, 1]) * self.rng.uniform(0.5, 1.0) * sp.pulse_gain * sp.scale)
        pulse = 0.0
        if self.pulse_left > 0:
            pulse = self.pulse_value
            self.pulse_left -= self.dt
        return self.steer + pulse, self.motor
