"""``driver drive --view``: the live car in Rerun, without slowing the drive loop.

The loop only puts a small tuple on a bounded queue per tick (``put_nowait``: a full queue drops the
tick's view and counts it, it never waits); a background thread does all Rerun work: JPEG-encoding the
camera at ``camera_hz`` (default 5 Hz), logging and sending. Timelines: ``tick`` and ``time`` (seconds
since the start). Entities: ``camera/left``; ``commands/model_steer``, ``model_motor`` (run units),
``commands/sent_steer``, ``sent_throttle`` (normalised, after the host limits); ``latency/<stage>`` (ms:
preprocess, inference, send, capture_to_send); ``health/<field>`` (the named checks' inputs: camera wait,
skipped and identical frames, overruns, lost acks); ``link/mode`` (the MCU's mode lane) and ``checks``
(a text log of every check that fired, e.g. ``camera_stale -> ESTOP``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

from .sink import ViewSink, open_recording

log = logging.getLogger(__name__)

HEALTH_FIELDS = ("camera_wait_ms", "frames_skipped", "identical_frames", "overruns", "lost_acks")


class LiveView:
    """Streams drive-loop ticks to a Rerun sink from a background thread (see the module docstring)."""

    def __init__(self, sink_spec: str, default_file: str = "drive_view.rrd", camera_hz: float = 5.0,
                 queue_size: int = 256):
        self.sink = ViewSink.parse(sink_spec, default_file)
        self.camera_period = 1.0 / camera_hz if camera_hz > 0 else float("inf")
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._next_image = 0.0
        self._t0 = time.monotonic()
        self._tick = 0
        self.dropped = 0
        self.logged = 0
        self._rec = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveView:
        from driver.view import require_rerun

        rrb = require_rerun().blueprint
        bp = rrb.Blueprint(rrb.Vertical(
            rrb.Horizontal(rrb.Spatial2DView(origin="camera", name="camera"),
                           rrb.TextLogView(origin="checks", name="checks fired")),
            rrb.Horizontal(rrb.TimeSeriesView(origin="commands", name="commands"),
                           rrb.TimeSeriesView(origin="latency", name="latency (ms)")),
            rrb.Horizontal(rrb.TimeSeriesView(origin="health", name="named checks' inputs"),
                           rrb.StateTimelineView(contents=["/link/mode"], name="MCU mode"))))
        self._rec = open_recording("drive", self.sink, bp)
        self._thread = threading.Thread(target=self._run, name="drive-view", daemon=True)
        self._thread.start()
        return self

    # ---- called from the drive loop: never blocks ----

    def _put(self, item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def tick(self, left, model_steer: float, model_motor: float, sent_steer: float, sent_throttle: float,
             mode: str, health, latency_s: dict[str, float]) -> None:
        now = time.monotonic()
        image = None
        if now >= self._next_image:
            self._next_image = now + self.camera_period
            image = left
        self._tick += 1
        self._put(("tick", self._tick, now - self._t0, image, (model_steer, model_motor, sent_steer, sent_throttle),
                   mode, tuple(getattr(health, f) for f in HEALTH_FIELDS), latency_s))

    def checks(self, fired) -> None:
        if fired:
            self._put(("checks", self._tick, time.monotonic() - self._t0,
                       [f"{c.name} -> {c.act.name}" for c in fired]))

    # ---- the background thread ----

    def _run(self) -> None:
        import rerun as rr

        from .columns import jpeg

        last_mode, failed = None, False
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                last_mode = self._log(rr, jpeg, item, last_mode)
            except Exception as exc:  # noqa: BLE001 - the view must never take the drive down; say it once
                if not failed:
                    log.error("drive view: logging failed (%s: %s); the drive goes on without it",
                              type(exc).__name__, exc)
                failed = True

    def _log(self, rr, jpeg, item, last_mode):
        rec = self._rec
        kind, tick, t = item[0], item[1], item[2]
        rec.set_time("tick", sequence=tick)
        rec.set_time("time", duration=t)
        if kind == "checks":
            for text in item[3]:
                rec.log("checks", rr.TextLog(text, level="ERROR" if "ESTOP" in text else "WARN"))
            return last_mode
        _, _, _, image, cmds, mode, health, latency = item
        if image is not None:
            rec.log("camera/left", jpeg(image))
        for name, v in zip(("model_steer", "model_motor", "sent_steer", "sent_throttle"), cmds, strict=True):
            rec.log(f"commands/{name}", rr.Scalars(float(v)))
        for name, v in latency.items():
            rec.log(f"latency/{name}", rr.Scalars(v * 1000.0))
        for name, v in zip(HEALTH_FIELDS, health, strict=True):
            rec.log(f"health/{name}", rr.Scalars(float(v)))
        if mode != last_mode:
            rec.log("link/mode", rr.StateChange(state=mode))
        self.logged += 1
        return mode

    def close(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # the thread drains the queue; never wait forever
                self._queue.put(None, timeout=30)
            self._thread.join(timeout=30)
            self._thread = None
        if self._rec is not None:
            from .store_view import finish

            finish(self._rec, self.sink, serve_seconds=None)
            self._rec = None
        if self.dropped:
            log.warning("drive view: %d ticks not shown (the viewer could not keep up)", self.dropped)
