"""The expert driver: pure pursuit on the centreline, a speed plan that brakes before corners (grip and
braking distance, :mod:`.speed_plan`), a speed controller, and DART-style noise injection for recording.

Steering: pure pursuit from the rear axle towards the centreline point ``max(lookahead_m, lookahead_s * v)``
ahead. Speed: the plan's speed ``v_ref`` a little ahead (``preview_s * v``, covering the drivetrain's lag),
a desired tyre force per mass ``(v_ref - v) / speed_tau_s`` plus rolling resistance and drag, limited to
``brake_accel`` when braking and, when accelerating, to what the turn leaves of the grip (friction circle,
no wheelspin), and the motor command that gives it at the current speed (the car model's inverse,
``spec.motor_for``, with the lightest braking given as coasting so the command is continuous in the speed
error): it brakes (motor < 0) when the car is faster than the plan and accelerates out of corners. So the
motor label depends on the current speed, not only on the picture. On the kinematic car (motor = target
speed) the command is exactly ``v_ref / max_speed``.

:meth:`Expert.command` labels ANY car state (pose and speed), which is what DAgger needs.

With DART (Laskey et al., 2017) the car EXECUTES the expert's command plus temporally correlated noise,
while the run RECORDS the expert's clean command at the state actually reached. The noisy execution
drifts the car off the centre line and off the planned speed, and the labels show how to come back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .car import CarSpec, CarState, DynamicSpec
from .speed_plan import SpeedPlan, plan_speed
from .track import Track


@dataclass(frozen=True)
class ExpertSpec:
    """Pure-pursuit, speed-plan and speed-controller constants (defaults: the dynamic car at its limit)."""

    lookahead_m: float = 0.7  # shortest pure-pursuit look-ahead along the centreline from the rear axle
    lookahead_s: float = 0.35  # look-ahead grows with speed: max(lookahead_m, lookahead_s * v)
    v_max: float = 2.7  # m/s on straights
    v_min: float = 0.5  # m/s, floor of the plan
    lateral_accel: float | None = None  # m/s² used in corners; None = grip_fraction * mu * g of the car
    brake_accel: float | None = None  # m/s² used to brake; None = grip_fraction * the car's braking limit
    grip_fraction: float = 0.8  # share of the tyres' grip the expert uses
    preview_s: float = 0.15  # the speed reference is read this many seconds ahead
    speed_tau_s: float = 0.3  # speed controller time constant
    coast_band: float = 1.0  # m/s² of wanted braking blended from coasting, so the motor label is continuous

    def __post_init__(self):
        if not 0.1 <= self.lookahead_m <= 5.0:
            raise ValueError(f"lookahead_m={self.lookahead_m} must be in 0.1..5 m")
        if not 0.0 <= self.lookahead_s <= 3.0:
            raise ValueError(f"lookahead_s={self.lookahead_s} must be in 0..3 s")
        if not 0.0 < self.v_min <= self.v_max:
            raise ValueError(f"v_min={self.v_min}, v_max={self.v_max} must satisfy 0 < v_min <= v_max")
        for name in ("lateral_accel", "brake_accel"):
            v = getattr(self, name)
            if v is not None and not 0.05 <= v <= 100:
                raise ValueError(f"{name}={v} must be in 0.05..100 m/s² (or None: from the car's grip)")
        if not 0.05 <= self.grip_fraction <= 1.0:
            raise ValueError(f"grip_fraction={self.grip_fraction} must be in 0.05..1")
        if not 0.0 <= self.coast_band <= 10.0:
            raise ValueError(f"coast_band={self.coast_band} must be in 0..10 m/s²")
        if not 0.0 <= self.preview_s <= 2.0 or not 0.01 <= self.speed_tau_s <= 5.0:
            raise ValueError(f"preview_s={self.preview_s} must be in 0..2 s and speed_tau_s={self.speed_tau_s} "
                             "in 0.01..5 s")

    @classmethod
    def for_car(cls, car: CarSpec | DynamicSpec) -> ExpertSpec:
        """Defaults for ``car``: at the grip limit for the dynamic car; the original gentle plan (0.8..1.8 m/s,
        1.6 m/s² in corners) for the kinematic car, which has no grip limit."""
        if car.kind == "kinematic":
            return cls(lookahead_s=0.0, v_max=1.8, v_min=0.8, lateral_accel=1.6, brake_accel=1.5, preview_s=0.0)
        return cls()

    def accelerations(self, car: CarSpec | DynamicSpec) -> tuple[float, float]:
        """(lateral, braking) accelerations the plan uses with ``car``, m/s²."""
        lat = self.lateral_accel
        brake = self.brake_accel
        if lat is None or brake is None:
            if car.kind != "dynamic":
                raise ValueError("lateral_accel and brake_accel must be set for a car without a grip limit")
            limit = min(car.brake_force_n / car.mass_kg, car.grip_mps2)
            lat = self.grip_fraction * car.grip_mps2 if lat is None else lat
            brake = self.grip_fraction * limit if brake is None else brake
        return lat, brake


class Expert:
    """Privileged driver: reads the car's state and the track, returns normalised (steer, motor)."""

    def __init__(self, track: Track, car: CarSpec | DynamicSpec | None = None, spec: ExpertSpec | None = None):
        self.track, self.car = track, car or DynamicSpec()
        self.spec = spec or ExpertSpec.for_car(self.car)
        lat, self.brake_accel = self.spec.accelerations(self.car)
        self.grip = self.car.grip_mps2  # inf for the kinematic car
        accel = None
        if self.car.kind == "dynamic":  # the plan accelerates out of corners as the motor and tyres allow

            def accel(v: float) -> float:
                return min(self.grip, self.car.max_accel(v))

        self.plan: SpeedPlan = plan_speed(track, lat, self.brake_accel, self.spec.v_max, self.spec.v_min, accel)

    def target_speed(self, state: CarState) -> float:
        """The speed the expert aims for at ``state``: the plan, read ``preview_s`` ahead."""
        loc = self.track.locate(state.x, state.y)
        return self.plan.at(loc.progress + max(state.speed, 0.0) * self.spec.preview_s)

    def command(self, state: CarState) -> tuple[float, float]:
        """Clean command at ``state``: steer in [-1, 1] (+ right), motor in [-1, 1] (< 0 brakes)."""
        tr, sp = self.track, self.spec
        loc = tr.locate(state.x, state.y)
        v = state.speed
        tx, ty, _ = tr.point_at(loc.progress + max(sp.lookahead_m, sp.lookahead_s * abs(v)))
        dx, dy = tx - state.x, ty - state.y
        c, s = math.cos(state.yaw), math.sin(state.yaw)
        fwd, left = dx * c + dy * s, -dx * s + dy * c
        ld2 = max(fwd * fwd + left * left, 1e-6)
        curvature = 2.0 * left / ld2  # pure pursuit: arc through the target, + = left
        delta = math.atan(curvature * self.car.wheelbase_m)
        steer = max(-1.0, min(1.0, -delta / self.car.max_steer_rad))
        v_ref = self.plan.at(loc.progress + max(v, 0.0) * sp.preview_s)
        resist = self.car.resistance(v)  # rolling resistance and drag help braking and cost traction
        tyre = (v_ref - v) / sp.speed_tau_s + resist  # tyre force per mass wanted
        if tyre >= 0:  # accelerate with what the turn leaves of the grip (the friction circle): no wheelspin
            a_lat = v * v * abs(math.tan(steer * self.car.max_steer_rad)) / self.car.wheelbase_m
            tyre = min(tyre, math.sqrt(max(0.0, self.grip * self.grip - a_lat * a_lat)))
        else:  # too fast: brake, even where that costs cornering grip
            tyre = max(tyre, -self.brake_accel)
        return steer, self.car.motor_for(v, tyre - resist, sp.coast_band)


@dataclass(frozen=True)
class NoiseSpec:
    """DART noise: an Ornstein-Uhlenbeck process plus occasional larger pulses (normalised units).

    A steering error's lateral acceleration grows with the square of the speed, so above
    ``reference_speed`` the steering noise is scaled by ``(reference_speed / speed)²``: its effect on the
    path stays that of ``scale`` at ``reference_speed`` (at any speed on the kinematic car's old range).

    Throttle surges (``surge_rate_hz`` > 0, off by default) raise the motor by 0.5..1 × ``surge_gain`` for
    ``surge_s`` seconds: a driver who stays on the throttle too long. Where one meets a braking zone the car
    enters the corner faster than the plan, and the recorded clean command there brakes hard, which the OU
    motor noise, mean-reverting within ``tau_s``, rarely shows."""

    scale: float = 0.15  # stationary std of the steering noise at reference_speed and below
    tau_s: float = 0.5  # correlation time
    pulse_rate_hz: float = 0.15  # expected larger perturbations per second
    pulse_gain: float = 3.0  # pulse amplitude, in multiples of scale (random sign, 0.5..1× this)
    pulse_s: tuple[float, float] = (0.3, 0.8)  # pulse duration range
    motor_fraction: float = 0.25  # motor noise std relative to steering noise
    reference_speed: float = 1.5  # m/s
    motor_scale: float | None = None  # stationary std of the motor noise; None = scale * motor_fraction
    surge_rate_hz: float = 0.0  # expected throttle surges per second (0 = none): the motor raised for a while
    surge_gain: float = 0.6  # surge amplitude, normalised motor units (0.5..1× this)
    surge_s: tuple[float, float] = (0.5, 1.5)  # surge duration range

    def __post_init__(self):
        if not 0.0 <= self.scale <= 1.0:
            raise ValueError(f"scale={self.scale} must be in 0..1 (normalised steer units)")
        if self.tau_s <= 0:
            raise ValueError(f"tau_s={self.tau_s} must be > 0 s")
        if not 0.1 <= self.reference_speed <= 50:
            raise ValueError(f"reference_speed={self.reference_speed} must be in 0.1..50 m/s")
        if self.motor_scale is not None and not 0.0 <= self.motor_scale <= 1.0:
            raise ValueError(f"motor_scale={self.motor_scale} must be in 0..1 (normalised motor units)")
        if not 0.0 <= self.surge_rate_hz <= 2.0:
            raise ValueError(f"surge_rate_hz={self.surge_rate_hz} must be in 0..2 surges per second")
        if not 0.0 < self.surge_gain <= 2.0:
            raise ValueError(f"surge_gain={self.surge_gain} must be in (0, 2] (normalised motor units)")
        if not 0.0 < self.surge_s[0] <= self.surge_s[1] <= 10.0:
            raise ValueError(f"surge_s={self.surge_s} must be a (shortest, longest) range within (0, 10] s")

    @property
    def motor_std(self) -> float:
        return self.scale * self.motor_fraction if self.motor_scale is None else self.motor_scale


class DartNoise:
    """Temporally correlated command noise, deterministic per seed. ``scale == 0`` (and no motor noise) gives
    exact zeros."""

    def __init__(self, spec: NoiseSpec, fps: float, seed: int):
        self.spec, self.dt = spec, 1.0 / fps
        self.rng = np.random.default_rng([int(seed), 7])
        self.reset()

    def reset(self) -> None:
        self.steer = self.motor = 0.0
        self.pulse_left = 0.0
        self.pulse_value = 0.0
        self.surge_left = 0.0
        self.surge_value = 0.0

    def sample(self, speed: float = 0.0) -> tuple[float, float]:
        """Next (steer, motor) noise for a car at ``speed`` (m/s; see :class:`NoiseSpec`)."""
        sp = self.spec
        if sp.scale == 0.0 and sp.motor_std == 0.0 and sp.surge_rate_hz == 0.0:
            return 0.0, 0.0
        rho = math.exp(-self.dt / sp.tau_s)
        k = math.sqrt(1 - rho * rho)
        e = self.rng.standard_normal(2)
        self.steer = rho * self.steer + sp.scale * k * float(e[0])
        self.motor = rho * self.motor + sp.motor_std * k * float(e[1])
        if self.pulse_left <= 0 and self.rng.random() < sp.pulse_rate_hz * self.dt:
            self.pulse_left = float(self.rng.uniform(*sp.pulse_s))
            self.pulse_value = float(self.rng.choice([-1, 1]) * self.rng.uniform(0.5, 1.0) * sp.pulse_gain * sp.scale)
        pulse = 0.0
        if self.pulse_left > 0:
            pulse = self.pulse_value
            self.pulse_left -= self.dt
        at_speed = min(1.0, (sp.reference_speed / abs(speed)) ** 2) if speed else 1.0
        return (self.steer + pulse) * at_speed, self.motor + self._surge()

    def _surge(self) -> float:
        """The throttle surge now (>= 0; see :class:`NoiseSpec`). Draws nothing when surges are off, so a
        recording without them is the same as before they existed."""
        sp = self.spec
        if sp.surge_rate_hz == 0.0:
            return 0.0
        if self.surge_left <= 0 and self.rng.random() < sp.surge_rate_hz * self.dt:
            self.surge_left = float(self.rng.uniform(*sp.surge_s))
            self.surge_value = float(self.rng.uniform(0.5, 1.0) * sp.surge_gain)
        if self.surge_left <= 0:
            return 0.0
        self.surge_left -= self.dt
        return self.surge_value
