"""Closed-loop evaluation: a controller drives the car from pixels, and the run is scored with
PilotNet's autonomy metric (Bojarski et al. 2016, arXiv:1604.07316)::

    autonomy = (1 - interventions * 6 s / elapsed s) * 100

An intervention happens when the car's rear axle is more than ``cte_threshold`` metres from the centre
line (default: half the lane width of the track, i.e. the axle has left the road), when it turns to face
backwards (heading error over 100°), or when it has stalled (moved less than 0.1 m in ``stall_s``).
The intervention is counted, the car is put back on the centre line ``reset_ahead_m`` further along,
aligned with the lane and at its current speed, and ``controller.reset()`` is called. Elapsed time is
simulated driving time; the formula goes negative for controllers that need help more than every 6 s.

A controller is any object with ``reset()`` and ``act(left, right) -> (steer, motor)`` taking uint8
H×W×3 RGB images (``right`` is None for mono) and returning normalised commands (steer + = right,
motor 0 = stop, 1 = full forward). A privileged controller may also define ``bind(track, car)``,
called at the start of each track (``ExpertController`` uses it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .camera import Renderer
from .car import Car
from .expert import DartNoise, Expert, ExpertSpec, NoiseSpec
from .media import write_closed_loop_media
from .track import SPLITS, Track, make_track

log = logging.getLogger(__name__)

__all__ = ["ClosedLoopConfig", "ClosedLoopResult", "EpisodeResult", "ExpertController", "autonomy_percent",
           "count_interventions", "drive_closed_loop", "write_closed_loop_media"]

WRONG_WAY_RAD = math.radians(100.0)


class Controller(Protocol):
    def reset(self) -> None: ...

    def act(self, left: np.ndarray, right: np.ndarray | None) -> tuple[float, float]: ...


def autonomy_percent(interventions: int, elapsed_s: float, penalty_s: float = 6.0) -> float:
    """PilotNet's autonomy: ``(1 - interventions * penalty_s / elapsed_s) * 100`` (may be negative)."""
    if elapsed_s <= 0:
        raise ValueError(f"elapsed_s={elapsed_s} must be > 0")
    return (1.0 - interventions * penalty_s / elapsed_s) * 100.0


def count_interventions(cte: np.ndarray, threshold: float) -> int:
    """Interventions in a cross-track sequence without resets: the times |cte| rises above ``threshold``."""
    over = np.abs(np.asarray(cte, dtype=np.float64)) > threshold
    return int(over[0]) + int(np.count_nonzero(over[1:] & ~over[:-1])) if len(over) else 0


@dataclass
class ClosedLoopConfig:
    """What to drive on and how. ``tracks``: a count n (seeds 0..n-1) or a list of track seeds."""

    tracks: int | list[int] = 3
    split: str = "eval"
    laps: float = 1.0
    fps: float = 30.0
    height: int = 94
    width: int = 168
    stereo: bool = False
    cte_threshold: float | None = None  # metres; None = half the lane width of each track
    max_seconds: float = 120.0  # per track
    reset_ahead_m: float = 0.5
    intervention_s: float = 6.0
    stall_s: float = 5.0
    video_frames: int = 300  # camera frames kept per track for the MP4 (0 = none)
    seed: int = 0  # render-noise seed

    def __post_init__(self):
        if isinstance(self.tracks, int):
            if not 1 <= self.tracks <= 10000:
                raise ValueError(f"tracks={self.tracks} must be in 1..10000 (or a list of seeds)")
        elif not self.tracks or any(int(s) < 0 for s in self.tracks):
            raise ValueError(f"tracks={self.tracks} must be a non-empty list of seeds >= 0")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} must be one of {', '.join(SPLITS)}")
        if not 0 < self.laps <= 100:
            raise ValueError(f"laps={self.laps} must be in (0, 100]")
        if not 1 <= self.fps <= 240:
            raise ValueError(f"fps={self.fps} must be in 1..240")
        if not (8 <= self.height <= 2048 and 8 <= self.width <= 2048):
            raise ValueError(f"height={self.height}, width={self.width} must each be in 8..2048")
        if self.cte_threshold is not None and not 0.05 <= self.cte_threshold <= 5.0:
            raise ValueError(f"cte_threshold={self.cte_threshold} must be in 0.05..5 m (or None)")
        if not 1 <= self.max_seconds <= 36000:
            raise ValueError(f"max_seconds={self.max_seconds} must be in 1..36000")
        if not 0 <= self.reset_ahead_m <= 10:
            raise ValueError(f"reset_ahead_m={self.reset_ahead_m} must be in 0..10 m")
        if self.video_frames < 0:
            raise ValueError(f"video_frames={self.video_frames} must be >= 0")

    @property
    def track_seeds(self) -> list[int]:
        return list(range(self.tracks)) if isinstance(self.tracks, int) else [int(s) for s in self.tracks]


@dataclass
class EpisodeResult:
    """One track driven by the controller."""

    track: Track
    threshold: float
    elapsed_s: float
    distance_m: float
    interventions: int
    laps: float
    path: np.ndarray  # (N, 2) rear-axle positions, one per step
    cte: np.ndarray  # (N,) signed cross-track error, metres, + left
    speed: np.ndarray  # (N,) m/s
    steer: np.ndarray  # (N,) commanded steer
    intervention_xy: np.ndarray  # (K, 2) where interventions happened
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # first video_frames camera images
    penalty_s: float = 6.0

    @property
    def autonomy(self) -> float:
        return autonomy_percent(self.interventions, self.elapsed_s, self.penalty_s)

    @property
    def mean_abs_cte(self) -> float:
        return float(np.abs(self.cte).mean()) if len(self.cte) else 0.0

    @property
    def mean_speed(self) -> float:
        return float(self.speed.mean()) if len(self.speed) else 0.0


@dataclass
class ClosedLoopResult:
    """All tracks together; totals pool the tracks (time-weighted)."""

    episodes: list[EpisodeResult]
    penalty_s: float = 6.0

    @property
    def elapsed_s(self) -> float:
        return float(sum(e.elapsed_s for e in self.episodes))

    @property
    def interventions(self) -> int:
        return int(sum(e.interventions for e in self.episodes))

    @property
    def distance_m(self) -> float:
        return float(sum(e.distance_m for e in self.episodes))

    @property
    def laps(self) -> float:
        return float(sum(e.laps for e in self.episodes))

    @property
    def autonomy(self) -> float:
        return autonomy_percent(self.interventions, self.elapsed_s, self.penalty_s)

    @property
    def interventions_per_km(self) -> float:
        return self.interventions / max(self.distance_m / 1000.0, 1e-9)

    @property
    def mean_abs_cte(self) -> float:
        return float(np.abs(np.concatenate([e.cte for e in self.episodes])).mean())

    @property
    def mean_speed(self) -> float:
        return float(np.concatenate([e.speed for e in self.episodes]).mean())

    def summary(self) -> dict:
        """Plain numbers, for logs, JSON and tables."""
        return {"autonomy_pct": round(self.autonomy, 2), "interventions": self.interventions,
                "interventions_per_km": round(self.interventions_per_km, 2),
                "mean_abs_cte_m": round(self.mean_abs_cte, 4), "mean_speed_mps": round(self.mean_speed, 3),
                "laps": round(self.laps, 2), "distance_m": round(self.distance_m, 1),
                "elapsed_s": round(self.elapsed_s, 1), "tracks": [e.track.seed for e in self.episodes]}


class ExpertController:
    """The expert as a controller (it ignores the pixels and reads the pose through ``bind``)."""

    def __init__(self, noise: float = 0.0, spec: ExpertSpec | None = None, fps: float = 30.0, seed: int = 0):
        self.noise_spec, self.spec, self.fps, self.seed = NoiseSpec(scale=noise), spec, fps, seed
        self.expert: Expert | None = None
        self.car: Car | None = None
        self.noise = DartNoise(self.noise_spec, fps, seed)

    def bind(self, track: Track, car: Car) -> None:
        self.expert, self.car = Expert(track, car.spec, self.spec), car

    def reset(self) -> None:
        self.noise.reset()

    def act(self, left: np.ndarray, right: np.ndarray | None) -> tuple[float, float]:
        if self.expert is None or self.car is None:
            raise RuntimeError("ExpertController needs bind(track, car) first (drive_closed_loop calls it)")
        steer, motor = self.expert.command(self.car.state)
        ns, nm = self.noise.sample()
        return steer + ns, motor + nm


def _drive_track(controller: Controller, config: ClosedLoopConfig, seed: int) -> EpisodeResult:
    track = make_track(seed, config.split)
    renderer = Renderer(track, config.height, config.width, config.stereo, seed=config.seed * 100003 + seed)
    car = Car()
    x, y, yaw = track.point_at(0.0)
    car.reset(x, y, yaw)
    if hasattr(controller, "bind"):
        controller.bind(track, car)
    controller.reset()
    dt = 1.0 / config.fps
    thr = track.lane_width / 2 if config.cte_threshold is None else config.cte_threshold
    n_max = int(round(config.max_seconds * config.fps))
    goal = config.laps * track.length
    path, cte, speed, steers, events, frames = [], [], [], [], [], []
    progressed, odometer, last_p = 0.0, 0.0, track.locate(x, y).progress
    stall_n, moved_window = max(1, int(config.stall_s * config.fps)), []
    steps = 0
    while steps < n_max and progressed < goal:
        st = car.state
        left, right = renderer.render(st.x, st.y, st.yaw)
        if len(frames) < config.video_frames:
            frames.append(left if right is None else np.hstack([left, right]))
        steer, motor = controller.act(left, right)
        px, py = st.x, st.y
        car.step(float(steer), float(motor), dt)
        steps += 1
        step_len = math.hypot(st.x - px, st.y - py)
        odometer += step_len
        loc = track.locate(st.x, st.y)
        dp = (loc.progress - last_p + track.length / 2) % track.length - track.length / 2
        progressed += dp
        last_p = loc.progress
        path.append((st.x, st.y))
        cte.append(loc.lateral)
        speed.append(st.speed)
        steers.append(float(steer))
        moved_window.append(step_len)
        heading_err = math.atan2(math.sin(st.yaw - loc.heading), math.cos(st.yaw - loc.heading))
        stalled = len(moved_window) >= stall_n and sum(moved_window[-stall_n:]) < 0.1
        if abs(loc.lateral) > thr or abs(heading_err) > WRONG_WAY_RAD or stalled:
            events.append((st.x, st.y))
            nx, ny, nyaw = track.point_at(loc.progress + config.reset_ahead_m)
            car.reset(nx, ny, nyaw, speed=max(st.speed, 0.0))
            last_p = track.locate(nx, ny).progress
            progressed += config.reset_ahead_m
            moved_window.clear()
            controller.reset()
    elapsed = steps * dt
    laps = progressed / track.length
    ep = EpisodeResult(track, thr, elapsed, odometer, len(events), laps, np.array(path).reshape(-1, 2),
                       np.array(cte), np.array(speed), np.array(steers), np.array(events).reshape(-1, 2), frames,
                       config.intervention_s)
    log.info("track %s/%d: %.1f s, %d interventions, autonomy %.1f%%, %.2f laps, mean |cte| %.3f m",
             config.split, seed, elapsed, ep.interventions, ep.autonomy, laps, ep.mean_abs_cte)
    return ep


def drive_closed_loop(controller: Controller, config: ClosedLoopConfig | None = None) -> ClosedLoopResult:
    """Drive ``controller`` for ``config.laps`` laps (or ``max_seconds``) on each track; score it."""
    config = config or ClosedLoopConfig()
    episodes = [_drive_track(controller, config, seed) for seed in config.track_seeds]
    return ClosedLoopResult(episodes, config.intervention_s)
