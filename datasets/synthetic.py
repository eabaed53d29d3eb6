"""Synthetic driving runs in the lab format, for tests, benchmarks and the no-data demo.

The picture encodes the label, so a model can learn it: a bright road stripe whose horizontal position
follows the steering (left of centre = steering left) over a textured background whose brightness
follows the throttle. State, throttle pauses and timestamp gaps are sprinkled in so validity masks have
something to reject. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .run_writer import write_run

FPS = 30.0


def _smooth_walk(rng: np.random.Generator, n: int, lo: float, hi: float, step: float) -> np.ndarray:
    x = np.empty(n)
    v = (lo + hi) / 2
    drift = 0.0
    for i in range(n):
        drift = 0.9 * drift + rng.normal(0, step)
        v = float(np.clip(v + drift, lo, hi))
        x[i] = v
    return x


def render_stripe_frames(steer: np.ndarray, motor: np.ndarray, height: int, width: int,
                         rng: np.random.Generator, shift: int = 0) -> np.ndarray:
    """Frames (N×H×W×3 uint8) with a stripe at a column set by ``steer`` and brightness by ``motor``."""
    n = len(steer)
    cols = np.arange(width)[None, :]
    centre = (steer[:, None] / 99.0) * (width - 1) + shift
    stripe = np.exp(-0.5 * ((cols - centre) / max(1.0, width / 24)) ** 2)  # N×W
    base = 40 + 80 * (np.clip(motor, 49, 99)[:, None] - 49) / 50  # N×1
    rows = np.linspace(0.6, 1.0, height)[None, :, None]  # darker at the top, like sky vs road
    img = base[:, :, None] * rows + 150 * stripe[:, None, :]  # N×H×W
    noise = rng.integers(0, 8, size=(n, height, width, 1))
    frames = np.clip(img[..., None] * np.array([0.9, 1.0, 0.8]) + noise, 0, 255)
    return frames.astype(np.uint8)


def synthetic_segments(seed: int, n_frames: int = 300, height: int = 94, width: int = 168,
                       stereo: bool = True, n_segments: int = 2, extras: bool = True) -> list[dict]:
    """Build ``n_segments`` segments totalling about ``n_frames`` frames."""
    rng = np.random.default_rng(seed)
    sizes = np.full(n_segments, n_frames // n_segments)
    sizes[: n_frames % n_segments] += 1
    segments, t0 = [], 100.0 + seed
    for n in sizes:
        n = int(n)
        steer = _smooth_walk(rng, n, 5, 94, 0.8)
        motor = _smooth_walk(rng, n, 54, 80, 0.3)
        state = np.ones(n)
        if n > 40:  # a stretch of "lock" state and a pause: frames the validity mask must reject
            a = int(rng.integers(0, n - 20))
            state[a : a + 8] = 2
            b = int(rng.integers(0, n - 20))
            motor[b : b + 6] = 49
        dt = np.full(n, 1 / FPS) + rng.normal(0, 0.002, n).clip(-0.01, 0.01)
        if n > 60:
            dt[int(rng.integers(20, n - 20))] = 0.25  # a dropped-frame gap
        t = t0 + np.cumsum(dt)
        t0 = t[-1] + 1.0
        seg = {
            "left": render_stripe_frames(steer, motor, height, width, rng),
            "steer": steer,
            "motor": motor,
            "state": state,
            "left_timestamp": t,
        }
        if stereo:
            seg["right"] = render_stripe_frames(steer, motor, height, width, rng, shift=-max(1, width // 40))
        if extras:
            seg["encoder"] = (motor - 49) / 10 + rng.normal(0, 0.05, n)
            seg["gyro"] = rng.normal(0, 1, (n, 3)).astype(np.float32)
        segments.append(seg)
    return segments


def write_synthetic_runs(out_dir: str | os.PathLike, n_runs: int, n_frames: int = 300, height: int = 94,
                         width: int = 168, stereo: bool = True, seed: int = 0) -> list[Path]:
    """Write ``n_runs`` synthetic runs ``run_000.h5``... into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modes = ("direct", "follow", "racing", "play", "furtive")
    paths = []
    for i in range(n_runs):
        labels = {m: int(m == modes[i % len(modes)]) for m in modes}
        segs = synthetic_segments(seed * 1000 + i, n_frames, height, width, stereo)
        paths.append(Path(write_run(out / f"run_{i:03d}.h5", segs, labels)))
    return paths
