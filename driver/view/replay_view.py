"""``driver replay --view``: the model against the human on one timeline, with the per-frame error.

Runs follow each other on the ``frame`` timeline. Entities: ``camera/left`` (every ``every``-th frame),
``steer/human``, ``steer/model``, ``steer/error`` (model - human, run units), the same under ``motor/``,
``valid`` (frames that were scored), ``run`` (lane) and ``worst`` (the worst moments as a text log, worst
first in the report order, each at its frame: click one to jump there; also marked as points on
``steer/worst``).
"""

from __future__ import annotations

import numpy as np

from . import require_rerun
from .columns import jpeg, series, state_changes
from .sink import ViewSink, open_recording


def blueprint():
    rrb = require_rerun().blueprint
    return rrb.Blueprint(rrb.Vertical(
        rrb.Horizontal(rrb.Spatial2DView(origin="camera", name="camera"),
                       rrb.TextLogView(origin="worst", name="worst")),
        rrb.TimeSeriesView(origin="steer", name="steer: human, model, error (run units)"),
        rrb.TimeSeriesView(origin="motor", name="motor: human, model, error (run units)"),
        rrb.StateTimelineView(contents=["/run"], name="run"), row_shares=[3, 2, 2, 1]))


def view_replay(report, store, sink_spec: str, default_file: str, every: int = 1) -> str:
    """Log a :class:`~driver.sim.replay.ReplayReport`'s traces; returns where it went."""
    rr = require_rerun()
    sink = ViewSink.parse(sink_spec, default_file)
    rec = open_recording("replay", sink, blueprint())
    offsets, offset = {}, 0
    for run, t in report.traces.items():
        n = len(t.valid)
        frame = offset + np.arange(n)
        offsets[run] = offset
        for name, human, model in (("steer", t.human_steer, t.pred_steer), ("motor", t.human_motor, t.pred_motor)):
            series(rec, f"{name}/human", frame, human, t.time_s)
            series(rec, f"{name}/model", frame, model, t.time_s)
            series(rec, f"{name}/error", frame, model - human, t.time_s)
        series(rec, "valid", frame, t.valid.astype(np.float64), t.time_s)
        state_changes(rec, "run", frame, [run] * n)
        if every and "left" in store.run_meta(run)["cameras"]:
            frames = store.frames(run, "left")
            for a in range(0, n, 256):
                block = frames.read(a, min(256, n - a))
                for j in range(0, len(block)):
                    if (a + j) % every == 0:
                        rec.set_time("frame", sequence=offset + a + j)
                        rec.log("camera/left", jpeg(block[j]))
        offset += n
    rec.log("steer/worst", rr.SeriesPoints(colors=[(230, 30, 30)], markers="cross", marker_sizes=6), static=True)
    for w in report.worst:
        i = offsets[w["run"]] + w["frame"]
        rec.set_time("frame", sequence=i)
        rec.log("worst", rr.TextLog(f"{w['run']} frame {w['frame']} ({w['time_s']:.2f} s): human {w['human']:.1f}, "
                                    f"model {w['model']:.1f}, |error| {w['abs_error']:.1f}", level="WARN"))
        rec.log("steer/worst", rr.Scalars(w["model"]))
    from .store_view import finish

    finish(rec, sink)
    return sink.target or f"{sink.kind}:{sink.port}"
