"""``driver view STORE``: a store's runs in Rerun, one after another on a ``frame`` timeline.

Entities: ``camera/left``, ``camera/right`` (JPEG frames), ``commands/steer`` and ``commands/motor`` (run
units), ``state/code`` and the ``state/mode`` lane, ``valid`` (1/0) and the ``validity`` lane,
``extras/<name>`` for scalar extra series (encoder, speed, ...), the ``run`` lane, and ``events`` (a text
log with each run's start and labels and each segment break: click one to jump there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from driver.datasets.store import Store

from . import require_rerun
from .columns import STATE_NAMES, jpeg, series, state_changes
from .sink import ViewSink, open_recording

log = logging.getLogger(__name__)


@dataclass
class ViewConfig:
    """What to show and where. ``sink``: see :class:`~driver.view.sink.ViewSink`."""

    store: str
    runs: list[str] = field(default_factory=list)  # empty: every run
    sink: str = "view.rrd"
    every: int = 1  # log every N-th camera frame
    serve_seconds: float = 0.0  # web/spawn: keep serving this long (0: until Ctrl-C)

    def __post_init__(self):
        if not 1 <= self.every <= 1000:
            raise ValueError(f"every={self.every} must be in 1..1000 frames")
        ViewSink.parse(self.sink)


def blueprint(cameras: list[str]):
    rr = require_rerun()
    rrb = rr.blueprint
    cams = [rrb.Spatial2DView(origin=f"camera/{c}", name=c) for c in cameras]
    return rrb.Blueprint(rrb.Vertical(
        rrb.Horizontal(*cams),
        rrb.TimeSeriesView(origin="commands", name="steer / motor (run units)"),
        rrb.Horizontal(rrb.TimeSeriesView(origin="extras", name="extras"),
                       rrb.StateTimelineView(contents=["/run", "/state/mode", "/validity"], name="run, mode, validity"),
                       rrb.TextLogView(origin="events", name="events")),
        row_shares=[3, 2, 2]))


def log_run(rec, store: Store, run: str, offset: int, every: int = 1) -> int:
    """Log one run starting at global frame ``offset``; returns the number of frames."""
    rr = require_rerun()
    meta = store.run_meta(run)
    n = int(meta["n_frames"])
    frame = offset + np.arange(n)
    t = store.series(run, "timestamp")
    t = t - t[0]
    for name in ("steer", "motor"):
        series(rec, f"commands/{name}", frame, store.series(run, name), t)
    state = store.series(run, "state")
    series(rec, "state/code", frame, state, t)
    state_changes(rec, "state/mode", frame, [f"{int(s)} {STATE_NAMES.get(int(s), '?')}" for s in state])
    valid = store.series(run, "valid")
    series(rec, "valid", frame, valid.astype(np.float64), t)
    state_changes(rec, "validity", frame, ["valid" if v else "invalid" for v in valid])
    state_changes(rec, "run", frame, [run] * n)
    for e in meta["extras"]:
        values = store.series(run, e["name"])
        if values.ndim == 1:
            series(rec, f"extras/{e['name']}", frame, values, t)
    labels = ", ".join(k for k, v in sorted(meta["labels"].items()) if v) or "none"
    rec.set_time("frame", sequence=offset)
    rec.log("events", rr.TextLog(f"run {run} ({n} frames, labels: {labels})", level="INFO"))
    for seg in meta["segments"][1:]:
        rec.set_time("frame", sequence=offset + seg["start"])
        rec.log("events", rr.TextLog(f"{run}: segment {seg['name']} starts (a gap or break)", level="WARN"))
    for cam in meta["cameras"]:
        frames = store.frames(run, cam)
        for a in range(0, n, 256):
            block = frames.read(a, min(256, n - a))
            for j in range(len(block)):
                if (a + j) % every:
                    continue
                rec.set_time("frame", sequence=offset + a + j)
                rec.set_time("time", duration=float(t[a + j]))
                rec.log(f"camera/{cam}", jpeg(block[j]))
    return n


def view_store(config: ViewConfig) -> dict:
    """Log the store's runs to the sink; returns ``{"runs": n, "frames": n, "sink": ...}``."""
    store = Store(config.store)
    runs = list(config.runs) or store.runs
    missing = [r for r in runs if not store.has_run(r)]
    if missing or not runs:
        raise ValueError(f"runs {missing} are not in {config.store} (it has {store.runs or 'no runs'})")
    sink = ViewSink.parse(config.sink)
    cameras = sorted({c for r in runs for c in store.run_meta(r)["cameras"]})
    rec = open_recording("store", sink, blueprint(cameras))
    offset = 0
    for run in runs:
        offset += log_run(rec, store, run, offset, config.every)
    rec.flush()
    finish(rec, sink, config.serve_seconds)
    return {"runs": len(runs), "frames": offset, "sink": sink}


def finish(rec, sink: ViewSink, serve_seconds: float | None = 0.0) -> None:
    """Flush and close; a web sink first keeps serving ``serve_seconds`` (0: until Ctrl-C, None: not at all)."""
    import time

    if sink.kind == "web" and serve_seconds is not None:
        log.info("serving the Rerun web viewer on port %d; Ctrl-C to stop", sink.port)
        try:
            deadline = time.monotonic() + serve_seconds if serve_seconds else float("inf")
            while time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    rec.flush()
    rec.disconnect()
