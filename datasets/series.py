"""Helpers over a run's per-frame series: frame rate, the speed series it carries, stretches in seconds."""

from __future__ import annotations

import numpy as np

# Extra series that measure the car's speed, in order of preference: the lab's wheel encoder, the sim's speed.
SPEED_SERIES = ("encoder", "speed")
DEFAULT_FPS = 30.0


def frame_rate(timestamp: np.ndarray, segment: np.ndarray | None = None) -> float:
    """Frames per second: 1 / the median interval between consecutive frames of one segment."""
    ts = np.asarray(timestamp, dtype=np.float64)
    dt = np.diff(ts)
    if segment is not None:
        dt = dt[np.asarray(segment)[1:] == np.asarray(segment)[:-1]]
    dt = dt[dt > 0]
    return float(1.0 / np.median(dt)) if dt.size else DEFAULT_FPS


def speed_series_name(extras: list[str] | tuple[str, ...]) -> str | None:
    """The name of the speed series a run carries (``encoder`` preferred), or None."""
    return next((name for name in SPEED_SERIES if name in extras), None)


def stored_speed_name(run_meta: dict) -> str | None:
    """The speed series of a stored run (from its ``extras`` metadata: per-frame scalars only), or None."""
    return speed_series_name([e["name"] for e in run_meta.get("extras", []) if not e["shape"]])


def long_stretches(mask: np.ndarray, segment: np.ndarray, timestamp: np.ndarray, min_seconds: float) -> np.ndarray:
    """Frames of maximal stretches of consecutive ``mask`` frames (within one segment) lasting >= ``min_seconds``.

    A stretch lasts from its first frame's timestamp to one frame interval after its last.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(len(mask), dtype=bool)
    step = 1.0 / frame_rate(timestamp, segment)
    for start, end in stretches(mask, segment):
        if stretch_seconds(timestamp, start, end, step) >= min_seconds:
            out[start:end] = True
    return out


def stretches(mask: np.ndarray, segment: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) frame ranges (end exclusive) of consecutive true frames, split at segment changes."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    seg = np.asarray(segment)
    edge = np.ones(len(mask) + 1, dtype=bool)  # a stretch may start or end before frame i
    edge[1:-1] = (mask[1:] != mask[:-1]) | (seg[1:] != seg[:-1])
    bounds = np.flatnonzero(edge)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if mask[a]]


def stretch_seconds(timestamp: np.ndarray, start: int, end: int, step: float) -> float:
    """Duration of frames ``start..end-1``: their time span plus one frame interval ``step``."""
    return float(timestamp[end - 1] - timestamp[start]) + step
