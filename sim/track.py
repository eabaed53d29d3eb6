"""Procedural closed tracks: a dense centreline with arc length, heading and curvature, a fast signed
cross-track query, and rasters of lateral distance and arc length for the renderer.

World frame: metres, ``x`` east, ``y`` north, angles counter-clockwise from ``+x`` in radians. A track is
driven in the direction of increasing arc length ``s``. The signed lateral offset is positive to the
LEFT of the centreline (seen in the driving direction), negative to the right.

A track is a deterministic function of ``(seed, split)``: ``split="train"`` and ``split="eval"`` draw from
disjoint random streams, so evaluation tracks are never seen in training. The road's width belongs to the
world variant (:mod:`.variant`); ``make_track`` takes it as an argument and defaults to the width of the
track's own variant (same seed and split). The geometry never depends on it: parts of a track that are far
apart along it keep the widest road's clearance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

log = logging.getLogger(__name__)

SPLITS = {"train": 0, "eval": 1}
SPACING = 0.05  # centreline sample spacing, metres
TEXEL = 0.02  # raster cell size, metres
MARGIN = 4.0  # raster margin around the centreline, metres
MIN_RADIUS = 1.0  # smallest centreline radius of curvature, metres (hairpins that need braking)
LANE_WIDTHS = (0.6, 1.2)  # range of road widths a variant draws from, metres
LANE_WIDTH_STREAM = 4  # random stream (of a variant's seed and split) that draws its road width


def split_rng(seed: int, split: str, stream: int = 0) -> np.random.Generator:
    """The random stream for ``seed`` of ``split`` (``train`` or ``eval``); ``stream`` separates uses."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    return np.random.default_rng([SPLITS[split], int(seed), stream])


@dataclass(frozen=True)
class Location:
    """Where a point is relative to the track."""

    index: int  # nearest centreline sample
    progress: float  # arc length of the projection onto the centreline, metres, in [0, length)
    lateral: float  # signed offset, metres, + left of the centreline
    heading: float  # centreline heading at the projection, radians
    curvature: float  # centreline curvature there, 1/m (+ turning left)


@dataclass
class Track:
    """A closed track. Arrays are per centreline sample (uniform spacing ``ds``)."""

    seed: int
    split: str
    lane_width: float
    xy: np.ndarray  # (N, 2) centreline points
    s: np.ndarray  # (N,) arc length at each point, metres
    heading: np.ndarray  # (N,) tangent direction, radians
    curvature: np.ndarray  # (N,) signed curvature, 1/m (+ = turning left)
    length: float
    origin: np.ndarray  # world (x, y) of raster cell (0, 0)'s corner
    texel: float
    nearest: np.ndarray = field(repr=False)  # (Hr, Wr) int32 nearest centreline index per raster cell
    lateral_raster: np.ndarray = field(repr=False)  # (Hr, Wr) float32 signed lateral distance, metres
    progress_raster: np.ndarray = field(repr=False)  # (Hr, Wr) float32 arc length of the projection

    @property
    def ds(self) -> float:
        return self.length / len(self.s)

    def world_to_cell(self, x, y):
        """Raster (row, col) of world points (row grows with y); not clipped."""
        col = (np.asarray(x) - self.origin[0]) / self.texel
        row = (np.asarray(y) - self.origin[1]) / self.texel
        return row, col

    def locate(self, x: float, y: float) -> Location:
        """Nearest centreline point to ``(x, y)``: progress, signed lateral offset, heading, curvature.

        O(1): the nearest-index raster gives a candidate, refined over its neighbours and projected onto
        the local tangent. Points off the raster are clamped to its border (they are far off the road).
        """
        h, w = self.nearest.shape
        row, col = self.world_to_cell(x, y)
        i0 = int(self.nearest[min(max(int(row), 0), h - 1), min(max(int(col), 0), w - 1)])
        n = len(self.s)
        cand = (i0 + np.arange(-6, 7)) % n
        d2 = (self.xy[cand, 0] - x) ** 2 + (self.xy[cand, 1] - y) ** 2
        i = int(cand[int(np.argmin(d2))])
        hd = float(self.heading[i])
        dx, dy = x - self.xy[i, 0], y - self.xy[i, 1]
        along = dx * np.cos(hd) + dy * np.sin(hd)
        lateral = -dx * np.sin(hd) + dy * np.cos(hd)
        progress = (float(self.s[i]) + along) % self.length
        return Location(i, progress, float(lateral), hd, float(self.curvature[i]))

    def point_at(self, progress: float) -> tuple[float, float, float]:
        """World ``(x, y, heading)`` of the centreline at arc length ``progress`` (wraps around)."""
        p = float(progress) % self.length
        i = int(p / self.ds) % len(self.s)
        j = (i + 1) % len(self.s)
        f = (p - self.s[i]) / self.ds
        x = self.xy[i, 0] + f * (self.xy[j, 0] - self.xy[i, 0])
        y = self.xy[i, 1] + f * (self.xy[j, 1] - self.xy[i, 1])
        return float(x), float(y), float(self.heading[i])

    def curvature_ahead(self, progress: float, distance: float) -> float:
        """Largest |curvature| over the next ``distance`` metres of track from ``progress``."""
        i = int((progress % self.length) / self.ds)
        k = max(1, int(distance / self.ds))
        idx = (i + np.arange(k)) % len(self.s)
        return float(np.abs(self.curvature[idx]).max())


def _closed_curve(rng: np.random.Generator, n: int = 4096) -> np.ndarray:
    """A smooth star-shaped closed curve: a circle with random low-order Fourier radius wobble."""
    r0 = rng.uniform(3.5, 8.5)
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    amp = rng.uniform(0.3, 0.6)
    r = np.ones(n)
    for k in range(2, 6):
        r += amp * rng.uniform(-1, 1) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = r0 * np.clip(r, 0.35, None)
    sx, sy = rng.uniform(0.8, 1.25), rng.uniform(0.8, 1.25)
    rot = rng.uniform(0, 2 * np.pi)
    x, y = sx * r * np.cos(theta), sy * r * np.sin(theta)
    return np.stack([x * np.cos(rot) - y * np.sin(rot), x * np.sin(rot) + y * np.cos(rot)], 1)


def _resample(curve: np.ndarray, spacing: float) -> tuple[np.ndarray, float]:
    """Resample a closed polyline to (almost exactly) uniform arc-length spacing."""
    seg = np.linalg.norm(np.diff(curve, axis=0, append=curve[:1]), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(cum[-1])
    n = int(round(length / spacing))
    s = np.arange(n) * (length / n)
    closed = np.vstack([curve, curve[:1]])
    return np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], 1), length


def _geometry(xy: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Heading and signed curvature of a uniformly sampled closed polyline (periodic differences)."""
    ds = length / len(xy)
    d = (np.roll(xy, -1, 0) - np.roll(xy, 1, 0)) / (2 * ds)
    heading = np.arctan2(d[:, 1], d[:, 0])
    dh = np.angle(np.exp(1j * (np.roll(heading, -1) - np.roll(heading, 1))))
    curv = dh / (2 * ds)
    k = np.ones(9) / 9  # light periodic smoothing of the numerical curvature
    curv = np.convolve(np.concatenate([curv[-4:], curv, curv[:4]]), k, mode="valid")
    return heading, curv


def _too_close(xy: np.ndarray, length: float, gap: float) -> bool:
    """True when two parts of the track more than 6 m apart along it come within ``gap`` metres."""
    step = max(1, int(0.25 / (length / len(xy))))
    p = xy[::step]
    s = np.arange(len(p)) * step * (length / len(xy))
    dist = np.linalg.norm(p[:, None] - p[None], axis=2)
    sep = np.abs(s[:, None] - s[None])
    sep = np.minimum(sep, length - sep)
    return bool((dist[sep > 6.0] < gap).any())


def _rasters(xy: np.ndarray, s: np.ndarray, heading: np.ndarray):
    """Nearest-index, signed lateral distance and arc-length rasters around the centreline."""
    origin = xy.min(0) - MARGIN
    size = np.ceil((xy.max(0) + MARGIN - origin) / TEXEL).astype(int)
    w, h = int(size[0]), int(size[1])
    # centreline samples drawn densely as zero pixels, each remembering its sample index
    sub = 4
    fine = np.arange(len(xy) * sub) / sub
    i0 = np.floor(fine).astype(int) % len(xy)
    i1 = (i0 + 1) % len(xy)
    f = (fine - np.floor(fine))[:, None]
    pts = xy[i0] * (1 - f) + xy[i1] * f
    cols = np.clip(((pts[:, 0] - origin[0]) / TEXEL).astype(int), 0, w - 1)
    rows = np.clip(((pts[:, 1] - origin[1]) / TEXEL).astype(int), 0, h - 1)
    src = np.full((h, w), 255, np.uint8)
    src[rows, cols] = 0
    owner = np.full((h, w), -1, np.int32)
    owner[rows, cols] = np.where(f[:, 0] < 0.5, i0, i1)
    _, labels = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    zr, zc = np.nonzero(src == 0)  # labels number zero pixels in row-major scan order, from 1
    label_owner = np.zeros(len(zr) + 1, np.int32)
    label_owner[labels[zr, zc]] = owner[zr, zc]
    nearest = label_owner[labels]
    gy = (np.arange(h, dtype=np.float32)[:, None] + 0.5) * TEXEL + origin[1]
    gx = (np.arange(w, dtype=np.float32)[None, :] + 0.5) * TEXEL + origin[0]
    c, sn = np.cos(heading).astype(np.float32), np.sin(heading).astype(np.float32)
    dx = gx - xy[nearest, 0].astype(np.float32)
    dy = gy - xy[nearest, 1].astype(np.float32)
    lateral = -dx * sn[nearest] + dy * c[nearest]
    progress = s[nearest].astype(np.float32) + dx * c[nearest] + dy * sn[nearest]
    return origin, nearest, lateral.astype(np.float32), progress.astype(np.float32)


def draw_lane_width(seed: int, split: str) -> float:
    """The road width of variant ``seed`` of ``split``, metres."""
    return float(split_rng(seed, split, LANE_WIDTH_STREAM).uniform(*LANE_WIDTHS))


def make_track(seed: int, split: str = "train", lane_width: float | None = None) -> Track:
    """Build the track for ``seed`` of ``split`` (deterministic; about 0.1–0.3 s). ``lane_width`` (metres)
    defaults to that of the track's own variant, :func:`draw_lane_width` ``(seed, split)``."""
    lane_width = draw_lane_width(seed, split) if lane_width is None else float(lane_width)
    if not 0.2 <= lane_width <= 3.0:
        raise ValueError(f"lane_width={lane_width} must be in 0.2..3 m")
    rng = split_rng(seed, split)
    clockwise = bool(rng.integers(0, 2))
    for attempt in range(50):
        curve = _closed_curve(rng)
        if clockwise:
            curve = curve[::-1].copy()
        xy, length = _resample(curve, SPACING)
        heading, curv = _geometry(xy, length)
        ok_len = 20.0 <= length <= 60.0
        if ok_len and np.abs(curv).max() <= 1 / MIN_RADIUS and not _too_close(xy, length, LANE_WIDTHS[1] + 1.5):
            break
        log.debug("track %s/%d attempt %d rejected (length %.1f m)", split, seed, attempt, length)
    else:
        raise RuntimeError(f"could not build a valid track for seed={seed} split={split}")
    s = np.arange(len(xy)) * (length / len(xy))
    origin, nearest, lateral, progress = _rasters(xy, s, heading)
    return Track(seed, split, lane_width, xy, s, heading, curv, length, origin, TEXEL, nearest, lateral, progress)
