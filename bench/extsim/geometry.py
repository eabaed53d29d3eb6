"""Pure geometry for the external-simulator expert: angles, pure pursuit, the speed plan, the camera warp.

World frame (highway-env's): x right, y down as drawn on the screen, heading ``h`` in radians with the
car pointing along ``(cos h, sin h)``. A growing heading turns the car clockwise on the screen, i.e. to
its RIGHT, so every signed quantity here is ``+ = right``: lateral offsets, curvature, steering. That is
also the run format's sign (steer 99 = full right).

Nothing here imports the simulator: these functions are tested on synthetic inputs.
"""

from __future__ import annotations

import math

import numpy as np


def wrap_angle(a):
    """Angle(s) wrapped to [-pi, pi)."""
    if np.isscalar(a):
        return (float(a) + math.pi) % (2 * math.pi) - math.pi
    return (np.asarray(a, dtype=np.float64) + math.pi) % (2 * math.pi) - math.pi


def to_car_frame(x: float, y: float, yaw: float, px: float, py: float) -> tuple[float, float]:
    """Point (px, py) as (forward, right) metres from a car at (x, y) heading ``yaw``."""
    dx, dy = px - x, py - y
    c, s = math.cos(yaw), math.sin(yaw)
    return dx * c + dy * s, -dx * s + dy * c


def pursuit_curvature(x: float, y: float, yaw: float, tx: float, ty: float) -> float:
    """Pure pursuit: curvature (1/m, + right) of the arc from the car through the target point."""
    fwd, right = to_car_frame(x, y, yaw, tx, ty)
    return 2.0 * right / max(fwd * fwd + right * right, 1e-6)


def rear_axle(x: float, y: float, yaw: float, length: float) -> tuple[float, float]:
    """The rear axle of highway-env's car, ``length / 2`` behind its centre (its reference point)."""
    return x - 0.5 * length * math.cos(yaw), y - 0.5 * length * math.sin(yaw)


def steering_for_curvature(curvature: float, length: float) -> float:
    """Front-wheel angle (rad, + right) that makes highway-env's car drive an arc of ``curvature`` (1/m)
    about its rear axle.

    highway-env's ``Vehicle.step`` is the kinematic bicycle with the centre of mass midway between the
    axles (slip angle ``beta = atan(tan(delta) / 2)``, yaw rate ``v sin(beta) / (length / 2)``); its rear
    axle moves along the heading on the arc of curvature ``tan(delta) / length``, which this inverts."""
    return math.atan(curvature * length)


def curvature_profile(headings: np.ndarray, spacing: float) -> np.ndarray:
    """Signed curvature (1/m, + right) between consecutive centreline headings sampled ``spacing`` apart."""
    h = np.asarray(headings, dtype=np.float64)
    if spacing <= 0:
        raise ValueError(f"spacing={spacing} must be > 0 m")
    if h.size < 2:
        return np.zeros(0)
    return wrap_angle(np.diff(h)) / spacing


def target_speed(curvature: np.ndarray, distance: np.ndarray, v_min: float, v_max: float, lateral_accel: float,
                 brake_accel: float) -> float:
    """Speed plan: the fastest speed from which the car can still brake (at ``brake_accel``) to the
    curve speed ``sqrt(lateral_accel / |curvature|)`` (clamped to v_min..v_max) of every point ahead.

    ``curvature[i]`` is the centreline curvature ``distance[i]`` metres ahead. The plan reads the track
    only, never the car's speed."""
    k = np.abs(np.asarray(curvature, dtype=np.float64))
    d = np.maximum(np.asarray(distance, dtype=np.float64), 0.0)
    if k.shape != d.shape:
        raise ValueError(f"curvature has {k.size} values but distance has {d.size}")
    if not 0 < v_min <= v_max:
        raise ValueError(f"v_min={v_min}, v_max={v_max} must satisfy 0 < v_min <= v_max")
    if k.size == 0:
        return float(v_max)
    v_curve = np.clip(np.sqrt(lateral_accel / np.maximum(k, 1e-9)), v_min, v_max)
    return float(min(v_max, np.min(np.sqrt(v_curve ** 2 + 2.0 * brake_accel * d))))


def speed_command(speed: float, target: float, gain: float, accel_limit: float) -> float:
    """Proportional speed control: acceleration (m/s², + faster) towards ``target``, within ±accel_limit."""
    return max(-accel_limit, min(accel_limit, gain * (target - speed)))


def heading_up_affine(car_px: tuple[float, float], heading: float, src_px_per_m: float, out_size: tuple[int, int],
                      out_px_per_m: float, car_at: tuple[float, float]) -> np.ndarray:
    """2×3 affine (for ``cv2.warpAffine``) from a north-up top-down render to a car-fixed, heading-up view.

    ``car_px`` is the car's pixel (column, row) in the source image drawn at ``src_px_per_m``; the output
    is ``out_size = (width, height)`` at ``out_px_per_m`` with the car at ``car_at`` (column, row) and
    pointing up, its right side to the right. Source rows grow with world y (highway-env's screen)."""
    k = out_px_per_m / src_px_per_m
    d = np.array([math.cos(heading), math.sin(heading)])  # forward, source pixel axes
    r = np.array([-math.sin(heading), math.cos(heading)])  # right
    p0 = np.asarray(car_px, dtype=np.float64)
    rot = np.stack([k * r, -k * d])  # out = car_at + rot @ (src - car_px)
    return np.column_stack([rot, np.asarray(car_at, dtype=np.float64) - rot @ p0])


__all__ = ["curvature_profile", "heading_up_affine", "pursuit_curvature", "rear_axle", "speed_command",
           "steering_for_curvature", "target_speed", "to_car_frame", "wrap_angle"]
