"""Record the scripted expert driving highway-env's racetrack as lab-format HDF5 runs (docs/run-format.md)
that ``driver ingest`` reads as is.

    python bench/extsim/record.py --out /tmp/extsim/runs/train --runs 24 --seconds 60 --split train
    python bench/extsim/record.py --out /tmp/extsim/runs/test --runs 6 --seconds 60 --split test

Run ``i`` of a split uses seed ``SPLIT_SEEDS[split] + seed + i``: the seed picks where the car starts
(any lane of the circuit, position, small offset, heading error and speed) and the DART noise, so the
``test`` runs are drives the training never saw. The car EXECUTES the expert's command plus DART noise;
the run RECORDS the clean command. When the car leaves the road (highway-env terminates), the segment
ends, the car is put back on the closest lane centre a little further on, and a new segment starts one
second later. A run that is already on disk is kept (delete it, or pass ``--force``, to record it again);
every run is written atomically, so a killed recording loses at most the run in progress.

What a run holds (one camera, ``left``): frames ``height × width`` RGB uint8 (the heading-up camera of
``env.Camera``); ``steer`` = the expert's steering in run units (0..99, 49 straight, + right);
``motor`` = its longitudinal command in run units: highway-env commands ACCELERATION, so 49 = coasting
(no acceleration), above 49 accelerating, below 49 braking; ``state`` = 1 (a human-equivalent driver);
``left_timestamp`` at the simulator's rate (``fps``); extras, at the frame: ``encoder`` (speed, m/s),
``cte`` (m, + right of the lane centre), ``heading_error`` (rad, + right), ``progress`` (m along the track
since the run's start), and for the step that follows it: ``sim_reward`` (highway-env's reward),
``executed_steer`` / ``executed_accel`` (the command applied, normalised, noise included). Labels
``racing`` and ``sim``; the file attribute ``extsim`` holds the settings as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench.extsim` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.extsim.env import RacetrackSim, SimConfig, sim_version
from bench.extsim.expert import Expert, ExpertSpec
from driver.datasets.run_writer import write_run
from driver.sim.expert import DartNoise, NoiseSpec
from driver.units import norm_to_run

log = logging.getLogger("extsim.record")

SPLIT_SEEDS = {"train": 0, "test": 1_000_000}  # test drives never share a seed with training drives
LABELS = {"racing": 1, "sim": 1}
EXTRAS = ("encoder", "cte", "heading_error", "progress", "sim_reward", "executed_steer", "executed_accel")
SEGMENT_GAP_S = 1.0  # time between segments, seconds
_interrupts: list[int] = []  # SIGINTs received while recording, turned into KeyboardInterrupt between steps


@contextmanager
def interrupt_between_steps():
    """Ctrl-C (SIGINT) stops a recording between two simulator steps, never inside one.

    The handler only notes the signal and the step loop raises ``KeyboardInterrupt``: Python's own handler raises
    wherever the main thread happens to be, and an interrupt raised inside a finaliser or a C callback is printed
    and dropped ("Exception ignored"), so the recording would go on. A run is written only whole, so stopping
    between steps loses at most the run being driven. Outside the main thread signals cannot be handled: no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupts.clear()
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: _interrupts.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupts.clear()


def raise_if_interrupted() -> None:
    if _interrupts:
        raise KeyboardInterrupt(f"signal {_interrupts[0]} while recording")


@dataclass
class RecordConfig:
    out: str
    runs: int = 24
    seconds: float = 60.0
    split: str = "train"
    seed: int = 0
    noise: float = 0.15  # DART steering noise std, normalised (0 = the clean expert: no noise at all)
    accel_noise: float = 0.2  # DART acceleration noise std, normalised
    steer_lag: float = 0.0  # the expert's steering lag, s (ExpertSpec.steer_lag_s; 0 = the benchmark's expert)
    force: bool = False
    sim: SimConfig = SimConfig()

    def __post_init__(self):
        if not 1 <= self.runs <= 10000:
            raise ValueError(f"runs={self.runs} must be in 1..10000")
        if not 1.0 <= self.seconds <= 3600.0:
            raise ValueError(f"seconds={self.seconds} must be in 1..3600")
        if self.split not in SPLIT_SEEDS:
            raise ValueError(f"split={self.split!r} must be one of {', '.join(SPLIT_SEEDS)}")
        if not 0 <= self.seed < 1_000_000:
            raise ValueError(f"seed={self.seed} must be in 0..999999")
        if not 0.0 <= self.noise <= 1.0 or not 0.0 <= self.accel_noise <= 1.0:
            raise ValueError(f"noise={self.noise}, accel_noise={self.accel_noise} must be in 0..1 (normalised)")
        if not 0.0 <= self.steer_lag <= 2.0:
            raise ValueError(f"steer_lag={self.steer_lag} must be in 0..2 s")

    def run_seed(self, index: int) -> int:
        return SPLIT_SEEDS[self.split] + self.seed + index

    def run_path(self, index: int) -> Path:
        return Path(self.out) / f"extsim_{self.split}_{self.run_seed(index):07d}.h5"


def frame_times(start_s: float, n: int, fps: float) -> np.ndarray:
    """Timestamps (s) of ``n`` frames from ``start_s`` at the simulator's rate."""
    if fps <= 0:
        raise ValueError(f"fps={fps} must be > 0")
    return start_s + np.arange(n, dtype=np.float64) / fps


def commands_to_run_units(steer: np.ndarray, accel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """highway-env's normalised (steer, accel) in [-1, 1] to run units (0..99, 49 neutral) through the
    one unit mapping, ``driver.units`` (steer -1 → 0 full left, +1 → 99 full right; accel 0 → 49
    coasting, -1 → 0 full braking, +1 → 99 full acceleration)."""
    s = np.clip(np.asarray(steer, dtype=np.float64), -1.0, 1.0)
    a = np.clip(np.asarray(accel, dtype=np.float64), -1.0, 1.0)
    return norm_to_run(s).astype(np.float32), norm_to_run(a).astype(np.float32)


def segment_arrays(frames: list[np.ndarray], series: dict[str, list[float]], start_s: float, fps: float) -> dict:
    """One run segment for ``write_run``: stacked frames, run-unit commands, state 1, timestamps, extras.

    ``series`` holds per-frame ``steer`` and ``accel`` (the clean normalised expert commands) and every
    name in ``EXTRAS``."""
    n = len(frames)
    missing = [k for k in ("steer", "accel", *EXTRAS) if k not in series]
    if missing:
        raise ValueError(f"segment series {missing} are missing")
    bad = {k: len(v) for k, v in series.items() if len(v) != n}
    if bad:
        raise ValueError(f"segment has {n} frames but series lengths {bad}")
    steer, motor = commands_to_run_units(series["steer"], series["accel"])
    seg = {"left": np.stack(frames).astype(np.uint8), "steer": steer, "motor": motor,
           "state": np.ones(n, np.float32), "left_timestamp": frame_times(start_s, n, fps)}
    seg.update({k: np.asarray(series[k], dtype=np.float32) for k in EXTRAS})
    return seg


def record_run(config: RecordConfig, index: int, sim: RacetrackSim, expert: Expert, on_step=None) -> Path:
    """Record run ``index`` of ``config`` with ``sim`` and write it; returns its path."""
    seed = config.run_seed(index)
    fps = config.sim.fps
    rng = np.random.default_rng([seed, 1])
    sim.place_random(rng)
    expert.reset()
    spec = NoiseSpec(scale=config.noise, motor_fraction=config.accel_noise / config.noise if config.noise else 0.0)
    dart = DartNoise(spec, fps, seed=seed)
    n_total = max(1, int(round(config.seconds * fps)))
    segments, frames, series = [], [], {k: [] for k in ("steer", "accel", *EXTRAS)}
    t_start = t = 1000.0
    progress, resets = 0.0, 0
    for _ in range(n_total):
        st, v = sim.lane_state(), sim.vehicle
        speed = float(v.speed)  # at the frame, before the step
        frames.append(sim.frame())
        steer, accel = expert.command(sim)
        ns, na = dart.sample()
        ex_s, ex_a = float(np.clip(steer + ns, -1, 1)), float(np.clip(accel + na, -1, 1))
        before = np.array(v.position, dtype=np.float64)
        reward, terminated = sim.step(ex_s, ex_a)
        for k, x in (("steer", steer), ("accel", accel), ("encoder", speed), ("cte", st.lateral),
                     ("heading_error", st.heading_error), ("progress", progress), ("sim_reward", reward),
                     ("executed_steer", ex_s), ("executed_accel", ex_a)):
            series[k].append(float(x))
        progress += float(np.dot(np.asarray(v.position) - before, [np.cos(st.lane_heading), np.sin(st.lane_heading)]))
        t += 1.0 / fps
        raise_if_interrupted()
        if on_step is not None:
            on_step()
        if terminated:  # off the road: end the segment, put the car back, start again after a gap
            segments.append(segment_arrays(frames, series, t_start, fps))
            frames, series = [], {k: [] for k in series}
            sim.recover()
            dart.reset()
            expert.reset()
            resets += 1
            t += SEGMENT_GAP_S
            t_start = t
    if frames:
        segments.append(segment_arrays(frames, series, t_start, fps))
    meta = {"simulator": "highway-env", "version": sim_version(),
            "seed": seed, "split": config.split, "noise": config.noise, "accel_noise": config.accel_noise,
            "off_road_resets": resets, "sim": asdict(config.sim), "expert": asdict(expert.spec)}
    path = config.run_path(index)
    write_run(path, segments, labels=LABELS, attrs={"extsim": json.dumps(meta)})
    log.info("wrote %s: %d frames in %d segments (%d off-road resets)", path, sum(len(s["steer"]) for s in segments),
             len(segments), resets)
    return path


def recorded_steer_lag(path: Path) -> float:
    """The expert's steering lag (s) a run was recorded with (0 for runs recorded before the knob existed)."""
    with h5py.File(path, "r") as f:
        meta = json.loads(f.attrs["extsim"]) if "extsim" in f.attrs else {}
    return float(meta.get("expert", {}).get("steer_lag_s", 0.0))


def record_runs(config: RecordConfig, progress: bool = False) -> list[Path]:
    """Record every run of ``config`` that is not on disk yet (all with ``force``); returns all run paths.
    Raises if a run on disk was recorded with another expert steering lag than ``config`` asks for."""
    Path(config.out).mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(config.runs) if config.force or not config.run_path(i).exists()]
    for i in sorted(set(range(config.runs)) - set(todo)):
        lag = recorded_steer_lag(config.run_path(i))
        if lag != config.steer_lag:
            raise ValueError(f"{config.run_path(i)} was recorded with the expert's steering lag {lag} s, not "
                             f"{config.steer_lag} s: record into another folder (or pass --force)")
    if todo:
        sim, expert = RacetrackSim(config.sim), Expert(ExpertSpec(steer_lag_s=config.steer_lag))
        per_run = max(1, int(round(config.seconds * config.sim.fps)))
        with interrupt_between_steps(), closing(sim):
            if progress and sys.stderr.isatty():
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                with Progress(TextColumn(f"[bold]record {config.split}"), BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), transient=True) as bar:
                    task = bar.add_task("frames", total=len(todo) * per_run)
                    for i in todo:
                        record_run(config, i, sim, expert, on_step=lambda: bar.advance(task))
            else:
                for i in todo:
                    record_run(config, i, sim, expert)
    return [config.run_path(i) for i in range(config.runs)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the .h5 runs (created if missing)")
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of driving per run")
    ap.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="train")
    ap.add_argument("--seed", type=int, default=0, help="first seed within the split")
    ap.add_argument("--noise", type=float, default=0.15, help="DART steering noise std (normalised)")
    ap.add_argument("--accel-noise", type=float, default=0.2, help="DART acceleration noise std (normalised)")
    ap.add_argument("--steer-lag", type=float, default=0.0,
                    help="time constant (s) of a lag on the expert's steering, as a human's hands (0 = none)")
    ap.add_argument("--track", default="racetrack-v1")
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))
    ap.add_argument("--force", action="store_true", help="record runs again even if on disk")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = RecordConfig(out=a.out, runs=a.runs, seconds=a.seconds, split=a.split, seed=a.seed, noise=a.noise,
                              accel_noise=a.accel_noise, steer_lag=a.steer_lag, force=a.force,
                              sim=SimConfig(track=a.track, fps=a.fps, height=a.size[0], width=a.size[1]))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = record_runs(config, progress=True)
    print(f"{len(paths)} runs in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
