"""``driver sim drive --view``: each track's top-down map and driven path, interventions, and the camera.

Tracks follow each other on the ``step`` timeline (one step per camera frame). Entities per track
``track_<split>_<seed>/``: ``map/road`` (centreline), ``map/path`` (the driven path), ``map/interventions``
(red crosses), ``map/car`` (the car's position at each step); and shared: ``camera/left`` (every
``every``-th frame the controller saw), ``sim/cte`` (m), ``sim/speed`` (m/s), ``sim/steer`` (commanded,
normalised) and ``events`` (a text log with each intervention).
"""

from __future__ import annotations

import inspect

import numpy as np

from . import require_rerun
from .columns import jpeg
from .sink import ViewSink, open_recording


class ViewedController:
    """Wraps a closed-loop controller and keeps every ``every``-th camera frame (JPEG) with its step."""

    def __init__(self, controller, every: int = 3):
        self.controller, self.every = controller, max(1, every)
        self._pass_speed = "speed" in inspect.signature(controller.act).parameters  # a speed-input policy
        self.frames: list[list[tuple[int, object]]] = []
        self._step = 0

    def bind(self, track, car) -> None:
        self.frames.append([])
        self._step = 0
        if hasattr(self.controller, "bind"):
            self.controller.bind(track, car)

    def reset(self) -> None:
        self.controller.reset()

    def act(self, left, right, speed=None):
        if not self.frames:
            self.frames.append([])
        if self._step % self.every == 0:
            self.frames[-1].append((self._step, jpeg(left)))
        self._step += 1
        return self.controller.act(left, right, **({"speed": speed} if self._pass_speed else {}))


def view_sim_drive(result, viewed: ViewedController | None, sink_spec: str, default_file: str, fps: float) -> str:
    """Log a :class:`~driver.sim.closed_loop.ClosedLoopResult` (and the frames ``viewed`` kept)."""
    rr = require_rerun()
    rrb = rr.blueprint
    sink = ViewSink.parse(sink_spec, default_file)
    names = [f"track_{e.track.split}_{e.track.seed}" for e in result.episodes]
    bp = rrb.Blueprint(rrb.Vertical(
        rrb.Horizontal(rrb.Spatial2DView(origin="camera", name="camera"),
                       *[rrb.Spatial2DView(origin=f"{n}/map", name=n) for n in names]),
        rrb.TimeSeriesView(origin="sim", name="cte (m), speed (m/s), steer"),
        rrb.TextLogView(origin="events", name="interventions"), row_shares=[3, 2, 1]))
    rec = open_recording("sim_drive", sink, bp)
    offset = 0
    for k, (ep, name) in enumerate(zip(result.episodes, names, strict=True)):
        n = len(ep.cte)
        step = offset + np.arange(n)
        rec.log(f"{name}/map/road", rr.LineStrips2D([ep.track.xy], radii=ep.track.lane_width / 2,
                                                     colors=[(110, 110, 110)]), static=True)
        rec.log(f"{name}/map/path", rr.LineStrips2D([ep.path], radii=0.02, colors=[(30, 90, 220)]), static=True)
        if len(ep.intervention_xy):
            rec.log(f"{name}/map/interventions", rr.Points2D(ep.intervention_xy, radii=0.15, colors=[(230, 30, 30)]),
                    static=True)
        idx = [rr.TimeColumn("step", sequence=step), rr.TimeColumn("time", duration=np.arange(n) / fps)]
        rec.send_columns(f"{name}/map/car", indexes=idx,
                         columns=rr.Points2D.columns(positions=ep.path, radii=np.full(n, 0.12, np.float32)))
        for label, values in (("cte", ep.cte), ("speed", ep.speed), ("steer", ep.steer)):
            rec.send_columns(f"sim/{label}", indexes=idx, columns=rr.Scalars.columns(scalars=values))
        rec.set_time("step", sequence=offset)
        rec.log("events", rr.TextLog(f"{name}: autonomy {ep.autonomy:.1f}%, {ep.interventions} interventions",
                                     level="INFO"))
        for xy in ep.intervention_xy:
            i = int(np.argmin(np.hypot(*(ep.path - xy).T)))
            rec.set_time("step", sequence=offset + i)
            rec.log("events", rr.TextLog(f"{name}: intervention at step {i} ({i / fps:.1f} s)", level="WARN"))
        if viewed is not None and k < len(viewed.frames):
            for s, image in viewed.frames[k]:
                rec.set_time("step", sequence=offset + s)
                rec.log("camera/left", image)
        offset += n
    from .store_view import finish

    finish(rec, sink)
    return sink.target or f"{sink.kind}:{sink.port}"
