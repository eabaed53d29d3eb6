"""How a world variant looks: colours, textures, lighting, shadows and distractors, baked over a track's
geometry into a top-down ground texture (with mipmap levels) and a sky gradient that the camera samples.

The look (:class:`Style`) is a deterministic function of the variant's ``(seed, split)`` (by default the
track's own). Whatever the draw, the road stays clearly separated from the ground around it (a minimum
contrast), is bounded by solid edge lines and carries a dashed centre line, so the visual task stays
learnable.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .track import Track, split_rng

LEVELS = 5  # mipmap levels: texel, 2×, 4×, 8×, 16× texel
NOISE = 4  # per-frame pixel noise amplitude; texture values are kept in [NOISE, 255 - NOISE]


@dataclass(frozen=True)
class Style:
    """The colours and lighting of one variant (RGB in 0..255 before lighting)."""

    seed: int  # the variant's seed and split: its textures and distractors are drawn from them
    split: str
    road: tuple[float, float, float]
    ground: tuple[float, float, float]
    edge_line: tuple[float, float, float]
    centre_line: tuple[float, float, float]
    line_width: float  # metres
    dash_period: float  # metres; the centre line is painted half of each period
    road_grain: float  # amplitude of road texture
    ground_grain: float  # amplitude of ground texture
    brightness: float
    cast: tuple[float, float, float]  # per-channel light colour
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    n_distractors: int
    n_shadows: int  # soft shadows across road and ground (trees, buildings)
    shadow_depth: float  # light left in a shadow's core (0.45..0.8)
    n_stains: int  # darker or lighter patches on the road surface
    seam_period: float  # metres between seams across the road (concrete slabs); 0 = none


_GROUNDS = [  # (base RGB, jitter): grass, dry grass, dirt, blue carpet, dark rubber mat
    ((60, 120, 45), 25), ((120, 125, 60), 20), ((125, 95, 65), 20), ((50, 70, 120), 20), ((45, 45, 50), 10),
]


def _luma(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def make_style(seed: int, split: str) -> Style:
    """Draw a variant's look; the road differs from the ground by at least 45 grey levels or a clear hue."""
    rng = split_rng(seed, split, stream=1)
    base, jit = _GROUNDS[int(rng.integers(len(_GROUNDS)))]
    ground = tuple(float(np.clip(b + rng.uniform(-jit, jit), 10, 240)) for b in base)
    for _ in range(100):
        g = rng.uniform(50, 175)
        tint = rng.uniform(-8, 8, 3)
        road = tuple(float(np.clip(g + t, 10, 240)) for t in tint)
        colour_gap = np.abs(np.subtract(road, ground)).max()
        if abs(_luma(road) - _luma(ground)) >= 45 or (colour_gap >= 70 and abs(_luma(road) - _luma(ground)) >= 25):
            break
    white = (float(rng.uniform(215, 250)),) * 3
    yellow = (float(rng.uniform(220, 250)), float(rng.uniform(180, 215)), float(rng.uniform(20, 70)))
    edge = white if rng.random() < 0.75 else yellow
    centre = yellow if rng.random() < 0.5 else white
    cast = tuple(float(c) for c in rng.uniform(0.88, 1.12, 3))
    sky_top = (float(rng.uniform(60, 130)), float(rng.uniform(110, 170)), float(rng.uniform(180, 240)))
    sky_horizon = tuple(float(min(245.0, c + rng.uniform(30, 70))) for c in sky_top)
    n_shadows = int(rng.integers(0, 7)) if rng.random() < 0.6 else 0
    shadow_depth = float(rng.uniform(0.45, 0.8))
    n_stains = int(rng.integers(0, 25))
    seam_period = float(rng.uniform(0.8, 2.0)) if rng.random() < 0.35 else 0.0
    return Style(seed=int(seed), split=split, road=road, ground=ground, edge_line=edge, centre_line=centre,
                 line_width=float(rng.uniform(0.035, 0.06)), dash_period=float(rng.uniform(0.25, 0.5)),
                 road_grain=float(rng.uniform(3, 12)), ground_grain=float(rng.uniform(8, 25)),
                 brightness=float(rng.uniform(0.7, 1.2)), cast=cast, sky_top=sky_top, sky_horizon=sky_horizon,
                 n_distractors=int(rng.integers(10, 60)), n_shadows=n_shadows, shadow_depth=shadow_depth,
                 n_stains=n_stains, seam_period=seam_period)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Zero-mean noise in about [-1, 1] with features of ``cell`` texels (cubic-upsampled random grid)."""
    h, w = shape
    small = rng.uniform(-1, 1, (h // cell + 2, w // cell + 2)).astype(np.float32)
    big = cv2.resize(small, ((w // cell + 2) * cell, (h // cell + 2) * cell), interpolation=cv2.INTER_CUBIC)
    return big[:h, :w]


def _distractors(rng: np.random.Generator, track: Track, img: np.ndarray, n: int) -> None:
    """Paint cones (small orange/red discs) and patches (blotches) on the ground, never on the road."""
    h, w = track.lateral_raster.shape
    placed = 0
    for _ in range(n * 10):
        if placed >= n:
            break
        r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
        lat = abs(float(track.lateral_raster[r, c]))
        cone = rng.random() < 0.5
        size = rng.uniform(0.05, 0.1) if cone else rng.uniform(0.15, 0.8)
        if lat < track.lane_width / 2 + size + 0.1 or lat > 3.0:
            continue
        radius = max(1, int(size / track.texel))
        if cone:
            colour = (float(rng.uniform(220, 250)), float(rng.uniform(60, 120)), float(rng.uniform(0, 40)))
            cv2.circle(img, (c, r), radius, colour, -1, lineType=cv2.LINE_AA)
            cv2.circle(img, (c, r), max(1, radius // 2), (235.0, 235.0, 235.0), -1, lineType=cv2.LINE_AA)
        else:
            shade = rng.uniform(0.55, 1.4)
            colour = tuple(float(np.clip(v * shade, 0, 255)) for v in img[r, c])
            axes = (radius, max(1, int(radius * rng.uniform(0.3, 1.0))))
            cv2.ellipse(img, (c, r), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, lineType=cv2.LINE_AA)
        placed += 1


def _blob(shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int], angle: float, blur: int):
    """A soft filled ellipse in a local window: (row slice, col slice, weights in 0..1)."""
    h, w = shape
    pad = max(axes) + blur + 1
    (r, c) = centre
    r0, r1, c0, c1 = max(0, r - pad), min(h, r + pad + 1), max(0, c - pad), min(w, c + pad + 1)
    mask = np.zeros((r1 - r0, c1 - c0), np.float32)
    cv2.ellipse(mask, (c - c0, r - r0), axes, angle, 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
    if blur > 1:
        mask = cv2.GaussianBlur(mask, (blur | 1, blur | 1), 0)
    return slice(r0, r1), slice(c0, c1), mask


def _road_marks(rng: np.random.Generator, track: Track, style: Style, road: np.ndarray) -> None:
    """Stains (soft blotches, 0.75..1.25 of the road's shade) and slab seams on the road texture, in place."""
    shape = track.lateral_raster.shape
    placed = 0
    for _ in range(style.n_stains * 20):
        if placed >= style.n_stains:
            break
        r, c = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        if abs(float(track.lateral_raster[r, c])) > track.lane_width / 2:
            continue
        radius = max(2, int(rng.uniform(0.05, 0.3) / track.texel))
        rows, cols, mask = _blob(shape, (r, c), (radius, max(1, int(radius * rng.uniform(0.3, 1.0)))),
                                 float(rng.uniform(0, 180)), 3)
        road[rows, cols] *= 1 + (float(rng.uniform(0.75, 1.25)) - 1) * mask[..., None]
        placed += 1
    if style.seam_period > 0:
        phase = track.progress_raster % style.seam_period
        seam = np.clip(1.0 - np.abs(phase - style.seam_period / 2) / track.texel, 0, 1)[..., None]
        road *= 1 - 0.25 * seam


def _shadows(rng: np.random.Generator, track: Track, style: Style) -> np.ndarray:
    """Light map (1 = full light) with ``n_shadows`` soft shadows within 1 m of the road."""
    shape = track.lateral_raster.shape
    light = np.ones(shape, np.float32)
    placed = 0
    for _ in range(style.n_shadows * 30):
        if placed >= style.n_shadows:
            break
        r, c = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        if abs(float(track.lateral_raster[r, c])) > track.lane_width / 2 + 1.0:
            continue
        size = rng.uniform(0.4, 2.0) / track.texel
        axes = (int(size), max(1, int(size * rng.uniform(0.25, 0.8))))
        rows, cols, mask = _blob(shape, (r, c), axes, float(rng.uniform(0, 180)), max(3, int(size * 0.3)))
        np.minimum(light[rows, cols], 1 - (1 - style.shadow_depth) * mask, out=light[rows, cols])
        placed += 1
    return light


@dataclass
class Scenery:
    """A track's baked look: packed RGBA mipmaps (uint32, flat) and the sky colours per row fraction."""

    style: Style
    levels: np.ndarray  # all mipmap levels, flattened and concatenated, uint32 RGBA (A unused)
    shapes: list[tuple[int, int]]  # (rows, cols) per level
    offsets: list[int]  # start of each level in ``levels``
    top_down: np.ndarray  # (H, W, 3) uint8 RGB level 0, row 0 = smallest y (for maps and media)

    def sky(self, fraction: np.ndarray) -> np.ndarray:
        """Sky RGB (uint8) for rows at ``fraction`` of the way from the horizon (0) to the zenith (1)."""
        f = np.clip(fraction, 0, 1)[:, None] ** 0.7
        rgb = np.array(self.style.sky_horizon) * (1 - f) + np.array(self.style.sky_top) * f
        rgb = rgb * np.array(self.style.cast) * self.style.brightness
        return np.clip(rgb, NOISE, 255 - NOISE).astype(np.uint8)


def make_scenery(track: Track, style: Style | None = None) -> Scenery:
    """Bake the ground texture of ``track`` in ``style`` (default: the track's own variant's look);
    deterministic per track and style."""
    style = style or make_style(track.seed, track.split)
    rng = split_rng(style.seed, style.split, stream=2)
    lat = np.abs(track.lateral_raster)
    shape = lat.shape
    half = track.lane_width / 2
    # base colours with multi-scale grain
    ground = np.array(style.ground, np.float32) * (1 + 0.12 * _smooth_noise(rng, shape, 40))[..., None]
    ground += style.ground_grain * (0.6 * _smooth_noise(rng, shape, 6) + 0.4 * _smooth_noise(rng, shape, 2))[..., None]
    road = np.array(style.road, np.float32) + style.road_grain * (
        0.5 * _smooth_noise(rng, shape, 25) + 0.5 * _smooth_noise(rng, shape, 2))[..., None]
    _road_marks(rng, track, style, road)
    # soft-edged masks (a texel of anti-aliasing) for road, edge lines and the dashed centre line
    texel = track.texel

    def band(inner_dist):  # 1 inside, 0 outside, linear over one texel
        return np.clip(0.5 - inner_dist / texel, 0, 1)[..., None]

    on_road = band(lat - half)
    edge = band(np.abs(lat - (half - style.line_width * 0.5 - 0.02)) - style.line_width / 2)
    dash_on = ((track.progress_raster % style.dash_period) < style.dash_period / 2)[..., None]
    centre = band(lat - style.line_width / 2) * dash_on
    img = ground * (1 - on_road) + road * on_road
    img = img * (1 - edge) + np.array(style.edge_line, np.float32) * edge
    img = img * (1 - centre) + np.array(style.centre_line, np.float32) * centre
    _distractors(rng, track, img, style.n_distractors)
    # lighting: global brightness, colour cast and a gentle large-scale illumination variation
    light = style.brightness * ((1 + 0.08 * _smooth_noise(rng, shape, 150)) * _shadows(rng, track, style))[..., None]
    img = img * light * np.array(style.cast, np.float32)
    rgb = np.clip(img, NOISE, 255 - NOISE).astype(np.uint8)
    levels, shapes, offsets, off = [], [], [], 0
    cur = rgb
    for _ in range(LEVELS):
        rgba = np.concatenate([cur, np.zeros((*cur.shape[:2], 1), np.uint8)], axis=2)
        levels.append(np.ascontiguousarray(rgba).view(np.uint32).reshape(-1))
        shapes.append(cur.shape[:2])
        offsets.append(off)
        off += cur.shape[0] * cur.shape[1]
        cur = cv2.resize(cur, ((cur.shape[1] + 1) // 2, (cur.shape[0] + 1) // 2), interpolation=cv2.INTER_AREA)
    return Scenery(style, np.concatenate(levels), shapes, offsets, rgb)
