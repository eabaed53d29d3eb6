"""The scripted expert for highway-env's racetrack: pure pursuit on the closest lane's centre line and a
speed plan that brakes for the curves ahead. It is privileged: it reads the road network and the car's
pose from the simulator, never the camera.

- Steering: the target point is ``lookahead`` metres along the closest lane's centre line (continuing
  onto the next lane at a lane's end); the pure-pursuit arc from the rear axle through it is turned
  into a front-wheel angle with highway-env's own bicycle model (:func:`geometry.steering_for_curvature`).
  Following the *closest* lane keeps the label a function of what the camera shows: a car pushed across the dashed
  line settles into the other lane rather than fighting back.
- Speed: :func:`geometry.target_speed` over the centre line's curvature up to ``preview_m`` ahead (curve
  speed from a lateral-acceleration limit, braking envelope before it, the lane's speed limit on
  straights), tracked by a proportional acceleration command. So the expert accelerates out of curves,
  coasts (command ≈ 0) at its cruise speed and brakes before curves.

- Hands (``steer_lag_s``, off by default): the steering command follows the pure-pursuit angle through a
  first-order lag of that time constant, as a human's hands and a steering servo do, so the command depends on
  the commands before it and not only on what the camera shows now. Off, the steering is a function of the
  car's pose and speed alone (the benchmark's expert); on, the expert carries state: ``reset()`` at each start.

DART (Laskey et al. 2017) noise for recording comes from ``driver.sim.expert.DartNoise``: the car
executes the expert's command plus correlated noise while the run records the clean command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .env import ACCEL_LIMIT, STEER_LIMIT, RacetrackSim
from .geometry import (
    curvature_profile,
    pursuit_curvature,
    rear_axle,
    speed_command,
    steering_for_curvature,
    target_speed,
)


@dataclass(frozen=True)
class ExpertSpec:
    """Pure-pursuit and speed-plan constants (metres, seconds)."""

    lookahead_min: float = 3.0  # pure-pursuit look-ahead from the car centre: max(lookahead_min, lookahead_s × speed)
    lookahead_s: float = 0.4
    v_min: float = 4.0  # m/s, slowest planned speed
    v_max: float = 10.0  # m/s on straights (the racetrack's speed limit)
    lateral_accel: float = 3.0  # m/s² allowed in curves
    brake_accel: float = 3.0  # m/s² used to plan braking before curves
    preview_m: float = 30.0  # how far ahead the speed plan reads the curvature
    sample_m: float = 1.0  # centre-line sampling step for the speed plan
    speed_gain: float = 1.5  # 1/s, acceleration per m/s of speed error
    steer_lag_s: float = 0.0  # time constant of a first-order lag on the steering command (0 = none)

    def __post_init__(self):
        if not 0.0 < self.v_min <= self.v_max:
            raise ValueError(f"v_min={self.v_min}, v_max={self.v_max} must satisfy 0 < v_min <= v_max")
        if not 1.0 <= self.lookahead_min <= 50.0:
            raise ValueError(f"lookahead_min={self.lookahead_min} must be in 1..50 m")
        if not 0.0 <= self.steer_lag_s <= 2.0:
            raise ValueError(f"steer_lag_s={self.steer_lag_s} must be in 0..2 s")
        if not 0.1 <= self.sample_m <= self.preview_m:
            raise ValueError(f"sample_m={self.sample_m} must be in 0.1..preview_m ({self.preview_m}) m")


def centreline_ahead(network, lane_index: tuple, s: float, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(N, 2)`` and headings ``(N,)`` of the lane centre line at increasing ``distances`` ahead of
    longitudinal position ``s`` on ``lane_index``, following highway-env's ``next_lane`` across lane ends."""
    idx, lane, base = lane_index, network.get_lane(lane_index), 0.0
    points, headings = np.empty((len(distances), 2)), np.empty(len(distances))
    for i, d in enumerate(distances):
        target = s + float(d) - base
        while target > lane.length:
            end = lane.position(lane.length, 0.0)
            base += lane.length
            target -= lane.length
            idx = network.next_lane(idx, position=end)
            lane = network.get_lane(idx)
        points[i] = lane.position(target, 0.0)
        headings[i] = lane.heading_at(target)
    return points, headings


class Expert:
    """``command(sim)`` → the clean normalised (steer, accel) in [-1, 1] for the car's current state."""

    def __init__(self, spec: ExpertSpec | None = None):
        self.spec = spec or ExpertSpec()
        self._preview = np.arange(0.0, self.spec.preview_m + 1e-9, self.spec.sample_m)
        self._steer: float | None = None  # the lagged steering command (``steer_lag_s`` > 0)

    def reset(self) -> None:
        """Forget the lagged steering command: the next command starts from the pure-pursuit angle."""
        self._steer = None

    def lagged(self, steer: float, fps: float) -> float:
        """``steer`` through the first-order lag of ``steer_lag_s`` at ``fps`` commands a second."""
        if self.spec.steer_lag_s <= 0.0 or self._steer is None:
            self._steer = steer
        else:
            self._steer += (1.0 - np.exp(-1.0 / (fps * self.spec.steer_lag_s))) * (steer - self._steer)
        return self._steer

    def command(self, sim: RacetrackSim) -> tuple[float, float]:
        sp, v = self.spec, sim.vehicle
        st = sim.lane_state()
        speed = float(v.speed)
        look = max(sp.lookahead_min, sp.lookahead_s * speed)
        (target,), _ = centreline_ahead(sim.network, st.lane_index, st.s, np.array([look]))
        # pure pursuit about the rear axle, which moves along the heading in highway-env's bicycle model
        rx, ry = rear_axle(v.position[0], v.position[1], v.heading, v.LENGTH)
        kappa = pursuit_curvature(rx, ry, v.heading, target[0], target[1])
        steer = steering_for_curvature(kappa, v.LENGTH) / STEER_LIMIT
        _, headings = centreline_ahead(sim.network, st.lane_index, st.s, self._preview)
        curv = curvature_profile(headings, sp.sample_m)
        lane = sim.network.get_lane(st.lane_index)
        v_max = min(sp.v_max, lane.speed_limit) if lane.speed_limit else sp.v_max
        v_target = target_speed(curv, self._preview[:-1], min(sp.v_min, v_max), v_max, sp.lateral_accel,
                                sp.brake_accel)
        accel = speed_command(speed, v_target, sp.speed_gain, ACCEL_LIMIT) / ACCEL_LIMIT
        steer = self.lagged(float(np.clip(steer, -1.0, 1.0)), sim.config.fps)
        return steer, float(np.clip(accel, -1.0, 1.0))


__all__ = ["Expert", "ExpertSpec", "centreline_ahead"]
