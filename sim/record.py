"""Record expert driving in the sim as lab-format HDF5 runs that ``driver ingest`` reads as is.

Each run drives one procedural track (seed ``config.seed + i`` of ``config.split``) in a world variant
(by default the track's own; see ``SimRecordConfig.variants``) with the expert and DART noise: the
EXECUTED command is the expert's plus correlated noise, the RECORDED ``steer``/``motor`` are the expert's
clean command at the state reached (``motor`` below 49 when the expert brakes). When the car passes
``reset_fraction`` of the half road width, the segment ends, the car is put back on the centre line (at
the planned speed there if it was faster) and a new segment starts one second later (so runs may have
several segments).

Labels: ``direct`` = 1, ``sim`` = 1. ``state`` = 1 (human). Extra series per frame: ``encoder`` (the wheel
speed a car's encoder measures, m/s, >= 0: see docs/sim.md for a real car's encoder), ``speed`` (m/s,
signed), ``cte`` (m, + left of centre), ``heading_error`` (rad, + pointing left of the lane direction),
``progress`` (m along the track), ``curvature`` (1/m at the projection, + left), ``pose_x``, ``pose_y``,
``pose_yaw`` (world, m and rad), ``sim_executed_steer`` and ``sim_executed_motor`` (normalised commands
actually applied), ``sim_target_speed`` (the expert's speed plan, m/s) and ``sim_sliding`` (1 while the
tyres are past their grip).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from driver.datasets.run_writer import write_run
from driver.progress import Progress
from driver.threads import apply_threads, check_threads
from driver.units import norm_to_run

from .car import CAR_MODELS, make_car
from .expert import DartNoise, Expert, NoiseSpec
from .track import SPLITS, split_rng
from .variant import make_world

log = logging.getLogger(__name__)

EXTRAS = ("encoder", "speed", "cte", "heading_error", "progress", "curvature", "pose_x", "pose_y", "pose_yaw",
          "sim_executed_steer", "sim_executed_motor", "sim_target_speed", "sim_sliding")


@dataclass
class SimRecordConfig:
    """What to record. Run ``i`` drives track ``seed + i`` of ``split`` for ``seconds``, in its own variant
    or, with ``variants`` (a count n = seeds 0..n-1, or a list), in variant ``variants[i % len]`` of
    ``variant_split`` (default: ``split``)."""

    out: str | Path  # folder for the .h5 runs
    runs: int = 4  # runs to record
    seconds: float = 60.0  # seconds per run
    fps: float = 30.0  # camera frame rate
    height: int = 94  # frame height in pixels
    width: int = 168  # frame width in pixels
    stereo: bool = False  # record a right camera too
    seed: int = 0  # run i drives track seed+i of the split
    noise: float = 0.15  # DART steering noise std, normalised units (0 = clean expert)
    motor_noise: float = -1.0  # DART throttle/brake noise std, normalised units (-1 = 0.25 x noise)
    surge_rate: float = 0.0  # throttle surges per second (0 = none): the car runs on at a raised motor for 0.5..1.5 s
    surge: float = 0.6  # surge size, normalised motor units (each 0.5..1x this); the labels stay the clean command
    split: str = "train"  # track split the runs drive
    variants: int | list[int] | None = None  # world variant seeds, paired with the tracks in turn (None: each track's
                                             # own)
    variant_split: str | None = None  # split of --variants (None: --split)
    car: str = "dynamic"  # car model: dynamic (force, brake, grip limit) or kinematic (motor = speed)
    reset_fraction: float = 0.9  # segment ends when |cte| > this × half the lane width
    progress: bool = False  # a progress bar on a terminal, else a progress line every 30 s
    threads: int = 0  # compute threads (0 = auto: physical cores, 1 on a busy machine)

    def variant_of(self, index: int) -> int | None:
        """Variant seed of run ``index`` (None: the track's own)."""
        if self.variants is None:
            return None
        seeds = list(range(self.variants)) if isinstance(self.variants, int) else [int(v) for v in self.variants]
        return seeds[index % len(seeds)]

    def __post_init__(self):
        check_threads(self.threads)
        if not 1 <= self.runs <= 100000:
            raise ValueError(f"runs={self.runs} must be in 1..100000")
        if not 0.1 <= self.seconds <= 36000:
            raise ValueError(f"seconds={self.seconds} must be in 0.1..36000")
        if not 10 < self.fps <= 240:
            raise ValueError(f"fps={self.fps} must be in (10, 240]: the validity mask rejects frames "
                             "more than 0.1 s apart")
        if not (8 <= self.height <= 2048 and 8 <= self.width <= 2048):
            raise ValueError(f"height={self.height}, width={self.width} must each be in 8..2048 pixels")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise={self.noise} must be in 0..1 (normalised steer units)")
        if self.motor_noise != -1.0 and not 0.0 <= self.motor_noise <= 1.0:
            raise ValueError(f"motor_noise={self.motor_noise} must be in 0..1 (normalised motor units), or -1 for "
                             "0.25 x noise")
        if not 0.0 <= self.surge_rate <= 2.0:
            raise ValueError(f"surge_rate={self.surge_rate} must be in 0..2 surges per second")
        if not 0.0 < self.surge <= 2.0:
            raise ValueError(f"surge={self.surge} must be in (0, 2] (normalised motor units)")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} must be one of {', '.join(SPLITS)}")
        if self.variant_split is not None and self.variant_split not in SPLITS:
            raise ValueError(f"variant_split={self.variant_split!r} must be one of {', '.join(SPLITS)}")
        if isinstance(self.variants, int) and not 1 <= self.variants <= 100000:
            raise ValueError(f"variants={self.variants} must be in 1..100000 (or a list of seeds)")
        if isinstance(self.variants, list | tuple) and (not self.variants or min(self.variants) < 0):
            raise ValueError(f"variants={self.variants} must be a non-empty list of seeds >= 0")
        if self.car not in CAR_MODELS:
            raise ValueError(f"car={self.car!r} must be one of {', '.join(CAR_MODELS)}")
        if not 0.1 <= self.reset_fraction <= 2.0:
            raise ValueError(f"reset_fraction={self.reset_fraction} must be in 0.1..2.0")


class SegmentBuffer:
    """Preallocated buffers for one segment of ``n`` frames at most: frames, ``steer``/``motor`` (normalised;
    written in run units), ``state`` (lab code, 1 = human unless given) and the ``extras`` series."""

    def __init__(self, n: int, h: int, w: int, stereo: bool, extras: tuple[str, ...] = EXTRAS):
        self.n = 0
        self.left = np.empty((n, h, w, 3), np.uint8)
        self.right = np.empty((n, h, w, 3), np.uint8) if stereo else None
        self.extras = extras
        self.series = {k: np.empty(n, np.float64) for k in ("steer", "motor", "state", "left_timestamp", *extras)}

    def add(self, left, right, state: float = 1.0, **values) -> None:
        i = self.n
        self.left[i] = left
        if self.right is not None:
            self.right[i] = right
        self.series["state"][i] = state
        for k, v in values.items():
            self.series[k][i] = v
        self.n += 1

    def arrays(self) -> dict[str, np.ndarray]:
        n = self.n
        seg = {"left": self.left[:n]}
        if self.right is not None:
            seg["right"] = self.right[:n]
        s = self.series
        seg["steer"] = norm_to_run(s["steer"][:n]).astype(np.float32)
        seg["motor"] = norm_to_run(s["motor"][:n]).astype(np.float32)
        seg["state"] = s["state"][:n].astype(np.float32)
        seg["left_timestamp"] = s["left_timestamp"][:n]
        seg.update({k: s[k][:n].astype(np.float32) for k in self.extras})
        if "sim_sliding" in seg:
            seg["sim_sliding"] = s["sim_sliding"][:n].astype(np.uint8)
        return seg


def record_run(config: SimRecordConfig, index: int, on_step=None) -> Path:
    """Record run ``index`` of ``config`` and write it; returns its path."""
    track_seed = config.seed + index
    world = make_world(track_seed, config.split, config.variant_of(index), config.variant_split)
    track = world.track
    renderer = world.renderer(config.height, config.width, config.stereo, seed=track_seed)
    car = make_car(config.car)
    expert = Expert(track, car.spec)
    motor = None if config.motor_noise == -1.0 else config.motor_noise
    noise = NoiseSpec(scale=config.noise, motor_scale=motor, surge_rate_hz=config.surge_rate, surge_gain=config.surge)
    dart = DartNoise(noise, config.fps, seed=track_seed)
    rng = split_rng(track_seed, config.split, stream=3)
    start = float(rng.uniform(0, track.length))
    x, y, yaw = track.point_at(start)
    car.reset(x, y, yaw, speed=float(rng.uniform(0.0, expert.plan.at(start))))
    dt = 1.0 / config.fps
    n_total = max(1, int(round(config.seconds * config.fps)))
    limit = config.reset_fraction * track.lane_width / 2
    segments: list[dict] = []
    seg = SegmentBuffer(n_total, config.height, config.width, config.stereo)
    t = 1000.0  # seconds; segments are separated by a 1 s gap
    for _ in range(n_total):
        st = car.state
        loc = track.locate(st.x, st.y)
        left, right = renderer.render(st.x, st.y, st.yaw)
        steer, motor = expert.command(st)
        ns, nm = dart.sample(st.speed)
        ex_steer = min(1.0, max(-1.0, steer + ns))
        ex_motor = min(1.0, max(-1.0, motor + nm))
        heading_err = math.atan2(math.sin(st.yaw - loc.heading), math.cos(st.yaw - loc.heading))
        seg.add(left, right, steer=steer, motor=motor, left_timestamp=t, encoder=abs(st.speed), speed=st.speed,
                cte=loc.lateral, heading_error=heading_err, progress=loc.progress, curvature=loc.curvature,
                pose_x=st.x, pose_y=st.y, pose_yaw=st.yaw, sim_executed_steer=ex_steer, sim_executed_motor=ex_motor,
                sim_target_speed=expert.target_speed(st), sim_sliding=float(st.sliding))
        car.step(ex_steer, ex_motor, dt)
        t += dt
        if on_step is not None:
            on_step()
        after = track.locate(car.state.x, car.state.y)
        if abs(after.lateral) > limit:  # off the road: cut the segment and put the car back
            log.debug("run %d: reset at t=%.2f (cte %.2f m)", index, t, after.lateral)
            segments.append(seg.arrays())
            seg = SegmentBuffer(n_total, config.height, config.width, config.stereo)
            ahead = after.progress + 0.5
            nx, ny, nyaw = track.point_at(ahead)
            car.reset(nx, ny, nyaw, speed=min(max(car.state.speed, 0.0), expert.plan.at(ahead)))
            dart.reset()
            t += 1.0
    if seg.n:
        segments.append(seg.arrays())
    v = world.variant
    meta = {"track_seed": track_seed, "split": config.split, "world": world.name, "variant_seed": v.seed,
            "variant_split": v.split, "lane_width_m": track.lane_width, "track_length_m": track.length,
            "fps": config.fps, "noise": config.noise, "motor_noise": dart.spec.motor_std,
            "surge_rate_hz": config.surge_rate, "surge": config.surge, "car_model": config.car,
            "camera": asdict(v.camera), "car": asdict(car.spec), "expert": asdict(expert.spec)}
    own = (v.seed, v.split) == (track_seed, config.split)
    name = f"sim_{config.split}_{track_seed:05d}" + ("" if own else f"_v{v.split}{v.seed:05d}")
    out = Path(config.out) / f"{name}.h5"
    write_run(out, segments, labels={"direct": 1, "sim": 1}, attrs={"sim": json.dumps(meta)})
    log.info("wrote %s: %d frames in %d segments", out, sum(len(s["steer"]) for s in segments), len(segments))
    return out


def record_runs(config: SimRecordConfig) -> list[Path]:
    """Record ``config.runs`` runs into ``config.out`` (created if needed); returns the paths written."""
    apply_threads(config.threads)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    per_run = max(1, int(round(config.seconds * config.fps)))
    with Progress("sim record", total=config.runs * per_run, unit="frame", enabled=config.progress) as bar:
        return [record_run(config, i, on_step=lambda: bar.update(bar.done + 1)) for i in range(config.runs)]


__all__ = ["EXTRAS", "SegmentBuffer", "SimRecordConfig", "record_run", "record_runs"]
