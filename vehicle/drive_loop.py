"""``driver drive``: camera → policy → carlink, one tick per new frame, safety checks as data, every tick recorded.

::

    report = drive(DriveConfig(port="/dev/ttyUSB0", model="runs/train/x/best.pt", camera="0"))
    sys.exit(report.exit_code)

A tick: wait for a newer frame (``camera_timeout_ms``; meanwhile a keepalive CMD — steering held, neutral
throttle — every third of the MCU's watchdog, so a camera hiccup never trips it) → ``prepare_frame`` (the
training preprocessing) → ``policy.act`` with carried state → the raw output checked → host limits → CMD
(AUTO_REQUEST unless ``shadow``) → ack bookkeeping → record. With ``wheel_m_per_tick`` set and an MCU
that counts a wheel encoder (carlink v1.2), each tick also reads the car's speed (m/s, recorded as the
run's ``encoder`` series), which a speed-input model takes as its input. The MCU's mode switch decides who drives: in
MANUAL the MCU passes the RC through and the model runs in shadow (its commands are sent and recorded, not
followed). Every check in :data:`driver.vehicle.safety.CHECKS` is evaluated each tick; ending ones send
ESTOP (neutral throttle). An MCU that went FAILSAFE on its own (``mcu_failsafe``) always ends the session
as a fault.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import numpy as np

from driver.errors import SpeedRequired
from driver.policy import NonFiniteOutput
from driver.preprocess import prepare_frame
from driver.units import norm_to_run
from driver.vehicle.carlink import Mode, StateFlags
from driver.vehicle.link import CarLink, LinkError

from .calibration import Calibration
from .camera import CameraError, EndOfStream, Frame, LatestFrame, open_camera
from .drive_config import DriveConfig, DriveReport
from .limits import HostLimits
from .realtime import gc_between_ticks, parse_cpus, pinned, realtime_loop
from .recorder import STATE_ERROR, STATE_HUMAN, STATE_LOCK, STATE_NETWORK, STATE_OVERRIDE, SessionRecorder, session_path
from .safety import STUCK_THROTTLE, Act, Check, Health, evaluate, first_ending, output_problem
from .sim_car import SimLink, actuator_from_link
from .timing import StageTimer, format_summary
from .wheel_speed import WheelSpeed

log = logging.getLogger(__name__)

LAB_MODE_LABELS = ("direct", "follow", "furtive", "play", "racing")


def lab_state(state) -> int:
    """The lab state code of an MCU STATE (None: no STATE yet, or a mode carlink does not define)."""
    if state is None or not state.mode_known:
        return STATE_ERROR
    if state.mode == Mode.FAILSAFE:
        return STATE_LOCK
    if state.mode == Mode.AUTO:
        return STATE_OVERRIDE if state.flags & StateFlags.OVERRIDE else STATE_NETWORK
    return STATE_HUMAN


class DriveLoop:
    """The loop over already-open parts; ``step()`` runs one tick and returns the ending check, if any."""

    def __init__(self, config: DriveConfig, policy, link, grabber: LatestFrame,
                 recorder: SessionRecorder | None = None, gc_tick=None, view=None) -> None:
        self.config, self.policy, self.link, self.grabber, self.recorder = config, policy, link, grabber, recorder
        self.view = view  # driver.view.live.LiveView: gets each tick on a queue, never blocks the loop
        self.safety = config.safety
        self.limits = HostLimits(config.limits)
        self.cal: Calibration = link.calibration  # the MCU's endpoints: every recorded pulse is converted with them
        self.timer = StageTimer()
        self.report = DriveReport(calibration=self.cal.describe())
        self.gc_tick = gc_tick or (lambda: None)
        watchdog_ms = link.info.watchdog_ms if link.info is not None else 150
        self.keepalive_s = max(watchdog_ms, 3) / 3000.0  # a third of the MCU watchdog
        self._last_send: float | None = None  # monotonic time of the last CMD (model or keepalive)
        self._last_steer = 0.0  # the steering last sent: a keepalive holds it
        self.stop_signal = ""  # set by the signal handler
        self._mode = config.mode if policy.modes else None
        self._last_seq = 0
        self._prev_left: np.ndarray | None = None
        self._identical = 0
        self._overruns = 0
        self._lost_before = link.counters.lost_acks  # the link counts lost CMDs; this session's share is new
        self._pending: dict[int, float] = {}  # seq -> send time, until its ack's round trip is timed
        self._was_model = False
        self._t_start = time.monotonic()
        self._wall0 = time.time() - self._t_start
        self._next_status = self._t_start + config.status_every_s
        self.wheel = wheel_reader(config, link)  # None: the encoder is not read this session
        self._speed_model = bool(getattr(policy, "speed_input", False))
        if self._speed_model and self.wheel is None:
            require_wheel(config, link)  # raises: a speed-input model never drives blind
        self._thr_high_since: float | None = None  # monotonic time the throttle output went ≥ STUCK_THROTTLE

    # ---- one tick ----

    def step(self) -> Check | None:
        """One tick: wait for a frame, act, send, record. Returns the check that ends the session, or None."""
        h = Health(signal=self.stop_signal)
        t0 = time.monotonic()
        if self.config.seconds and t0 - self._t_start >= self.config.seconds:
            h.time_up = True
        frame = None
        if not (h.signal or h.time_up):
            frame = self._wait_frame(h)
        h.camera_wait_ms = (time.monotonic() - t0) * 1000.0
        if frame is not None:
            self._observe_frame(frame, h)
            self._observe_mode(h)
            self._observe_wheel(h)
        ending = self._conclude(h)
        if ending is not None or frame is None:
            return ending
        self._act_and_send(frame, h)
        return self._conclude(h)

    def _wait_frame(self, h: Health) -> Frame | None:
        """The next frame, up to camera_timeout_ms; keepalive CMDs go out while waiting (once we drive)."""
        deadline = time.monotonic() + self.safety.camera_timeout_ms / 1000.0
        while True:
            now = time.monotonic()
            wait = deadline - now
            if self._last_send is not None:
                wait = min(wait, self._last_send + self.keepalive_s - now)
            try:
                frame = self.grabber.wait_newer(self._last_seq, max(0.0, wait))
            except EndOfStream:
                h.end_of_stream = True
                return None
            except CameraError as exc:
                h.camera_error = str(exc)
                return None
            if frame is not None:
                return frame
            if time.monotonic() >= deadline:
                h.no_frame = True
                return None
            if not self._keepalive(h):
                return None

    def _keepalive(self, h: Health) -> bool:
        """Hold steering, neutral throttle, same AUTO_REQUEST: the MCU's watchdog stays fed, the car coasts."""
        try:
            self.link.send(self._last_steer, 0.0, auto=not self.config.shadow)
        except LinkError as exc:
            h.link_error = str(exc)
            return False
        self._last_send = time.monotonic()
        self.report.keepalives += 1
        return True

    def _observe_frame(self, frame: Frame, h: Health) -> None:
        if self._last_seq:
            h.frames_skipped = frame.seq - self._last_seq - 1
            self.report.frames_skipped += h.frames_skipped
        self._last_seq = frame.seq
        same = self._prev_left is not None and np.array_equal(frame.left, self._prev_left)
        self._identical = self._identical + 1 if same else 0
        h.identical_frames = self._identical
        self._prev_left = frame.left

    def _observe_mode(self, h: Health) -> None:
        state = self.link.latest_state
        is_model = state is not None and lab_state(state) == STATE_NETWORK
        h.mode_to_auto = is_model and not self._was_model
        self._was_model = is_model
        self._observe_mcu(h)

    def _observe_mcu(self, h: Health) -> None:
        """What the MCU did on its own since the link opened (every STATE, not only the latest)."""
        watch = self.link.watch
        h.mcu_failsafe = watch.failsafe + (" (--shadow never asks to drive: was the switch flipped to AUTO?)"
                                           if watch.failsafe and self.config.shadow else "")
        h.mcu_mode_unknown = watch.unknown_mode

    def _observe_wheel(self, h: Health) -> None:
        """The newest ODOM into the speed estimate; how stale it is; how long the throttle pushed a still wheel."""
        if self.wheel is None:
            return
        now = time.monotonic()
        h.wheel_age_ms = self.link.latest_odom_age_s * 1000.0
        odom = self.link.latest_odom
        if odom is None:
            return
        self.wheel.observe(odom)
        state = self.link.latest_state
        thr = self.cal.throttle.us_to_norm(state.out_thr_us) if state is not None else 0.0
        if thr < STUCK_THROTTLE:
            self._thr_high_since = None
        elif self._thr_high_since is None:
            self._thr_high_since = now
        if self._thr_high_since is not None:
            still_ms = (odom.t_ms - odom.tick_ms) & 0xFFFFFFFF  # MCU clock since the encoder's last tick
            h.wheel_stuck_ms = min((now - self._thr_high_since) * 1000.0, float(still_ms))

    def _act_and_send(self, frame: Frame, h: Health) -> None:
        p, timer = self.policy, self.timer
        t_tick = time.monotonic()
        timer.add("capture_age", t_tick - frame.t_capture)
        left = prepare_frame(frame.left, p.height, p.width, "frame")
        right = prepare_frame(frame.right, p.height, p.width, "right") if frame.right is not None else None
        t_pre = time.monotonic()
        timer.add("preprocess", t_pre - t_tick)
        try:
            speed = {"speed": self.wheel.speed} if self._speed_model else {}
            action = p.act(left, right if (p.stereo or p.cameras == ("right",)) else None, self._mode, **speed)
        except NonFiniteOutput as exc:
            h.output_bad = f"non-finite model output ({exc})"
            return
        t_inf = time.monotonic()
        timer.add("inference", t_inf - t_pre)
        h.output_bad = output_problem(action.raw, self.safety.output_margin)  # before any clamp or limit
        self._observe_mcu(h)  # the MCU may have given up while we were inferring
        if h.output_bad or h.mcu_failsafe or h.mcu_mode_unknown:
            return
        steer, thr = self.limits.apply(action.steer_norm, action.motor_norm, t_inf)
        auto = not self.config.shadow
        try:
            self.link.raise_if_failed()
            seq = self.link.send(steer, thr, auto=auto)
        except LinkError as exc:
            h.link_error = str(exc)
            return
        t_send = time.monotonic()
        self._last_send, self._last_steer = t_send, steer
        timer.add("send", t_send - t_inf)
        latency = t_send - frame.t_capture
        timer.add("capture_to_send", latency)
        timer.add("overhead", latency - (t_inf - t_pre))
        self._overruns = self._overruns + 1 if latency * 1000.0 > self.safety.deadline_ms else 0
        h.overruns = self._overruns
        self.report.commands_sent += 1
        self._track_acks(seq, t_send, h)
        state = self.link.latest_state
        controller = int(lab_state(state) == STATE_NETWORK)
        self.report.ticks += 1
        self.report.model_ticks += controller
        if self.recorder is not None:
            self._record(frame, left, right, state, controller, action, steer, thr, auto, latency)
        if self.view is not None:
            self.view.tick(frame.left, action.steer, action.motor, steer, thr, _mode_name(state), h,
                           {"preprocess": t_pre - t_tick, "inference": t_inf - t_pre, "send": t_send - t_inf,
                            "capture_to_send": latency})
        timer.add("tick", time.monotonic() - t_tick)
        self.gc_tick()  # the CMD is out: collect garbage now, not in the next capture → send
        if t_send >= self._next_status:
            self._next_status = t_send + self.config.status_every_s
            self._status(state)

    def _track_acks(self, seq: int, t_send: float, h: Health) -> None:
        self._pending[seq] = t_send
        now = time.monotonic()
        for s, t in list(self._pending.items()):
            ack = self.link.ack_for(s)
            if ack is not None:
                self.timer.add("ack_rtt", ack.rtt_s)
                self.report.acks += 1
                del self._pending[s]
            elif now - t > self.safety.ack_timeout_ms / 1000.0:
                del self._pending[s]  # lost: the link counted it (CarLink._count_lost)
        counters = self.link.counters
        h.lost_acks = counters.lost_in_a_row
        self.report.lost_acks = counters.lost_acks - self._lost_before

    def _record(self, frame, left, right, state, controller, action, steer, thr, auto, latency) -> None:
        s_end, t_end = self.cal.steer, self.cal.throttle
        out_s, out_t, rc_s, rc_t = ((state.out_steer_us, state.out_thr_us, state.rc_steer_us, state.rc_thr_us)
                                    if state else (s_end.neutral_us, t_end.neutral_us) * 2)
        self.recorder.add(
            left, right, steer=s_end.us_to_run(out_s), motor=t_end.us_to_run(out_t), state=lab_state(state),
            timestamp=self._wall0 + frame.t_capture, controller=controller,
            rc_steer=s_end.us_to_run(rc_s), rc_motor=t_end.us_to_run(rc_t),
            cmd_steer=float(norm_to_run(steer)), cmd_motor=float(norm_to_run(thr)),
            model_steer=action.steer, model_motor=action.motor, auto_request=int(auto),
            mcu_mode=int(state.mode) if state else -1, mcu_flags=int(state.flags) if state else 0,
            mcu_t_ms=state.t_ms if state else 0, rc_mode_us=state.rc_mode_us if state else 0,
            out_steer_us=out_s, out_thr_us=out_t, rc_steer_us=rc_s, rc_thr_us=rc_t,
            frame_seq=frame.seq, capture_to_send_ms=latency * 1000.0,
            **({} if self.wheel is None else {"encoder": self.wheel.speed, "encoder_ticks": self.wheel.ticks_total}))

    def _status(self, state) -> None:
        elapsed = time.monotonic() - self._t_start
        mode = _mode_name(state)
        log.info("drive %.0f s: %d ticks (%.1f Hz), mode %s, %d skipped, %d lost acks | %s", elapsed,
                 self.report.ticks, self.report.ticks / max(elapsed, 1e-9), mode, self.report.frames_skipped,
                 self.report.lost_acks, self.timer.status_line())

    def _conclude(self, h: Health) -> Check | None:
        fired = evaluate(h, self.safety)
        for check in fired:
            if check.act is Act.RESET:
                self.policy.reset()
                self.limits.reset()
                self.report.resets[check.name] = self.report.resets.get(check.name, 0) + 1
                log.info("check %s: policy state reset", check.name)
        if self.view is not None:
            self.view.checks(fired)
        h.frames_skipped, h.mode_to_auto = 0, False  # applied: a second evaluation this tick must not repeat them
        ending = first_ending(fired)
        if ending is not None:
            detail = (h.signal or h.exception or h.link_error or h.mcu_failsafe or h.mcu_mode_unknown
                      or h.camera_error or h.output_bad
                      or {"acks_lost": f"{h.lost_acks} CMDs in a row not acked",
                          "duration": f"{self.config.seconds:g} s elapsed",
                          "camera_stale": f"no new frame for {h.camera_wait_ms:.0f} ms",
                          "camera_frozen": f"{h.identical_frames} identical frames in a row",
                          "loop_overrun": f"{h.overruns} ticks over {self.safety.deadline_ms:.1f} ms",
                          "wheel_stale": f"no ODOM for {h.wheel_age_ms:.0f} ms",
                          "wheel_stuck": f"throttle ≥ {STUCK_THROTTLE} for {h.wheel_stuck_ms:.0f} ms with no "
                                         "encoder tick"}
                      .get(ending.name, ""))
            self.report.reason, self.report.message = ending.name, detail
            self.report.exit_code = 1 if ending.act is Act.ESTOP else 0
            logf = log.error if ending.act is Act.ESTOP else log.info
            logf("check %s fired (%s): %s → ESTOP, neutral throttle", ending.name, ending.condition, detail)
        return ending

    # ---- the whole session ----

    def run(self) -> DriveReport:
        """Tick until a check ends the session; any exception is the ``exception`` check. Always ESTOPs."""
        state = self.link.latest_state
        if state is not None and state.mode_known and state.mode == Mode.FAILSAFE:
            log.warning("the MCU is in FAILSAFE (since boot, or latched by an earlier session): the car will not "
                        "move until the mode switch is cycled through MANUAL")
        try:
            while True:
                try:
                    ending = self.step()
                except Exception as exc:  # noqa: BLE001 - named, logged with traceback, ends in ESTOP
                    log.exception("exception in the drive loop")
                    ending = self._conclude(Health(exception=f"{type(exc).__name__}: {exc}"))
                if ending is not None:
                    break
        finally:
            self._never_clean_after_failsafe()
            state = self.link.estop()
            self.report.estop_state = "" if state is None or not state.mode_known else state.mode.name
            self.report.seconds = time.monotonic() - self._t_start
            self.report.frames_grabbed = self.grabber.grabbed
            self.report.timings = self.timer.summary()
            log.info("drive ended after %.1f s (%s), %d ticks, %.1f Hz\n%s", self.report.seconds,
                     self.report.reason or "?", self.report.ticks, self.report.rate_hz,
                     format_summary(self.report.timings))
        return self.report

    def _never_clean_after_failsafe(self) -> None:
        """A FAILSAFE the MCU latched on its own in the session's last moments still makes it a fault."""
        h = Health()
        self._observe_mcu(h)
        if self.report.exit_code == 0 and (h.mcu_failsafe or h.mcu_mode_unknown):
            self._conclude(h)


def wheel_reader(config: DriveConfig, link) -> WheelSpeed | None:
    """The session's speed estimate: when the MCU counts a wheel encoder and the metres per tick are known
    (``wheel_m_per_tick``, or the sim's own encoder); None otherwise."""
    m_per_tick = config.wheel_m_per_tick or (getattr(link, "m_per_tick", 0.0) if isinstance(link, SimLink) else 0.0)
    if not (getattr(link, "has_encoder", False) and m_per_tick > 0):
        return None
    return WheelSpeed(m_per_tick)


def require_wheel(config: DriveConfig, link=None) -> None:
    """A speed-input model needs the car's speed: refuse it, before anything moves, when it cannot be read.
    ``link`` None: before the port opens (only ``wheel_m_per_tick`` can be checked)."""
    if link is not None and wheel_reader(config, link) is not None:
        return
    if link is not None and not getattr(link, "has_encoder", False):
        what = (f"the MCU on {link.port} reports no wheel encoder (it needs carlink v1.2 firmware built with "
                "ENCODER=1 and an encoder on D5: docs/carlink.md#wheel-speed)")
    else:
        what = ("wheel_m_per_tick is not set (--wheel-m-per-tick, metres per encoder tick: "
                "docs/training.md#speed-input)")
    raise SpeedRequired(f"{config.model}: the model takes the car's speed (trained with speed input), but {what}; "
                        "or drive a model trained with --speed-input off")


def _mode_name(state) -> str:
    return state.mode.name if state is not None and state.mode_known else "-"


def _install_signals(loop: DriveLoop) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame) -> None:
        loop.stop_signal = signal.Signals(signum).name

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _warm_up(policy, n: int, mode: str | None) -> None:
    """``n`` passes on a blank frame (first-call allocations, lazy kernels) before anything moves."""
    if n <= 0:
        return
    blank = np.zeros((policy.height, policy.width, 3), np.uint8)
    speed = {"speed": 0.0} if getattr(policy, "speed_input", False) else {}
    for _ in range(n):
        policy.act(blank, blank if policy.stereo else None, mode, **speed)
    policy.reset()


def drive(config: DriveConfig, policy=None) -> DriveReport:
    """Run one drive session (see the module docstring). ``policy`` overrides loading ``config.model``.

    Startup problems raise ValueError/DriverError before anything moves, in this order: the model file,
    the serial port and handshake (named before any camera is touched), the camera. Once the loop runs,
    every problem is a named check in the report and ends in ESTOP.
    """
    # first: every thread started below (serial reader, camera grabber, recorder) inherits CPUs and policy
    with pinned(parse_cpus(config.cpus)) as cpus, realtime_loop(config.realtime) as rt:
        policy = policy or _load_policy(config)
        speed_model = bool(getattr(policy, "speed_input", False))
        if speed_model and config.port and not config.wheel_m_per_tick:
            require_wheel(config)  # known before the port opens
        cam_cfg = config.camera_config
        if policy.stereo and cam_cfg.kind in ("file", "v4l2") and not config.side_by_side:
            raise ValueError(f"{config.model} is a stereo model: camera {config.camera!r} gives one image; pass "
                             "side_by_side=True (--side-by-side) for a left|right camera")
        _warm_up(policy, config.warmup, config.mode if policy.modes else None)
        view = _open_view(config.view)  # a bad view sink fails before anything opens
        try:
            link = (CarLink(config.port, config.baud, ack_timeout_s=config.safety.ack_timeout_ms / 1000.0,
                            estop_on_close=False) if config.port else SimLink())
            link.open()
            try:
                source = open_camera(cam_cfg, actuator=actuator_from_link(link), stereo=policy.stereo)
                source.open()
                if isinstance(link, SimLink) and hasattr(source, "wheel_m"):
                    link.attach_wheel(lambda: source.wheel_m, lambda: source.sim_s)  # the sim car's wheel
                try:
                    if speed_model:
                        require_wheel(config, link)
                    report = _run_session(config, policy, link, source, view)
                    report.realtime = rt
                finally:
                    source.close()
            finally:
                link.close()
        finally:
            if view is not None:
                view.close()
    report.cpus = cpus
    return report


def _open_view(sink: str):
    """The Rerun live view (driver.view, optional extra): ticks go on a queue, never blocking the loop."""
    if not sink:
        return None
    from driver.view.live import LiveView

    return LiveView(sink).start()


def _load_policy(config: DriveConfig):
    from driver.policy import load_policy

    return load_policy(config.model, runtime=config.runtime, device=config.device, threads=config.threads or None)


def _recorder(config: DriveConfig, policy, link) -> SessionRecorder:
    labels = {m: int(m == config.mode) for m in LAB_MODE_LABELS if m in (config.mode,)}
    wheel = wheel_reader(config, link)
    attrs = {"model": str(config.model), "camera": config.camera, "port": config.port or "sim",
             "calibration": link.calibration.to_json()}
    if wheel is not None:
        attrs["wheel_m_per_tick"] = wheel.m_per_tick
    return SessionRecorder(session_path(config.record_dir), policy.height, policy.width, policy.stereo,
                           labels=labels, attrs=attrs, wheel=wheel is not None)


def _run_session(config: DriveConfig, policy, link, source, view=None) -> DriveReport:
    """The loop over open parts: grabber and recorder threads, signal handlers, GC between ticks if asked."""
    grabber = LatestFrame(source).start()
    recorder = None
    try:
        recorder = _recorder(config, policy, link) if config.record_dir else None
        with gc_between_ticks(config.gc) as gc_tick:
            loop = DriveLoop(config, policy, link, grabber, recorder, gc_tick=gc_tick, view=view)
            previous = _install_signals(loop)
            try:
                loop.run()
            finally:
                for sig, old in previous.items():
                    signal.signal(sig, old)
    finally:
        grabber.stop()
        path = recorder.close() if recorder is not None else None
    loop.report.run_path = str(path) if path else None
    driving = source.driving() if hasattr(source, "driving") else None
    if driving is not None:
        loop.report.sim = driving.to_dict()
        log.info("%s", driving.line())
    return loop.report
