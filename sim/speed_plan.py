"""The speed plan: the fastest speed at each point of a track that the tyres can hold through every corner
ahead, given how hard the car can brake and (optionally) accelerate.

Per centreline sample ``i`` (spacing ``ds``):

* cornering: ``v_corner[i] = min(v_max, sqrt(a_lat / |curvature[i]|))`` (at least ``v_min``);
* acceleration (when ``accel(v)`` is given: the largest forward acceleration at speed ``v`` on a straight):
  ``v[i+1] <= sqrt(v[i]^2 + 2 * ds * accel(v[i]) * sqrt(1 - (v[i]^2 * k / a_lat)^2))``, swept forwards;
* braking: the car must be able to slow to every later corner's speed. Braking shares the tyres with
  cornering (a friction ellipse), so at speed ``v`` on curvature ``k`` only
  ``a_brake * sqrt(1 - (v^2 * k / a_lat)^2)`` is left for it, and
  ``v[i] = min(v[i], sqrt(v[i+1]^2 + 2 * ds * that))``, swept backwards: braking ends before the car turns in.

Both sweeps go twice round the closed track (forwards, then backwards).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .track import Track


@dataclass(frozen=True)
class SpeedPlan:
    """Planned speed (m/s) per centreline sample of one track."""

    speed: np.ndarray
    ds: float
    length: float

    def at(self, progress: float) -> float:
        """Planned speed at arc length ``progress`` (wraps around; linear between samples)."""
        p = (float(progress) % self.length) / self.ds
        i = int(p) % len(self.speed)
        f = p - math.floor(p)
        return float(self.speed[i] * (1 - f) + self.speed[(i + 1) % len(self.speed)] * f)


def plan_speed(track: Track, lateral_accel: float, brake_accel: float, v_max: float, v_min: float = 0.0,
               accel: Callable[[float], float] | None = None) -> SpeedPlan:
    """The speed plan of ``track`` (see module docstring); accelerations in m/s², speeds in m/s."""
    if not lateral_accel > 0 or not brake_accel > 0:
        raise ValueError(f"lateral_accel={lateral_accel} and brake_accel={brake_accel} must be > 0 m/s²")
    if not 0 <= v_min <= v_max:
        raise ValueError(f"v_min={v_min}, v_max={v_max} must satisfy 0 <= v_min <= v_max")
    k = np.abs(track.curvature)
    v = np.clip(np.sqrt(lateral_accel / np.maximum(k, 1e-9)), v_min, v_max)
    n, ds = len(v), track.ds

    def left(speed: float, j: int) -> float:  # share of the grip not used by cornering
        used = min(1.0, speed * speed * k[j] / lateral_accel)
        return math.sqrt(1.0 - used * used)

    if accel is not None:
        for i in range(2 * n):  # forwards, twice round the closed loop
            j, nxt = i % n, (i + 1) % n
            reach = v[j] * v[j] + 2.0 * ds * max(0.0, accel(v[j])) * left(v[j], j)
            v[nxt] = min(v[nxt], math.sqrt(reach))
    for i in range(2 * n - 1, -1, -1):  # backwards, twice round the closed loop
        j, nxt = i % n, (i + 1) % n
        v[j] = min(v[j], math.sqrt(v[nxt] * v[nxt] + 2.0 * ds * brake_accel * left(v[nxt], j)))
    return SpeedPlan(v, ds, track.length)
