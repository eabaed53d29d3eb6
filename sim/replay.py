"""Open-loop replay: run a trained Policy over recorded runs, frame by frame, and score it against the human.

The policy sees each run IN ORDER through the same code the car uses (``Policy.act`` does the
preprocessing and carries recurrent state and the stacked previous frame). ``policy.reset()`` is called at
the start of every segment and after every timestamp gap of ``max_gap_s`` or more, as the car does after
a pause. Every frame is fed, so state flows as on the car; only frames whose stored ``valid`` mask is true
are scored. Metrics are defined in :mod:`driver.sim.replay_metrics` and ``docs/evaluation.md``::

    report = replay(ReplayConfig(model="runs/train/x/best.pt", data="store.zarr"))
    print(format_replay_report(report))
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from driver.datasets.modes import active_labels
from driver.datasets.series import stored_speed_name
from driver.datasets.store import Store
from driver.policy import Policy, load_policy
from driver.progress import Progress
from driver.threads import apply_threads, check_threads

from . import replay_metrics as rm

log = logging.getLogger(__name__)

READ_BLOCK = 256  # frames read from the store at once


@dataclass
class ReplayConfig:
    """What to replay. ``runs`` empty = every run in the store; ``mode`` None = from each run's labels."""

    model: str  # checkpoint (best.pt / last.pt / run dir), exported .onnx / .ts, compressed .dcz or ensemble .json
    data: str  # store path or URL (driver ingest output)
    runs: list[str] = field(default_factory=list)  # runs to replay (empty: all)
    out: str = "replay_out"  # report.json, plots, video, worst.csv
    mode: str | None = None  # condition on this behavioral mode only (None: every mode label of each run, the input
                             # training gave it)
    video: bool = True  # write the overlay video
    video_run: str | None = None  # None = the first replayed run
    max_video_frames: int = 600  # frames in the overlay video
    worst: int = 20  # rows in worst.csv (the largest errors)
    max_lag: int = 30  # frames searched either way for the best alignment
    max_gap_s: float = 0.1  # a timestamp gap this long resets the policy (the validity mask's default)
    plots: bool = True  # write the plots
    runtime: str = "torch"  # inference runtime
    threads: int = 1  # compute threads (1 is fastest for batch-1 inference on small CPUs; 0 = auto)
    view: str = ""  # Rerun view: "" off, "file" = OUT/replay.rrd, X.rrd, spawn, web[:PORT], rerun+http://...

    def __post_init__(self):
        check_threads(self.threads)
        if not self.model:
            raise ValueError("model is empty: name a checkpoint (best.pt/last.pt or a training run folder)")
        if not self.data:
            raise ValueError("data is empty: name a store made by driver ingest")
        if not 1 <= self.max_video_frames <= 100000:
            raise ValueError(f"max_video_frames={self.max_video_frames} must be in 1..100000")
        if not 0 <= self.worst <= 10000:
            raise ValueError(f"worst={self.worst} must be in 0..10000")
        if not 0 <= self.max_lag <= 1000:
            raise ValueError(f"max_lag={self.max_lag} must be in 0..1000 frames")
        if not 0.0 < self.max_gap_s <= 60.0:
            raise ValueError(f"max_gap_s={self.max_gap_s} must be in (0, 60] seconds")


@dataclass
class RunTrace:
    """Per-frame human and model commands of one run (run units), with the scoring mask and chunk ids."""

    run: str
    time_s: np.ndarray  # seconds since the run's first frame
    human_steer: np.ndarray
    human_motor: np.ndarray
    pred_steer: np.ndarray
    pred_motor: np.ndarray
    valid: np.ndarray
    chunk: np.ndarray  # frames between two policy resets share an id
    resets: int
    mode: tuple[str, ...] | None  # the labels the model was conditioned on

    @property
    def fps(self) -> float:
        dt = np.diff(self.time_s)
        dt = dt[dt > 0]
        return float(1.0 / np.median(dt)) if dt.size else 30.0


@dataclass
class ReplayReport:
    """Results: ``overall`` pools all scored frames, ``per_run`` by run name, ``worst`` sorted by |error|."""

    overall: dict
    per_run: dict[str, dict]
    worst: list[dict]
    files: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    traces: dict[str, RunTrace] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {"overall": self.overall, "per_run": self.per_run, "worst": self.worst, "files": self.files,
                "config": self.config}


def resolve_mode(policy: Policy, labels: dict, mode: str | None) -> tuple[str, ...] | None:
    """The modes to condition on: ``(mode,)`` if given, else every one of the model's modes the run is
    labelled with, exactly the input training gave this run (``driver.datasets.modes``); None for models
    without modes. An empty tuple is the all-zero mode vector."""
    if not policy.modes:
        return None
    if mode is not None:
        if mode not in policy.modes:
            raise ValueError(f"mode={mode!r} is not one of this model's modes {list(policy.modes)}")
        return (mode,)
    on = active_labels(labels)
    return tuple(m for m in policy.modes if m in on)


def replay_run(policy: Policy, store: Store, run: str, mode: str | None = None, max_gap_s: float = 0.1) -> RunTrace:
    """Feed every frame of ``run`` to ``policy`` in order, resetting at segment starts and timestamp gaps."""
    meta = store.run_meta(run)
    n = int(meta["n_frames"])
    need_right = "right" in policy.cameras
    if need_right and "right" not in meta["cameras"]:
        raise ValueError(f"run {run!r} has cameras {meta['cameras']} but the model needs the right camera")
    mode = resolve_mode(policy, meta.get("labels", {}), mode)
    speed = None
    if policy.speed_input:  # the model reads the car's speed: the run's own series, as in training
        speed_name = stored_speed_name(meta)
        if speed_name is None:
            raise ValueError(f"run {run!r} has no speed series (encoder or speed) but the model was trained with "
                             "the car's speed as an input (speed_input)")
        speed = store.series(run, speed_name).astype(np.float64)
    ts = store.series(run, "timestamp").astype(np.float64)
    chunk = rm.chunk_ids(store.series(run, "segment"), ts, max_gap_s)
    left_frames = store.frames(run, "left") if "left" in policy.cameras else None
    right_frames = store.frames(run, "right") if need_right else None
    pred = np.zeros((n, 2), np.float64)
    resets = 0
    for start in range(0, n, READ_BLOCK):
        count = min(READ_BLOCK, n - start)
        left = left_frames.read(start, count) if left_frames is not None else None
        right = right_frames.read(start, count) if right_frames is not None else None
        for j in range(count):
            i = start + j
            if i == 0 or chunk[i] != chunk[i - 1]:
                policy.reset()
                resets += 1
            frame = left[j] if left is not None else right[j]
            action = policy.act(frame, right=right[j] if right is not None else None, mode=mode,
                                speed=None if speed is None else speed[i])
            pred[i] = action.steer, action.motor
    return RunTrace(run, ts - ts[0] if n else ts, store.series(run, "steer").astype(np.float64),
                    store.series(run, "motor").astype(np.float64), pred[:, 0], pred[:, 1],
                    store.series(run, "valid").astype(bool), chunk, resets, mode)


def _round(x, nd: int = 4):
    return None if x is None else round(float(x), nd)


def _metrics(traces: list[RunTrace], max_lag: int, constants: tuple[float, float] | None = None) -> dict:
    """Metrics of one or more runs pooled (one run: that run's metrics); ``constants``: the training mean
    (steer, motor) in run units, the constant predictor's output."""
    cat = {k: np.concatenate([getattr(t, k) for t in traces]) for k in
           ("human_steer", "human_motor", "pred_steer", "pred_motor", "valid")}
    v = cat["valid"]
    steer, motor = ({**rm.error_stats(cat[f"pred_{k}"], cat[f"human_{k}"], v),
                     **rm.baseline_stats(cat[f"pred_{k}"], cat[f"human_{k}"], v, None if constants is None
                                         else constants[i])} for i, k in enumerate(("steer", "motor")))
    sse = cnt = None
    rough_m = rough_h = (0.0, 0)
    for t in traces:
        s, c = rm.lag_curve(t.pred_steer, t.human_steer, t.valid, t.chunk, max_lag)
        sse, cnt = (s, c) if sse is None else (sse + s, cnt + c)
        a, b = rm.step_sums(t.pred_steer, t.valid, t.chunk), rm.step_sums(t.human_steer, t.valid, t.chunk)
        rough_m, rough_h = (rough_m[0] + a[0], rough_m[1] + a[1]), (rough_h[0] + b[0], rough_h[1] + b[1])
    lag = rm.best_lag_from_curve(sse, cnt)
    fps = float(np.mean([t.fps for t in traces]))
    return {
        "frames": int(v.size), "scored": int(v.sum()),
        "seconds": round(float(sum(t.time_s[-1] if t.time_s.size else 0.0 for t in traces)), 2),
        "steer": {k: _round(x) if k != "n" else x for k, x in steer.items()},
        "throttle": {k: _round(x) if k != "n" else x for k, x in motor.items()},
        "steer_by_bin": [{**b, "mae": _round(b["mae"])} for b in
                         rm.errors_by_steer_bin(cat["pred_steer"], cat["human_steer"], v)],
        "lag_frames": lag, "lag_s": None if lag is None else round(lag / fps, 4),
        "roughness_model": _round(rough_m[0] / rough_m[1]) if rough_m[1] else None,
        "roughness_human": _round(rough_h[0] / rough_h[1]) if rough_h[1] else None,
        "resets": int(sum(t.resets for t in traces)),
    }


def _worst(traces: list[RunTrace], k: int) -> list[dict]:
    """The ``k`` worst steering moments over all runs (one per 0.5 s window per run), sorted by |error|."""
    rows = []
    for t in traces:
        sep = max(1, int(round(0.5 * t.fps)))
        for i in rm.worst_moments(t.pred_steer, t.human_steer, t.valid, k, min_separation=sep):
            rows.append({"run": t.run, "frame": i, "time_s": round(float(t.time_s[i]), 3),
                         "human": round(float(t.human_steer[i]), 2), "model": round(float(t.pred_steer[i]), 2),
                         "abs_error": round(abs(float(t.pred_steer[i] - t.human_steer[i])), 2)})
    rows.sort(key=lambda r: (-r["abs_error"], r["run"], r["frame"]))
    return rows[:k]


def training_means(policy: Policy) -> tuple[float, float] | None:
    """The constant predictor of ``policy``'s checkpoint: the mean (steer, motor) of its training labels in
    run units, or None for checkpoints saved before they were recorded."""
    stats = getattr(policy, "label_stats", None) or {}
    means = stats.get("mean_run_units")
    return None if means is None else (float(means[0]), float(means[1]))


def open_runs(data: str, runs: list[str]) -> tuple[Store, list[str]]:
    """The store and the runs to replay (all when ``runs`` is empty), each checked to exist."""
    store = Store(data)
    runs = list(runs) or store.runs
    missing = [r for r in runs if not store.has_run(r)]
    if missing:
        raise ValueError(f"runs {missing} are not in {data} (it has {store.runs})")
    if not runs:
        raise ValueError(f"{data} has no runs to replay")
    return store, runs


def replay(config: ReplayConfig, policy: Policy | None = None) -> ReplayReport:
    """Replay ``config.model`` over the store's runs; write ``report.json`` (and media) to ``config.out``.

    ``policy`` overrides loading ``config.model`` (tests, or a policy already in memory)."""
    store, runs = open_runs(config.data, config.runs)
    if config.video and config.video_run is not None and config.video_run not in runs:
        raise ValueError(f"video_run={config.video_run!r} is not among the runs to replay {runs}")
    policy = policy or load_policy(config.model, runtime=config.runtime, threads=apply_threads(config.threads))
    t0 = time.perf_counter()
    traces = []
    with Progress("replay", total=len(runs), unit="run", every_s=0.0, tty=False) as progress:
        for run in runs:
            t = replay_run(policy, store, run, config.mode, config.max_gap_s)
            traces.append(t)
            progress.update(len(traces), run=f"{run}: {len(t.valid)} frames ({int(t.valid.sum())} scored), "
                            f"{t.resets} resets, mode {t.mode}")
    elapsed = time.perf_counter() - t0
    constants = training_means(policy)
    per_run = {t.run: {**_metrics([t], config.max_lag, constants), "mode": t.mode} for t in traces}
    overall = {**_metrics(traces, config.max_lag, constants), "runs": len(traces), "constant": constants,
               "frames_per_s": round(sum(len(t.valid) for t in traces) / max(elapsed, 1e-9), 1)}
    report = ReplayReport(overall, per_run, _worst(traces, config.worst), config=asdict(config),
                          traces={t.run: t for t in traces})
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    from .replay_media import write_replay_media  # matplotlib only when writing

    report.files = [str(p) for p in write_replay_media(report, store, out, config)]
    if config.view:  # Rerun: model vs human on one timeline (driver.view, optional extra)
        from driver.view.replay_view import view_replay

        report.files.append(view_replay(report, store, config.view, str(out / "replay.rrd")))
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    report.files.append(str(out / "report.json"))
    log.info("replay: steer MAE %s, throttle MAE %s over %d scored frames; report in %s",
             overall["steer"]["mae"], overall["throttle"]["mae"], overall["scored"], out)
    return report


def _f(x, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def format_replay_report(report: ReplayReport) -> str:
    """A plain-text summary: one row per run and one for all runs, then error by steering bin and the worst."""
    width = max([24, *(len(n) for n in report.per_run)])
    head = (f"{'run':<{width}} {'scored':>7} {'steer MAE':>9} {'const':>6} {'R²':>6} {'bias':>6} {'thr MAE':>8} "
            f"{'const':>6} {'R²':>6} {'lag f':>5} {'lag s':>6} {'rough M/H':>11}")
    const = report.overall.get("constant")
    lines = ["open-loop replay (run units 0..99); const = always the training mean "
             + ("-" if const is None else f"(steer {const[0]:.1f}, throttle {const[1]:.1f})")
             + "; R² = explained variance", head, "-" * len(head)]

    def row(name: str, m: dict) -> str:
        rough = f"{_f(m['roughness_model'])}/{_f(m['roughness_human'])}"
        lag = "-" if m["lag_frames"] is None else str(m["lag_frames"])
        s, t = m["steer"], m["throttle"]
        return (f"{name:<{width}} {m['scored']:>7} {_f(s['mae']):>9} {_f(s.get('const_mae')):>6} {_f(s.get('r2')):>6} "
                f"{_f(s['bias']):>6} {_f(t['mae']):>8} {_f(t.get('const_mae')):>6} {_f(t.get('r2')):>6} {lag:>5} "
                f"{_f(m['lag_s']):>6} {rough:>11}")

    lines += [row(name, m) for name, m in report.per_run.items()]
    lines += ["-" * len(head), row("ALL", report.overall), ""]
    lines.append("steer MAE by |human steer - 49|: " + ", ".join(
        f"{b['bin']}: {_f(b['mae'])} (n={b['count']})" for b in report.overall["steer_by_bin"]))
    if report.worst:
        lines += ["", "worst moments:"]
        lines += [f"  {w['run']} frame {w['frame']} ({w['time_s']:.2f} s): human {w['human']:.1f} "
                  f"model {w['model']:.1f} |err| {w['abs_error']:.1f}" for w in report.worst[:10]]
    return "\n".join(lines)
