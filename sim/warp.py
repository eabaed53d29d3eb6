"""Viewpoint warping: what the camera would have seen from a car displaced sideways and rotated.

Flat-ground model (as DAVE-2, Bojarski et al. 2016): every pixel below the horizon shows a point of the
flat ground, every pixel above it a point infinitely far away. For the ground,

    H_g(C) = K · Rᵀ · [e1  e2  −c]          maps car-frame ground points (X, Y, 1) to pixels of camera C

and the recorded view A is warped to the virtual view B with ``H = H_g(B) · H_g(A)⁻¹``; pixels above the
horizon (and ground farther than ``max_range_m``) use the rotation-only homography ``K · R_Bᵀ · R_A · K⁻¹``.

Frames: the car frame of the RECORDED car (``X`` forward, ``Y`` left, ``Z`` up, origin at the rear axle on
the ground), as in ``docs/sim.md``. The virtual car's rear axle sits at lateral offset ``d`` (metres,
+ left) with heading offset ``psi`` (radians, + counter-clockwise = turned left). Camera axes follow
OpenCV (x right, y down, z forward); square pixels, ``f = (W/2) / tan(HFOV/2)``, principal point at the
image centre ``((W−1)/2, (H−1)/2)`` — the same pinhole as ``sim/camera.py``.

Target pixels that map outside the recorded frame are filled by edge replication and reported in the
``valid`` mask of :func:`warp_view`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CameraModel:
    """A forward camera on the car. Defaults match the sim camera (``sim/camera.py`` ``CameraSpec``)."""

    height_m: float = 0.20  # above the ground
    pitch_deg: float = 20.0  # down from horizontal
    hfov_deg: float = 100.0  # horizontal field of view of the (undistorted) image
    forward_m: float = 0.20  # ahead of the rear axle
    lateral_m: float = 0.0  # left of the car's centre line (a stereo left camera: +baseline/2)
    max_range_m: float = 30.0  # ground farther than this is treated as infinitely far

    def __post_init__(self):
        if not 0.02 <= self.height_m <= 2.0:
            raise ValueError(f"height_m={self.height_m} must be in 0.02..2.0 m")
        if not 1.0 <= self.pitch_deg <= 60.0:
            raise ValueError(f"pitch_deg={self.pitch_deg} must be in 1..60 degrees (the horizon must be above "
                             "the bottom rows and the camera must see the ground)")
        if not 30.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg={self.hfov_deg} must be in 30..150 degrees")
        if not -1.0 <= self.forward_m <= 2.0:
            raise ValueError(f"forward_m={self.forward_m} must be in -1..2 m")
        if not -1.0 <= self.lateral_m <= 1.0:
            raise ValueError(f"lateral_m={self.lateral_m} must be in -1..1 m")
        if not 1.0 <= self.max_range_m <= 1000.0:
            raise ValueError(f"max_range_m={self.max_range_m} must be in 1..1000 m")

    def intrinsics(self, size: tuple[int, int]) -> np.ndarray:
        """3×3 K for an image of ``size = (height, width)`` pixels."""
        h, w = size
        f = (w / 2) / math.tan(math.radians(self.hfov_deg) / 2)
        return np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])

    def rotation(self, psi: float = 0.0) -> np.ndarray:
        """Camera axes (columns: x right, y down, z forward) in the recorded car frame, car turned by ``psi``."""
        th = math.radians(self.pitch_deg)
        cam = np.array([[0.0, -math.sin(th), math.cos(th)],
                        [-1.0, 0.0, 0.0],
                        [0.0, -math.cos(th), -math.sin(th)]])
        c, s = math.cos(psi), math.sin(psi)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ cam

    def centre(self, d: float = 0.0, psi: float = 0.0) -> np.ndarray:
        """Camera centre in the recorded car frame for a car at lateral offset ``d`` and heading ``psi``."""
        c, s = math.cos(psi), math.sin(psi)
        x, y = self.forward_m, self.lateral_m
        return np.array([c * x - s * y, d + s * x + c * y, self.height_m])

    def ground_rows_from(self, size: tuple[int, int]) -> int:
        """First image row whose ground point (image centre column) is nearer than ``max_range_m``.

        Rows are a property of the pitch only (a heading change is a yaw about the vertical axis and does
        not move the horizon)."""
        h, _ = size
        f = self.intrinsics(size)[0, 0]
        th = math.radians(self.pitch_deg)
        b = (np.arange(h) - (h - 1) / 2) / f
        ray_x, ray_z = math.cos(th) - b * math.sin(th), -b * math.cos(th) - math.sin(th)
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = (ray_z < 0) & (self.height_m * ray_x / -ray_z < self.max_range_m)
        rows = np.flatnonzero(ok)
        return int(rows[0]) if rows.size else h


def _ground_to_image(camera: CameraModel, d: float, psi: float, size: tuple[int, int]) -> np.ndarray:
    """H_g = K · Rᵀ · [e1 e2 −c]: ground (X, Y, 1) of the recorded car frame to pixels of the given camera."""
    k = camera.intrinsics(size)
    r = camera.rotation(psi)
    c = camera.centre(d, psi)
    m = np.array([[1.0, 0.0, -c[0]], [0.0, 1.0, -c[1]], [0.0, 0.0, -c[2]]])
    return k @ r.T @ m


def ground_homography(camera: CameraModel, d: float, psi: float, size: tuple[int, int]) -> np.ndarray:
    """3×3 homography taking pixels of the recorded view to the view from offset ``d`` (m, + left) and
    heading ``psi`` (rad, + left), valid for points on the flat ground. ``size = (height, width)``."""
    h_a = _ground_to_image(camera, 0.0, 0.0, size)
    h_b = _ground_to_image(camera, d, psi, size)
    hm = h_b @ np.linalg.inv(h_a)
    return hm / hm[2, 2]


def sky_homography(camera: CameraModel, psi: float, size: tuple[int, int]) -> np.ndarray:
    """3×3 homography for points at infinity (above the horizon): ``K · R_Bᵀ · R_A · K⁻¹``."""
    k = camera.intrinsics(size)
    hm = k @ camera.rotation(psi).T @ camera.rotation(0.0) @ np.linalg.inv(k)
    return hm / hm[2, 2]


def warp_frame(frame: np.ndarray, H: np.ndarray, sky_H: np.ndarray | None = None, ground_from_row: int = 0,
               border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Warp ``frame`` (H×W×C) with ``H`` (source → target pixels) by ``cv2.warpPerspective``; rows above
    ``ground_from_row`` of the target use ``sky_H`` instead when given. Pixels from outside the source are
    filled by ``border`` (edge replication by default)."""
    h, w = frame.shape[:2]
    out = cv2.warpPerspective(frame, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)
    if sky_H is not None and ground_from_row > 0:
        r = min(ground_from_row, h)
        sky = cv2.warpPerspective(frame, sky_H, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)
        out[:r] = sky[:r]
    return out


@dataclass
class WarpResult:
    image: np.ndarray  # the warped frame, same shape and dtype as the input
    valid: np.ndarray  # (H, W) bool: target pixels that come from inside the recorded frame

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean())


def warp_view(frame: np.ndarray, camera: CameraModel, d: float, psi: float) -> WarpResult:
    """The recorded ``frame`` as seen from the virtual car at offset ``d`` (m, + left), heading ``psi``
    (rad, + left): ground homography below the horizon, rotation above it, edges replicated."""
    size = frame.shape[:2]
    if d == 0.0 and psi == 0.0:
        return WarpResult(frame.copy(), np.ones(size, bool))
    hg = ground_homography(camera, d, psi, size)
    hs = sky_homography(camera, psi, size)
    r0 = camera.ground_rows_from(size)
    image = warp_frame(frame, hg, hs, r0)
    ones = np.ones(size, np.uint8)
    valid = warp_frame(ones, hg, hs, r0, border=cv2.BORDER_CONSTANT).astype(bool)
    return WarpResult(image, valid)
