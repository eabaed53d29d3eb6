"""Closed-loop evaluation: a controller drives the car from pixels through held-out worlds, and each drive is
scored (:mod:`.scoring`): PilotNet's autonomy, pace against the clean expert on the same world, lap times,
interventions by cause, corner vs straight speed.

An intervention happens when the car's rear axle is more than ``cte_threshold`` metres from the centre
line (default: half the road width, i.e. the axle has left the road; ``slid`` when the tyres slid within
``slide_window_s`` before), when it turns to face backwards (heading error over 100°), or when it has
stopped (moved less than 0.1 m in ``stall_s``). The intervention is counted, the car is put back on the
centre line ``reset_ahead_m`` further along, aligned with the lane, at its current speed or the expert's
planned speed there if that is lower (so a car that slid off is not thrown into the same corner too fast
again), and ``controller.reset()`` is called. Elapsed time is simulated driving time.

A controller is any object with ``reset()`` and ``act(left, right) -> (steer, motor)`` taking uint8
H×W×3 RGB images (``right`` is None for mono) and returning normalised commands (steer + = right, motor
in [-1, 1]: with the dynamic car + = drive force, - = brake, then reverse once stopped). If ``act`` has
a ``speed`` parameter it also gets the wheel speed an encoder would measure (m/s, >= 0), the run
format's ``encoder`` series. A privileged controller may define ``bind(track, car)``, called at the
start of each world (``ExpertController`` uses it), and ``uses_pixels = False`` to skip rendering.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from driver.progress import Progress

from .car import CAR_MODELS, make_car
from .expert import DartNoise, Expert, ExpertSpec, NoiseSpec
from .media import write_closed_loop_media
from .scoring import ClosedLoopResult, EpisodeResult, autonomy_percent, count_interventions
from .track import SPLITS, Track
from .variant import World, make_world

log = logging.getLogger(__name__)

__all__ = ["ClosedLoopConfig", "ClosedLoopResult", "EpisodeResult", "ExpertController", "autonomy_percent",
           "count_interventions", "drive_closed_loop", "drive_world", "write_closed_loop_media"]

WRONG_WAY_RAD = math.radians(100.0)


class Controller(Protocol):
    def reset(self) -> None: ...

    def act(self, left: np.ndarray, right: np.ndarray | None) -> tuple[float, float]: ...


def _seeds(value: int | list[int]) -> list[int]:
    return list(range(value)) if isinstance(value, int) else [int(s) for s in value]


@dataclass
class ClosedLoopConfig:
    """What to drive and how. ``tracks``: a count n (seeds 0..n-1) or a list of track seeds of ``split``.
    ``variants``: None = each track in its own variant; else a count or list of variant seeds of
    ``variant_split`` (default: ``split``), paired with the tracks in turn (track i, variant i mod len)."""

    tracks: int | list[int] = 3
    split: str = "eval"
    variants: int | list[int] | None = None
    variant_split: str | None = None
    car: str = "dynamic"  # dynamic | kinematic
    laps: float = 1.0
    fps: float = 30.0
    height: int = 94
    width: int = 168
    stereo: bool = False
    cte_threshold: float | None = None  # metres; None = half the road width of each world
    max_seconds: float = 120.0  # per world
    reset_ahead_m: float = 0.5
    intervention_s: float = 6.0
    stall_s: float = 5.0
    slide_window_s: float = 0.5  # leaving the road this soon after sliding counts as "slid"
    corner_curvature: float = 0.25  # 1/m: steps at |curvature| >= this are "corner"
    reference: bool = True  # also drive the clean expert on each world, for pace
    video_frames: int = 300  # camera frames kept per world for the MP4 (0 = none)
    seed: int = 0  # render-noise seed

    def __post_init__(self):
        for name in ("tracks", "variants"):
            v = getattr(self, name)
            if v is None and name == "variants":
                continue
            if isinstance(v, int):
                if not 1 <= v <= 10000:
                    raise ValueError(f"{name}={v} must be in 1..10000 (or a list of seeds)")
            elif not v or any(int(s) < 0 for s in v):
                raise ValueError(f"{name}={v} must be a non-empty list of seeds >= 0")
        for name in ("split", "variant_split"):
            v = getattr(self, name)
            if (v is not None or name == "split") and v not in SPLITS:
                raise ValueError(f"{name}={v!r} must be one of {', '.join(SPLITS)}")
        if self.car not in CAR_MODELS:
            raise ValueError(f"car={self.car!r} must be one of {', '.join(CAR_MODELS)}")
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
        if not 0 <= self.slide_window_s <= 10:
            raise ValueError(f"slide_window_s={self.slide_window_s} must be in 0..10 s")
        if not 0 < self.corner_curvature <= 10:
            raise ValueError(f"corner_curvature={self.corner_curvature} must be in (0, 10] 1/m")
        if self.video_frames < 0:
            raise ValueError(f"video_frames={self.video_frames} must be >= 0")

    @property
    def track_seeds(self) -> list[int]:
        return _seeds(self.tracks)

    def worlds(self) -> list[tuple[int, int | None]]:
        """(track seed, variant seed or None for the track's own) per world driven, in order."""
        tracks = self.track_seeds
        if self.variants is None:
            return [(t, None) for t in tracks]
        variants = _seeds(self.variants)
        return [(t, variants[i % len(variants)]) for i, t in enumerate(tracks)]


class ExpertController:
    """The expert as a controller (it ignores the pixels and reads the car's state through ``bind``)."""

    uses_pixels = False

    def __init__(self, noise: float = 0.0, spec: ExpertSpec | None = None, fps: float = 30.0, seed: int = 0):
        self.noise_spec, self.spec, self.fps, self.seed = NoiseSpec(scale=noise), spec, fps, seed
        self.expert: Expert | None = None
        self.car = None
        self.noise = DartNoise(self.noise_spec, fps, seed)

    def bind(self, track: Track, car) -> None:
        self.expert, self.car = Expert(track, car.spec, self.spec), car

    def reset(self) -> None:
        self.noise.reset()

    def act(self, left: np.ndarray | None, right: np.ndarray | None) -> tuple[float, float]:
        if self.expert is None or self.car is None:
            raise RuntimeError("ExpertController needs bind(track, car) first (drive_closed_loop calls it)")
        steer, motor = self.expert.command(self.car.state)
        ns, nm = self.noise.sample(self.car.state.speed)
        return steer + ns, motor + nm


def _takes_speed(controller) -> bool:
    try:
        return "speed" in inspect.signature(controller.act).parameters
    except (TypeError, ValueError):
        return False


def drive_world(controller: Controller, world: World, config: ClosedLoopConfig, render_seed: int = 0,
                video_frames: int | None = None) -> EpisodeResult:
    """Drive ``controller`` on one world for ``config.laps`` laps (or ``max_seconds``); no reference."""
    track = world.track
    frames_wanted = config.video_frames if video_frames is None else video_frames
    pixels = getattr(controller, "uses_pixels", True) or frames_wanted > 0
    renderer = world.renderer(config.height, config.width, config.stereo, seed=render_seed) if pixels else None
    car = make_car(config.car)
    plan = Expert(track, car.spec).plan  # reset speeds; the plan per step, for the intervention details
    max_steer, wheelbase = car.spec.max_steer_rad, car.spec.wheelbase_m
    x, y, yaw = track.point_at(0.0)
    car.reset(x, y, yaw)
    if hasattr(controller, "bind"):
        controller.bind(track, car)
    controller.reset()
    takes_speed = _takes_speed(controller)
    dt = 1.0 / config.fps
    thr = track.lane_width / 2 if config.cte_threshold is None else config.cte_threshold
    n_max = int(round(config.max_seconds * config.fps))
    goal = config.laps * track.length
    rows: list[tuple] = []
    events, causes, frames, lap_times, event_steps = [], [], [], [], []
    position, driven, odometer, last_p = 0.0, 0.0, 0.0, track.locate(x, y).progress
    stall_n, moved_window = max(1, int(config.stall_s * config.fps)), []
    slide_n, since_slide = max(1, int(round(config.slide_window_s * config.fps))), 10**9
    steps, last_lap_t = 0, 0.0
    while steps < n_max and position < goal:
        st = car.state
        left = right = None
        if renderer is not None:
            left, right = renderer.render(st.x, st.y, st.yaw)
            if len(frames) < frames_wanted:
                frames.append(left if right is None else np.hstack([left, right]))
        if takes_speed:
            steer, motor = controller.act(left, right, speed=abs(st.speed))
        else:
            steer, motor = controller.act(left, right)
        px, py = st.x, st.y
        car.step(float(steer), float(motor), dt)
        steps += 1
        step_len = math.hypot(st.x - px, st.y - py)
        odometer += step_len
        loc = track.locate(st.x, st.y)
        dp = (loc.progress - last_p + track.length / 2) % track.length - track.length / 2
        position += dp
        driven += dp
        last_p = loc.progress
        since_slide = 0 if st.sliding else since_slide + 1
        rows.append((st.x, st.y, st.yaw, loc.lateral, st.speed, float(steer), float(motor), loc.progress,
                     loc.curvature, st.sliding, st.speed * st.speed * math.tan(-st.steer * max_steer) / wheelbase,
                     plan.at(loc.progress)))
        moved_window.append(step_len)
        heading_err = math.atan2(math.sin(st.yaw - loc.heading), math.cos(st.yaw - loc.heading))
        cause = None
        if abs(loc.lateral) > thr:
            cause = "slid" if since_slide < slide_n else "off_road"
        elif abs(heading_err) > WRONG_WAY_RAD:
            cause = "wrong_way"
        elif len(moved_window) >= stall_n and sum(moved_window[-stall_n:]) < 0.1:
            cause = "stopped"
        if cause is not None:
            events.append((st.x, st.y))
            causes.append(cause)
            event_steps.append(steps - 1)
            ahead = loc.progress + config.reset_ahead_m
            nx, ny, nyaw = track.point_at(ahead)
            car.reset(nx, ny, nyaw, speed=min(max(st.speed, 0.0), plan.at(ahead)))
            last_p = track.locate(nx, ny).progress
            position += config.reset_ahead_m
            moved_window.clear()
            since_slide = 10**9
            controller.reset()
        while position >= (len(lap_times) + 1) * track.length:
            lap_times.append(steps * dt - last_lap_t)
            last_lap_t = steps * dt
    a = np.array(rows, dtype=np.float64).reshape(-1, 12)
    return EpisodeResult(
        track=track, world=world.name, threshold=thr, elapsed_s=steps * dt, distance_m=odometer,
        progress_m=driven, laps=position / track.length, lap_times=lap_times, path=a[:, 0:2], yaw=a[:, 2],
        cte=a[:, 3], speed=a[:, 4], steer=a[:, 5], motor=a[:, 6], position=a[:, 7], curvature=a[:, 8],
        sliding=a[:, 9].astype(bool), lateral_demand=a[:, 10], planned_speed=a[:, 11],
        intervention_xy=np.array(events, dtype=np.float64).reshape(-1, 2), intervention_causes=causes,
        intervention_steps=event_steps, grip_mps2=car.spec.grip_mps2, dt=dt, frames=frames,
        penalty_s=config.intervention_s, corner_curvature=config.corner_curvature)


def drive_closed_loop(controller: Controller, config: ClosedLoopConfig | None = None) -> ClosedLoopResult:
    """Drive ``controller`` on every world of ``config``; score it (with the expert's pace as reference)."""
    config = config or ClosedLoopConfig()
    episodes = []
    worlds = list(config.worlds())
    progress = Progress("sim drive", total=len(worlds), unit="track", tty=False)  # a line every 30 s
    for track_seed, variant_seed in worlds:
        world = make_world(track_seed, config.split, variant_seed, config.variant_split)
        ep = drive_world(controller, world, config, render_seed=config.seed * 100003 + track_seed)
        if config.reference:
            ep.reference = drive_world(ExpertController(fps=config.fps), world, config, video_frames=0)
        log.info("%s: %.1f s, %d interventions %s, autonomy %.1f%%, pace %s, %.2f laps, mean |cte| %.3f m",
                 world.name, ep.elapsed_s, ep.interventions, ep.causes, ep.autonomy,
                 "-" if ep.pace is None else f"{ep.pace:.2f}", ep.laps, ep.mean_abs_cte)
        episodes.append(ep)
        progress.update(len(episodes))
    return ClosedLoopResult(episodes, config.intervention_s)
