"""Two models of a 1/10 RC car driven by normalised commands: kinematic (motor = target speed) and dynamic
(motor = drive force or brake, speed follows from forces, tyre grip is limited).

Commands are the ones models output: ``steer`` in [-1, 1] with -1 = full LEFT and +1 = full RIGHT, and
``motor`` in [-1, 1] with 0 = neutral. Positive steer turns the car clockwise (seen from above), so its
yaw DECREASES; zero steer drives a straight line.

Pose: ``x``, ``y`` in metres (world frame, ``x`` east, ``y`` north) of the rear-axle centre and ``yaw``
in radians counter-clockwise from ``+x``. Both models steer through a first-order servo lag.

:class:`KinematicCar` (also ``Car``, the original model): speed follows ``motor * max_speed`` (reverse
limited to ``max_reverse``) through a first-order lag; it never slides.

:class:`DynamicCar`: the equations and constants are in ``docs/sim.md`` ("Car"). In short, per 2 ms
substep: a DC-motor drive force ``F_drive * max(0, m - v / v_top)`` for ``m >= 0``; for ``m < 0`` a brake
force ``F_brake * |m|`` while rolling forward and, once stopped, reverse drive; rolling resistance
``c_rr * mass * g`` and air drag ``k_drag * v^2`` oppose motion. The tyres deliver at most ``mu * mass * g``:
when the demanded longitudinal and lateral (``v^2 * tan(delta) / wheelbase``) accelerations together
exceed ``mu * g`` (the friction circle), both are scaled back onto the circle and the car SLIDES: it
turns on a wider arc than its wheels point, so too fast into a corner leaves the road.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

G = 9.81  # m/s²
STOPPED_MPS = 0.05  # below this speed a negative motor command drives in reverse instead of braking


def _check(spec, ranges: dict[str, tuple[float, float]], unit: dict[str, str]) -> None:
    for name, (lo, hi) in ranges.items():
        v = getattr(spec, name)
        if not lo <= v <= hi:
            raise ValueError(f"{name}={v} must be in {lo:g}..{hi:g}{unit.get(name, '')}")


@dataclass(frozen=True)
class CarSpec:
    """Kinematic car constants."""

    wheelbase_m: float = 0.26
    max_steer_deg: float = 28.0
    max_speed: float = 3.0  # m/s at motor = +1
    max_reverse: float = 1.0  # m/s at motor = -1
    steer_tau_s: float = 0.08  # steering servo lag
    speed_tau_s: float = 0.30  # drivetrain lag

    def __post_init__(self):
        _check(self, {"wheelbase_m": (0.05, 2.0), "max_steer_deg": (5.0, 45.0), "max_speed": (0.1, 20.0),
                      "max_reverse": (0.0, 20.0), "steer_tau_s": (0.0, 2.0), "speed_tau_s": (0.0, 5.0)},
               {"wheelbase_m": " m", "max_steer_deg": " degrees", "max_speed": " m/s", "max_reverse": " m/s",
                "steer_tau_s": " s", "speed_tau_s": " s"})

    kind = "kinematic"
    grip_mps2 = math.inf  # no grip limit

    @property
    def max_steer_rad(self) -> float:
        return math.radians(self.max_steer_deg)

    def resistance(self, speed: float) -> float:
        """No rolling resistance or drag in the kinematic model."""
        return 0.0

    def motor_for(self, speed: float, accel: float, coast_band: float = 0.0) -> float:
        """The motor command that gives acceleration ``accel`` (m/s²) at ``speed``: a target speed that the
        first-order lag approaches at that rate (continuous already: ``coast_band`` is not used)."""
        target = speed + accel * self.speed_tau_s
        return max(-1.0, min(1.0, target / (self.max_speed if target >= 0 else max(self.max_reverse, 1e-9))))


@dataclass(frozen=True)
class DynamicSpec:
    """Dynamic car constants (a 1.5 kg 1/10 car on a low-grip floor; see docs/sim.md)."""

    wheelbase_m: float = 0.26
    max_steer_deg: float = 28.0
    steer_tau_s: float = 0.08  # steering servo lag
    mass_kg: float = 1.5
    drive_force_n: float = 6.0  # F_drive: motor force at full throttle from standstill (4 m/s²)
    top_speed: float = 4.0  # v_top: the motor's force falls linearly to zero at m * v_top (DC motor)
    brake_force_n: float = 6.0  # F_brake at motor = -1
    reverse_force_n: float = 3.0  # drive force in reverse at motor = -1 from standstill
    reverse_top_speed: float = 1.0  # m/s
    rolling_resistance: float = 0.03  # c_rr: rolling + drivetrain resistance, in units of mass * g
    drag_n_s2_m2: float = 0.012  # k_drag: air drag force = k_drag * v² (0.5 * 1.2 kg/m³ * Cd 0.6 * 0.033 m²)
    mu: float = 0.2  # tyre-floor friction coefficient: at most mu * g of combined acceleration
    substep_s: float = 0.002  # integration step

    def __post_init__(self):
        ranges = {"wheelbase_m": (0.05, 2.0), "max_steer_deg": (5.0, 45.0), "steer_tau_s": (0.0, 2.0),
                  "mass_kg": (0.05, 5000.0), "drive_force_n": (0.0, 1e5), "top_speed": (0.1, 50.0),
                  "brake_force_n": (0.0, 1e5), "reverse_force_n": (0.0, 1e5), "reverse_top_speed": (0.0, 50.0),
                  "rolling_resistance": (0.0, 1.0), "drag_n_s2_m2": (0.0, 100.0), "mu": (0.01, 3.0),
                  "substep_s": (1e-4, 0.02)}
        units = {f.name: "" for f in fields(self)}
        units.update(wheelbase_m=" m", max_steer_deg=" degrees", steer_tau_s=" s", mass_kg=" kg", top_speed=" m/s",
                     drive_force_n=" N", brake_force_n=" N", reverse_force_n=" N", reverse_top_speed=" m/s",
                     drag_n_s2_m2=" N s²/m²", substep_s=" s")
        _check(self, ranges, units)

    kind = "dynamic"

    @property
    def max_steer_rad(self) -> float:
        return math.radians(self.max_steer_deg)

    @property
    def grip_mps2(self) -> float:
        """The largest tyre acceleration, mu * g (m/s²)."""
        return self.mu * G

    def resistance(self, speed: float) -> float:
        """Deceleration from rolling resistance and drag at ``speed`` (m/s², >= 0)."""
        v = abs(speed)
        return 0.0 if v == 0 else self.rolling_resistance * G + self.drag_n_s2_m2 * v * v / self.mass_kg

    def motor_for(self, speed: float, accel: float, coast_band: float = 0.0) -> float:
        """The motor command that gives acceleration ``accel`` (m/s²) at forward ``speed`` on a straight: the
        inverse of the drive and brake laws (clipped to [-1, 1]; grip may still limit it). Every motor in
        ``0..v/v_top`` gives no force (coasting), so the exact inverse jumps from ``v/v_top`` to braking;
        within ``coast_band`` (m/s²) of wanted braking the command moves linearly from ``v/v_top`` to the
        brake command for ``coast_band`` (coasting, then braking lightly), which makes it continuous in
        ``accel``; beyond it, and for driving, the inverse is exact."""
        v = max(0.0, speed)
        need = accel + self.resistance(v)  # tyre force per mass that the motor or brake must give
        brake_per_mps2 = self.mass_kg / max(self.brake_force_n, 1e-9)
        if need >= 0:
            m = v / self.top_speed + need * self.mass_kg / self.drive_force_n
        elif need > -coast_band:  # from coasting (v/v_top) to the brake command at -coast_band
            f = -need / coast_band
            m = (1.0 - f) * v / self.top_speed - f * coast_band * brake_per_mps2
        else:
            m = need * brake_per_mps2
        return max(-1.0, min(1.0, m))

    def max_accel(self, speed: float) -> float:
        """The largest forward acceleration at ``speed`` on a straight (full throttle, before the grip limit)."""
        v = max(0.0, speed)
        return self.drive_force_n * max(0.0, 1.0 - v / self.top_speed) / self.mass_kg - self.resistance(v)


@dataclass
class CarState:
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    speed: float = 0.0  # m/s, forward positive
    steer: float = 0.0  # actual (lagged) normalised steer, + right
    sliding: bool = False  # the tyres were past the grip limit during the last step
    lateral_accel: float = 0.0  # m/s², + left, actual (after the grip limit)
    long_accel: float = 0.0  # m/s², + forward, actual (all forces)


def _clip1(v: float) -> float:
    return min(1.0, max(-1.0, float(v)))


class KinematicCar:
    """The kinematic bicycle model. ``step(steer, motor, dt)`` advances it; ``state`` is the current pose."""

    def __init__(self, spec: CarSpec | None = None, state: CarState | None = None):
        self.spec = spec or CarSpec()
        self.state = state or CarState()

    def reset(self, x: float, y: float, yaw: float, speed: float = 0.0) -> None:
        """Place the car (steering centred)."""
        self.state = CarState(x, y, yaw, speed, 0.0)

    def target_speed(self, motor: float) -> float:
        m = _clip1(motor)
        return m * (self.spec.max_speed if m >= 0 else self.spec.max_reverse)

    def step(self, steer: float, motor: float, dt: float) -> CarState:
        """Apply commands for ``dt`` seconds (inputs are clipped to [-1, 1]); returns the new state."""
        sp, st = self.spec, self.state
        a_s = 1.0 if sp.steer_tau_s == 0 else 1.0 - math.exp(-dt / sp.steer_tau_s)
        a_v = 1.0 if sp.speed_tau_s == 0 else 1.0 - math.exp(-dt / sp.speed_tau_s)
        st.steer += a_s * (_clip1(steer) - st.steer)
        v0 = st.speed
        st.speed += a_v * (self.target_speed(motor) - st.speed)
        st.long_accel = (st.speed - v0) / dt
        delta = -st.steer * sp.max_steer_rad  # road-wheel angle, + = left (counter-clockwise)
        yaw_rate = st.speed * math.tan(delta) / sp.wheelbase_m
        st.lateral_accel = st.speed * yaw_rate
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


Car = KinematicCar  # the original name


class DynamicCar:
    """Force-driven bicycle with a friction-circle grip limit. Same interface as :class:`KinematicCar`."""

    def __init__(self, spec: DynamicSpec | None = None, state: CarState | None = None):
        self.spec = spec or DynamicSpec()
        self.state = state or CarState()

    def reset(self, x: float, y: float, yaw: float, speed: float = 0.0) -> None:
        """Place the car (steering centred)."""
        self.state = CarState(x, y, yaw, speed, 0.0)

    def tyre_accel(self, motor: float, v: float) -> float:
        """Longitudinal tyre force per mass (m/s², + forward) the motor or brake asks for at speed ``v``."""
        sp, m = self.spec, motor
        if v > STOPPED_MPS or (v >= -STOPPED_MPS and m >= 0):  # rolling forward (or stopped, throttle)
            if m >= 0:
                return sp.drive_force_n * max(0.0, m - max(v, 0.0) / sp.top_speed) / sp.mass_kg
            return sp.brake_force_n * m / sp.mass_kg  # brake: m < 0
        if m <= 0:  # stopped or rolling backwards: reverse drive
            return -sp.reverse_force_n * max(0.0, -m - max(-v, 0.0) / max(sp.reverse_top_speed, 1e-9)) / sp.mass_kg
        return sp.brake_force_n * m / sp.mass_kg  # rolling backwards, throttle forward: brake

    def step(self, steer: float, motor: float, dt: float) -> CarState:
        """Apply commands for ``dt`` seconds (inputs are clipped to [-1, 1]); returns the new state."""
        sp, st = self.spec, self.state
        steer, motor = _clip1(steer), _clip1(motor)
        n = max(1, math.ceil(dt / sp.substep_s - 1e-9))
        h = dt / n
        a_s = 1.0 if sp.steer_tau_s == 0 else 1.0 - math.exp(-h / sp.steer_tau_s)
        grip = sp.grip_mps2
        v0, slid, x, y, yaw, v = st.speed, False, st.x, st.y, st.yaw, st.speed
        a_y = 0.0
        for _ in range(n):
            st.steer += a_s * (steer - st.steer)
            k_wheels = math.tan(-st.steer * sp.max_steer_rad) / sp.wheelbase_m  # curvature the wheels ask for
            a_x = self.tyre_accel(motor, v)
            a_y = v * v * k_wheels
            demand = math.hypot(a_x, a_y)
            if demand > grip:  # friction circle: both components scaled back onto it
                scale = grip / demand
                a_x, a_y = a_x * scale, a_y * scale
                slid = True
            kappa = a_y / (v * v) if v * v > 1e-12 else k_wheels
            resist = sp.resistance(v)
            if v > 0:
                v_new = v + (a_x - resist) * h
                if v_new < 0 and a_x <= 0:  # brakes and resistance stop the car; they never reverse it
                    v_new = 0.0
            elif v < 0:
                v_new = v + (a_x + resist) * h
                if v_new > 0 and a_x >= 0:
                    v_new = 0.0
            else:  # standing: moves only if the tyre force beats rolling resistance
                push = abs(a_x) - sp.rolling_resistance * G
                v_new = math.copysign(push * h, a_x) if push > 0 else 0.0
            v_mid = 0.5 * (v + v_new)
            dyaw = v_mid * kappa * h
            heading = yaw + 0.5 * dyaw
            x += v_mid * h * math.cos(heading)
            y += v_mid * h * math.sin(heading)
            yaw += dyaw
            v = v_new
        st.x, st.y, st.speed = x, y, v
        st.yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        st.sliding, st.lateral_accel, st.long_accel = slid, a_y, (v - v0) / dt
        return st


CAR_MODELS = ("dynamic", "kinematic")


def make_car(kind: str = "dynamic") -> KinematicCar | DynamicCar:
    """A car of ``kind`` (``dynamic``, the default world, or ``kinematic``) with default constants."""
    if kind == "dynamic":
        return DynamicCar()
    if kind == "kinematic":
        return KinematicCar()
    raise ValueError(f"car={kind!r} must be one of {', '.join(CAR_MODELS)}")
