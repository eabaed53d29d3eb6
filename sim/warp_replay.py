"""Closed-loop replay on recorded runs by viewpoint warping (a light DAVE-2 simulator, arXiv:1604.07316).

The human's recorded path is the reference. A virtual car starts on it; at each frame the recorded image
is warped (:mod:`driver.sim.warp`) to the virtual car's lateral offset ``d`` (m, + left) and heading
offset ``psi`` (rad, + left) relative to the human's pose at that frame, the controller steers, and the
virtual car moves for one frame interval with a kinematic bicycle model at the HUMAN's speed. Its pose
is then expressed relative to the human's pose at the next frame (the along-track difference, second order
in ``psi``, is dropped). When ``|d| > threshold_m`` (or ``|psi| > max_heading_deg``) an intervention is
counted, the virtual car is put back on the reference (``d = psi = 0``) and the controller is reset; each
costs 6 s in PilotNet's autonomy (:func:`driver.sim.closed_loop.autonomy_percent`).

The reference path: the run's ``pose_x``/``pose_y``/``pose_yaw`` extras when present (sim runs), else
integrated with the same bicycle model from the human's steering and speed (``speed`` extra in m/s, else
``encoder`` × ``encoder_m_per_unit``, else ``motor`` × ``max_speed_mps`` as a last resort). Limits:
``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from driver.datasets.store import Store
from driver.units import run_to_norm

from .closed_loop import autonomy_percent
from .replay_metrics import chunk_ids
from .warp import CameraModel, warp_view

log = logging.getLogger(__name__)

READ_BLOCK = 256


class Controller(Protocol):
    """``driver.policy.Policy`` fits; so does any object with these two methods."""

    def reset(self) -> None: ...

    def act(self, frame: np.ndarray, right: np.ndarray | None = None, mode: str | None = None) -> Any: ...


@dataclass
class WarpReplayConfig:
    """What to drive and how. ``runs`` empty = every run; ``camera`` None = the sim camera's geometry."""

    model: str
    data: str
    runs: list[str] = field(default_factory=list)
    threshold_m: float = 0.3  # |lateral offset| that counts as an intervention
    max_heading_deg: float = 30.0  # |heading offset| that counts as one too (the warp is meaningless beyond)
    camera: CameraModel | None = None
    baseline_m: float = 0.12  # closed loop: stereo camera spacing in m (stereo models only)
    mode: str | None = None  # None = from each run's labels
    wheelbase_m: float = 0.26  # closed loop: the virtual car's wheelbase in m
    max_steer_deg: float = 28.0  # road-wheel angle at full steering (normalised ±1)
    encoder_m_per_unit: float = 0.33  # metres per encoder unit (lab encoder ≈ wheel rev/s; ~0.105 m wheel)
    max_speed_mps: float = 3.0  # motor = 99 run units, used only when a run has no speed or encoder
    latency_frames: int = 0  # actuation latency: the command acts this many frames later
    penalty_s: float = 6.0  # closed loop: seconds each intervention costs in the autonomy score
    max_gap_s: float = 0.1
    out: str | None = None  # write report.json here when set

    def __post_init__(self):
        if not self.model:
            raise ValueError("model is empty: name a checkpoint")
        if not self.data:
            raise ValueError("data is empty: name a store made by driver ingest")
        checks = {"threshold_m": (0.01, 5.0), "max_heading_deg": (1.0, 90.0), "baseline_m": (0.0, 1.0),
                  "wheelbase_m": (0.05, 2.0), "max_steer_deg": (5.0, 45.0), "encoder_m_per_unit": (1e-6, 100.0),
                  "max_speed_mps": (0.1, 20.0), "latency_frames": (0, 100), "penalty_s": (0.0, 600.0),
                  "max_gap_s": (1e-3, 60.0)}
        for name, (lo, hi) in checks.items():
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"{name}={v} must be in {lo}..{hi}")


@dataclass
class Reference:
    """The human's path of one run: rear-axle pose and speed per frame."""

    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray  # m/s
    time_s: np.ndarray
    chunk: np.ndarray
    source: str  # "pose" or "integrated"
    speed_source: str  # "speed", "encoder", "pose" or "motor"


@dataclass
class WarpRunResult:
    run: str
    elapsed_s: float
    distance_m: float
    interventions: int
    d: np.ndarray  # (N,) lateral offset at each frame, metres
    psi: np.ndarray  # (N,) heading offset, radians
    steer: np.ndarray  # (N,) controller steering, normalised
    intervention_frames: list[int]
    valid_fraction: float  # mean share of warped pixels that came from inside the recorded frame
    reference: str = ""
    speed_source: str = ""
    penalty_s: float = 6.0

    @property
    def autonomy(self) -> float:
        return autonomy_percent(self.interventions, self.elapsed_s, self.penalty_s) if self.elapsed_s > 0 else 100.0

    def summary(self) -> dict:
        return {"autonomy_pct": round(self.autonomy, 2), "interventions": self.interventions,
                "interventions_per_km": round(self.interventions / max(self.distance_m / 1000, 1e-9), 2),
                "mean_abs_d_m": round(float(np.abs(self.d).mean()) if self.d.size else 0.0, 4),
                "max_abs_d_m": round(float(np.abs(self.d).max()) if self.d.size else 0.0, 4),
                "mean_abs_psi_deg": round(math.degrees(float(np.abs(self.psi).mean())) if self.psi.size else 0, 3),
                "elapsed_s": round(self.elapsed_s, 2), "distance_m": round(self.distance_m, 2),
                "warp_valid_fraction": round(self.valid_fraction, 4), "intervention_frames": self.intervention_frames,
                "reference": self.reference, "speed_source": self.speed_source}


@dataclass
class WarpReplayReport:
    per_run: dict[str, dict]
    overall: dict
    config: dict = field(default_factory=dict)
    results: dict[str, WarpRunResult] = field(default_factory=dict, repr=False)

    @property
    def autonomy(self) -> float:
        return float(self.overall["autonomy_pct"])

    @property
    def interventions(self) -> int:
        return int(self.overall["interventions"])

    def to_dict(self) -> dict:
        return {"overall": self.overall, "per_run": self.per_run, "config": self.config}


def _wrap(a: float) -> float:
    return math.atan2(math.sin(a), math.cos(a))


def _arc(x: float, y: float, yaw: float, v: float, delta: float, dt: float, wheelbase: float):
    """Exact kinematic-bicycle step along an arc (rear-axle pose; ``delta`` road-wheel angle, + left)."""
    w = v * math.tan(delta) / wheelbase
    if abs(w) < 1e-9:
        return x + v * dt * math.cos(yaw), y + v * dt * math.sin(yaw), yaw
    yaw2 = yaw + w * dt
    r = v / w
    return x + r * (math.sin(yaw2) - math.sin(yaw)), y - r * (math.cos(yaw2) - math.cos(yaw)), yaw2


def reference_path(store: Store, run: str, config: WarpReplayConfig) -> Reference:
    """The human's path (see module docstring for which source is used)."""
    extras = {e["name"] for e in store.run_meta(run).get("extras", [])}
    ts = store.series(run, "timestamp").astype(np.float64)
    chunk = chunk_ids(store.series(run, "segment"), ts, config.max_gap_s)
    n = len(ts)
    dt = np.diff(ts, append=ts[-1] if n else 0.0)
    has_pose = {"pose_x", "pose_y", "pose_yaw"} <= extras
    if "speed" in extras:
        speed, speed_src = store.series(run, "speed").astype(np.float64), "speed"
    elif "encoder" in extras:
        speed, speed_src = store.series(run, "encoder").astype(np.float64) * config.encoder_m_per_unit, "encoder"
    elif has_pose:
        x, y = store.series(run, "pose_x").astype(np.float64), store.series(run, "pose_y").astype(np.float64)
        step = np.hypot(np.diff(x), np.diff(y)) / np.maximum(np.diff(ts), 1e-6)
        speed, speed_src = np.append(step, step[-1] if step.size else 0.0), "pose"
    else:
        motor = np.asarray(run_to_norm(store.series(run, "motor").astype(np.float64)))
        speed, speed_src = np.clip(motor, 0, 1) * config.max_speed_mps, "motor"
        log.warning("run %s has no speed, encoder or pose: using motor × %.1f m/s as the speed", run,
                    config.max_speed_mps)
    if has_pose:
        return Reference(store.series(run, "pose_x").astype(np.float64), store.series(run, "pose_y").astype(np.float64),
                         store.series(run, "pose_yaw").astype(np.float64), speed, ts - ts[0], chunk, "pose", speed_src)
    steer = np.asarray(run_to_norm(store.series(run, "steer").astype(np.float64)))
    x, y, yaw = np.zeros(n), np.zeros(n), np.zeros(n)
    max_steer = math.radians(config.max_steer_deg)
    for i in range(n - 1):
        step_dt = dt[i] if chunk[i + 1] == chunk[i] else 0.0
        x[i + 1], y[i + 1], yaw[i + 1] = _arc(x[i], y[i], yaw[i], float(speed[i]), -float(steer[i]) * max_steer,
                                              float(step_dt), config.wheelbase_m)
    return Reference(x, y, yaw, speed, ts - ts[0], chunk, "integrated", speed_src)


def _steer_of(action: Any) -> float:
    """Normalised steering from an ``Action`` (``steer_norm``), a ``(steer, motor)`` pair or a number."""
    if hasattr(action, "steer_norm"):
        return float(action.steer_norm)
    if isinstance(action, tuple | list):
        return float(action[0])
    return float(action)


def drive_reference(controller: Controller, frame_at, ref: Reference, config: WarpReplayConfig,
                    camera: CameraModel, stereo: bool = False, mode: str | None = None,
                    run: str = "") -> WarpRunResult:
    """The closed loop over one run. ``frame_at(i) -> (left, right|None)`` gives the recorded frames."""
    n = len(ref.x)
    cams = ((replace(camera, lateral_m=camera.lateral_m + config.baseline_m / 2),
             replace(camera, lateral_m=camera.lateral_m - config.baseline_m / 2)) if stereo else (camera, None))
    max_steer, max_psi = math.radians(config.max_steer_deg), math.radians(config.max_heading_deg)
    d_log, psi_log, steer_log = np.zeros(n), np.zeros(n), np.zeros(n)
    events: list[int] = []
    elapsed = distance = valid_sum = 0.0
    d = psi = 0.0
    pending: list[float] = []
    for i in range(n):
        if i == 0 or ref.chunk[i] != ref.chunk[i - 1]:
            d = psi = 0.0
            pending = []
            controller.reset()
        left, right = frame_at(i)
        wl = warp_view(left, cams[0], d, psi)
        wr = warp_view(right, cams[1], d, psi).image if stereo and right is not None else None
        valid_sum += wl.valid_fraction
        steer = _steer_of(controller.act(wl.image, right=wr, mode=mode))
        d_log[i], psi_log[i], steer_log[i] = d, psi, steer
        pending.append(steer)
        applied = pending.pop(0) if len(pending) > config.latency_frames else float(run_to_norm(49.0))
        if i == n - 1 or ref.chunk[i + 1] != ref.chunk[i]:
            continue
        dt = float(ref.time_s[i + 1] - ref.time_s[i])
        v = float(ref.speed[i])
        c, s = math.cos(ref.yaw[i]), math.sin(ref.yaw[i])
        xv, yv, yawv = ref.x[i] - s * d, ref.y[i] + c * d, ref.yaw[i] + psi
        xv, yv, yawv = _arc(xv, yv, yawv, v, -float(np.clip(applied, -1, 1)) * max_steer, dt, config.wheelbase_m)
        c2, s2 = math.cos(ref.yaw[i + 1]), math.sin(ref.yaw[i + 1])
        d = -(xv - ref.x[i + 1]) * s2 + (yv - ref.y[i + 1]) * c2
        psi = _wrap(yawv - ref.yaw[i + 1])
        elapsed += dt
        distance += abs(v) * dt
        if abs(d) > config.threshold_m or abs(psi) > max_psi:
            events.append(i + 1)
            d = psi = 0.0
            pending = []
            controller.reset()
    result = WarpRunResult(run, elapsed, distance, len(events), d_log, psi_log, steer_log, events,
                           valid_sum / max(n, 1), ref.source, ref.speed_source, config.penalty_s)
    log.info("warp replay %s: %.1f s, %d interventions, autonomy %.1f%%, mean |d| %.3f m", run, elapsed,
             len(events), result.autonomy, float(np.abs(d_log).mean()) if n else 0.0)
    return result


class _BlockReader:
    """Sequential frame access in blocks (frames of a long run need not fit in memory)."""

    def __init__(self, frames):
        self.frames, self.start, self.block = frames, -1, None

    def __call__(self, i: int) -> np.ndarray:
        if self.block is None or not self.start <= i < self.start + len(self.block):
            self.start = i
            self.block = self.frames.read(i, min(READ_BLOCK, len(self.frames) - i))
        return self.block[i - self.start]


def warp_replay(config: WarpReplayConfig, policy: Controller | None = None) -> WarpReplayReport:
    """Drive ``config.model`` (or ``policy``) over the store's runs by viewpoint warping; score autonomy."""
    from driver.policy import load_policy

    from .replay import open_runs, resolve_mode

    store, runs = open_runs(config.data, config.runs)
    policy = policy or load_policy(config.model, threads=1)
    camera = config.camera or CameraModel()
    cameras = tuple(getattr(policy, "cameras", ("left",)))
    stereo = "right" in cameras and "left" in cameras
    results: dict[str, WarpRunResult] = {}
    for run in runs:
        meta = store.run_meta(run)
        mode = resolve_mode(policy, meta.get("labels", {}), config.mode) if hasattr(policy, "modes") else config.mode
        left = _BlockReader(store.frames(run, "right" if cameras == ("right",) else "left"))
        right = _BlockReader(store.frames(run, "right")) if stereo else None
        ref = reference_path(store, run, config)
        results[run] = drive_reference(policy, lambda i, lf=left, rf=right: (lf(i), rf(i) if rf else None), ref,
                                       config, camera, stereo, mode, run)
    report = _report(results, config)
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "warp_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


def _report(results: dict[str, WarpRunResult], config: WarpReplayConfig) -> WarpReplayReport:
    rs = list(results.values())
    elapsed, dist = sum(r.elapsed_s for r in rs), sum(r.distance_m for r in rs)
    inter = sum(r.interventions for r in rs)
    d_all = np.concatenate([r.d for r in rs]) if rs else np.zeros(0)
    overall = {"autonomy_pct": round(autonomy_percent(inter, elapsed, config.penalty_s), 2) if elapsed > 0 else 100.0,
               "interventions": inter, "interventions_per_km": round(inter / max(dist / 1000, 1e-9), 2),
               "mean_abs_d_m": round(float(np.abs(d_all).mean()) if d_all.size else 0.0, 4),
               "elapsed_s": round(elapsed, 2), "distance_m": round(dist, 2), "runs": len(rs),
               "threshold_m": config.threshold_m}
    cfg = asdict(config)
    cfg["camera"] = asdict(config.camera or CameraModel())
    return WarpReplayReport({k: r.summary() for k, r in results.items()}, overall, cfg, results)


def format_warp_report(report: WarpReplayReport) -> str:
    """A plain-text table: one row per run and the total."""
    head = f"{'run':<24} {'autonomy %':>10} {'interv.':>7} {'/km':>8} {'mean |d| m':>10} {'seconds':>8} {'ref':>10}"
    lines = [f"closed-loop warp replay (intervention at |d| > {report.overall['threshold_m']} m)", head,
             "-" * len(head)]
    for name, m in report.per_run.items():
        lines.append(f"{name[:24]:<24} {m['autonomy_pct']:>10.1f} {m['interventions']:>7} "
                     f"{m['interventions_per_km']:>8.1f} {m['mean_abs_d_m']:>10.3f} {m['elapsed_s']:>8.1f} "
                     f"{m['reference']:>10}")
    o = report.overall
    lines += ["-" * len(head), f"{'ALL':<24} {o['autonomy_pct']:>10.1f} {o['interventions']:>7} "
              f"{o['interventions_per_km']:>8.1f} {o['mean_abs_d_m']:>10.3f} {o['elapsed_s']:>8.1f}"]
    return "\n".join(lines)
