"""The car's forward camera (mono or stereo) rendered by flat-ground projection.

Every pixel below the horizon is a ray that hits the flat ground at a fixed point in the CAR frame; those
points (and a mipmap level from each pixel's ground footprint) are computed once. A frame is then a
rotation and translation of those points by the car's pose and one gather from the scenery's packed
texture: a few vectorised numpy operations, far above 500 stereo frames/s at 94×168 on one core.
Rows above the horizon are a fixed sky gradient. A small per-frame pixel noise is drawn from a bank
seeded by ``seed``, so rendering is deterministic for a given seed and call sequence.

Car frame: ``X`` forward, ``Y`` left, ``Z`` up, origin at the rear axle centre on the ground. The camera
sits ``forward_m`` ahead of the rear axle, ``height_m`` above the ground, pitched down by ``pitch_deg``.
Stereo cameras sit ``baseline_m / 2`` to the left (``left`` image) and right (``right`` image).
Images are uint8 RGB, H×W×3, row 0 at the top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenery import LEVELS, NOISE, Scenery, make_scenery
from .track import Track

N_NOISE_FRAMES = 8


@dataclass(frozen=True)
class CameraSpec:
    """Camera geometry (same for every track, so models see a consistent view)."""

    height_m: float = 0.20
    pitch_deg: float = 20.0
    hfov_deg: float = 100.0
    forward_m: float = 0.20
    baseline_m: float = 0.12
    max_range_m: float = 30.0

    def __post_init__(self):
        if not 0.02 <= self.height_m <= 2.0:
            raise ValueError(f"height_m={self.height_m} must be in 0.02..2.0 m")
        if not 0.0 <= self.pitch_deg <= 60.0:
            raise ValueError(f"pitch_deg={self.pitch_deg} must be in 0..60 degrees")
        if not 30.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg={self.hfov_deg} must be in 30..150 degrees")
        if not 0.0 <= self.baseline_m <= 1.0:
            raise ValueError(f"baseline_m={self.baseline_m} must be in 0..1 m")


def _ground_rays(spec: CameraSpec, height: int, width: int, lateral: float):
    """Ground points (car frame, metres) of the pixels below the horizon, and the first ground row."""
    f = (width / 2) / np.tan(np.radians(spec.hfov_deg) / 2)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    th = np.radians(spec.pitch_deg)
    b = (np.arange(height) - cy) / f  # image-down direction per row
    a = (np.arange(width) - cx) / f  # image-right direction per column
    ray_x = np.cos(th) - b * np.sin(th)  # forward component per row
    ray_z = -b * np.cos(th) - np.sin(th)  # up component per row (< 0: looks at the ground)
    ground_rows = np.flatnonzero(ray_z < -1e-6)
    r0 = int(ground_rows[0]) if len(ground_rows) else height
    rx, rz = ray_x[r0:, None], ray_z[r0:, None]
    t = spec.height_m / -rz  # ray parameter at ground contact
    gx, gy = t * rx, t * -a[None, :]
    dist = np.hypot(gx, gy)
    scale = np.minimum(1.0, spec.max_range_m / np.maximum(dist, 1e-9))
    gx, gy = gx * scale + spec.forward_m, gy * scale + lateral
    # elevation of the sky rows above the horizon, as a fraction of 45 degrees
    elev = np.arctan2(ray_z[:r0], ray_x[:r0]) / (np.pi / 4)
    return r0, gx, gy, elev


def _levels(gx: np.ndarray, gy: np.ndarray, texel: float) -> np.ndarray:
    """Mipmap level per ground pixel from its ground footprint (geometric mean of row/column steps)."""
    def step(axis: int) -> np.ndarray:
        if gx.shape[axis] < 2:
            return np.full(gx.shape, texel)
        return np.hypot(np.gradient(gx, axis=axis), np.gradient(gy, axis=axis))

    foot = np.sqrt(np.maximum(step(0), 1e-9) * np.maximum(step(1), 1e-9))
    return np.clip(np.floor(np.log2(foot / texel) + 0.5), 0, LEVELS - 1).astype(np.int32)


class Renderer:
    """Renders the camera view(s) of one track at one resolution.

    >>> r = Renderer(track, height=94, width=168, stereo=True, seed=0)
    >>> left, right = r.render(x, y, yaw)
    """

    def __init__(self, track: Track, height: int = 94, width: int = 168, stereo: bool = False, seed: int = 0,
                 spec: CameraSpec | None = None, scenery: Scenery | None = None, noise: bool = True):
        if not (8 <= height <= 2048 and 8 <= width <= 2048):
            raise ValueError(f"height={height}, width={width} must each be in 8..2048 pixels")
        self.track, self.height, self.width, self.stereo = track, height, width, stereo
        self.spec = spec or CameraSpec()
        self.scenery = scenery or make_scenery(track)
        sc = self.scenery
        laterals = [self.spec.baseline_m / 2, -self.spec.baseline_m / 2] if stereo else [0.0]
        xs, ys, ls = [], [], []
        for lat in laterals:
            r0, gx, gy, elev = _ground_rays(self.spec, height, width, lat)
            xs.append(gx.ravel())
            ys.append(gy.ravel())
            ls.append(_levels(gx, gy, track.texel).ravel())
        self.r0 = r0
        lev = np.concatenate(ls)
        self._xt = (np.concatenate(xs) / track.texel).astype(np.float32)  # ground points in texel units
        self._yt = (np.concatenate(ys) / track.texel).astype(np.float32)
        self._inv = (2.0 ** -lev).astype(np.float32)
        shapes = np.array(sc.shapes)
        self._cmax = (shapes[lev, 1] - 1).astype(np.int32)
        self._rmax = (shapes[lev, 0] - 1).astype(np.int32)
        self._stride = shapes[lev, 1].astype(np.int32)
        self._off = np.array(sc.offsets, np.int64)[lev].astype(np.int32)
        n = len(self._xt)
        self._buf = [np.empty(n, np.float32) for _ in range(3)]
        self._col, self._row = np.empty(n, np.int32), np.empty(n, np.int32)
        self._gathered = np.empty(n, np.uint32)
        ncam = len(laterals)
        self._out = np.zeros((ncam, height, width), np.uint32)
        if r0 > 0:
            sky = sc.sky(elev)  # (r0, 3)
            sky4 = np.concatenate([sky, np.zeros((r0, 1), np.uint8)], 1).view(np.uint32)[:, 0]
            self._out[:, :r0, :] = sky4[None, :, None]
        rng = np.random.default_rng([int(seed), height, width, ncam])
        if noise:
            bank = rng.integers(-NOISE, NOISE + 1, (N_NOISE_FRAMES, ncam, height, width, 1), dtype=np.int16)
            self._noise = np.repeat(bank, 3, axis=4).astype(np.uint8)  # wraps; texture is in [NOISE, 255-NOISE]
        else:
            self._noise = np.zeros((1, ncam, height, width, 3), np.uint8)
        self._rng = rng

    def render(self, x: float, y: float, yaw: float) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``left`` (or only) image and the ``right`` image (None when mono) at pose (x, y, yaw)."""
        tr = self.track
        c, s = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
        px = np.float32((x - tr.origin[0]) / tr.texel)
        py = np.float32((y - tr.origin[1]) / tr.texel)
        a, b, t = self._buf
        # column: X cos - Y sin + px; row: X sin + Y cos + py (texel units), then scaled to the level
        np.multiply(self._xt, c, out=a)
        np.multiply(self._yt, s, out=b)
        np.subtract(a, b, out=t)
        t += px
        t *= self._inv
        np.copyto(self._col, t, casting="unsafe")
        np.multiply(self._xt, s, out=a)
        np.multiply(self._yt, c, out=b)
        np.add(a, b, out=t)
        t += py
        t *= self._inv
        np.copyto(self._row, t, casting="unsafe")
        np.clip(self._col, 0, self._cmax, out=self._col)
        np.clip(self._row, 0, self._rmax, out=self._row)
        self._row *= self._stride
        self._row += self._col
        self._row += self._off
        np.take(self.scenery.levels, self._row, out=self._gathered)
        ncam = self._out.shape[0]
        self._out[:, self.r0:, :] = self._gathered.reshape(ncam, self.height - self.r0, self.width)
        k = int(self._rng.integers(len(self._noise)))
        rgb = np.add(self._out.view(np.uint8).reshape(ncam, self.height, self.width, 4)[..., :3], self._noise[k])
        return rgb[0], (rgb[1] if self.stereo else None)
