"""``driver drive``: camera → policy → carlink, one tick per new frame, safety checks as data, every tick recorded.

::

    report = drive(DriveConfig(port="/dev/ttyUSB0", model="runs/train/x/best.pt", camera="0"))
    sys.exit(report.exit_code)

A tick: wait for a newer frame (``camera_timeout_ms``) → ``prepare_frame`` (the training preprocessing) →
``policy.act`` with carried state → host limits → CMD (AUTO_REQUEST unless ``shadow``) → ack bookkeeping →
record. The MCU's mode switch decides who drives: in MANUAL the MCU passes the RC through and the model
runs in shadow (its commands are sent and recorded, not followed). Every check in
:data:`driver.vehicle.safety.CHECKS` is evaluated each tick; ending ones send ESTOP (neutral throttle).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import numpy as np
from driver.vehicle.carlink import Mode, StateFlags
from driver.vehicle.link import CarLink, LinkError

from driver.policy import NonFiniteOutput
from driver.preprocess import prepare_frame
from driver.units import norm_to_run

from .camera import CameraError, EndOfStream, Frame, LatestFrame, open_camera
from .drive_config import DriveConfig, DriveReport
from .limits import HostLimits
from .pulses import PulseCalibration
from .recorder import STATE_ERROR, STATE_HUMAN, STATE_LOCK, STATE_NETWORK, STATE_OVERRIDE, SessionRecorder, session_path
from .safety import Act, Check, Health, evaluate, first_ending, output_problem
from .sim_car import SimLink, actuator_from_link
from .timing import StageTimer, format_summary

log = logging.getLogger(__name__)

LAB_MODE_LABELS = ("direct", "follow", "furtive", "play", "racing")


def lab_state(state) -> int:
    """The lab state code of an MCU STATE (None: no STATE yet)."""
    if state is None:
        return STATE_ERROR
    if state.mode == Mode.FAILSAFE:
        return STATE_LOCK
    if state.mode == Mode.AUTO:
        return STATE_OVERRIDE if state.flags & StateFlags.OVERRIDE else STATE_NETWORK
    return STATE_HUMAN


class DriveLoop:
    """The loop over already-open parts; ``step()`` runs one tick and returns the ending check, if any."""

    def __init__(self, config: DriveConfig, policy, link, grabber: LatestFrame,
                 recorder: SessionRecorder | None = None, calibration: PulseCalibration | None = None,
                 view=None) -> None:
        self.config, self.policy, self.link, self.grabber, self.recorder = config, policy, link, grabber, recorder
        self.view = view  # driver.view.live.LiveView: gets each tick on a queue, never blocks the loop
        self.safety = config.safety
        self.limits = HostLimits(config.limits)
        self.cal = calibration or PulseCalibration()
        self.timer = StageTimer()
        self.report = DriveReport()
        self.stop_signal = ""  # set by the signal handler
        self._mode = config.mode if policy.modes else None
        self._last_seq = 0
        self._prev_left: np.ndarray | None = None
        self._identical = 0
        self._overruns = 0
        self._lost_acks = 0
        self._pending: dict[int, float] = {}
        self._was_model = False
        self._t_start = time.monotonic()
        self._wall0 = time.time() - self._t_start
        self._next_status = self._t_start + config.status_every_s

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
        ending = self._conclude(h)
        if ending is not None or frame is None:
            return ending
        self._act_and_send(frame, h)
        return self._conclude(h)

    def _wait_frame(self, h: Health) -> Frame | None:
        try:
            frame = self.grabber.wait_newer(self._last_seq, self.safety.camera_timeout_ms / 1000.0)
        except EndOfStream:
            h.end_of_stream = True
            return None
        except CameraError as exc:
            h.camera_error = str(exc)
            return None
        if frame is None:
            h.no_frame = True
        return frame

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

    def _act_and_send(self, frame: Frame, h: Health) -> None:
        p, timer = self.policy, self.timer
        t_tick = time.monotonic()
        timer.add("capture_age", t_tick - frame.t_capture)
        left = prepare_frame(frame.left, p.height, p.width, "frame")
        right = prepare_frame(frame.right, p.height, p.width, "right") if frame.right is not None else None
        t_pre = time.monotonic()
        timer.add("preprocess", t_pre - t_tick)
        try:
            action = p.act(left, right if (p.stereo or p.cameras == ("right",)) else None, self._mode)
        except NonFiniteOutput as exc:
            h.output_bad = f"non-finite model output ({exc})"
            return
        t_inf = time.monotonic()
        timer.add("inference", t_inf - t_pre)
        h.output_bad = output_problem(action.steer_norm, action.motor_norm)
        if not h.output_bad and not np.all(np.isfinite(action.horizon)):
            h.output_bad = "non-finite value in the predicted horizon"
        if h.output_bad:
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
                self._lost_acks = 0
                del self._pending[s]
            elif now - t > self.safety.ack_timeout_ms / 1000.0:
                self._lost_acks += 1
                self.report.lost_acks += 1
                del self._pending[s]
        h.lost_acks = self._lost_acks

    def _record(self, frame, left, right, state, controller, action, steer, thr, auto, latency) -> None:
        cal, n = self.cal, self.cal.neutral_us
        self.recorder.add(
            left, right,
            steer=cal.to_run(state.out_steer_us if state else n), motor=cal.to_run(state.out_thr_us if state else n),
            state=lab_state(state), timestamp=self._wall0 + frame.t_capture,
            controller=controller,
            rc_steer=cal.to_run(state.rc_steer_us if state else n),
            rc_motor=cal.to_run(state.rc_thr_us if state else n),
            cmd_steer=float(norm_to_run(steer)), cmd_motor=float(norm_to_run(thr)),
            model_steer=action.steer, model_motor=action.motor, auto_request=int(auto),
            mcu_mode=int(state.mode) if state else -1, mcu_flags=int(state.flags) if state else 0,
            mcu_t_ms=state.t_ms if state else 0, rc_mode_us=state.rc_mode_us if state else 0,
            frame_seq=frame.seq, capture_to_send_ms=latency * 1000.0)

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
            detail = (h.signal or h.exception or h.link_error or h.camera_error or h.output_bad
                      or {"acks_lost": f"{h.lost_acks} CMDs in a row not acked",
                          "duration": f"{self.config.seconds:g} s elapsed",
                          "camera_stale": f"no new frame for {h.camera_wait_ms:.0f} ms",
                          "camera_frozen": f"{h.identical_frames} identical frames in a row",
                          "loop_overrun": f"{h.overruns} ticks over {self.safety.deadline_ms:.1f} ms"}
                      .get(ending.name, ""))
            self.report.reason, self.report.message = ending.name, detail
            self.report.exit_code = 1 if ending.act is Act.ESTOP else 0
            logf = log.error if ending.act is Act.ESTOP else log.info
            logf("check %s fired (%s): %s → ESTOP, neutral throttle", ending.name, ending.condition, detail)
        return ending

    # ---- the whole session ----

    def run(self) -> DriveReport:
        """Tick until a check ends the session; any exception is the ``exception`` check. Always ESTOPs."""
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
            state = self.link.estop()
            self.report.estop_state = "" if state is None else Mode(state.mode).name
            self.report.seconds = time.monotonic() - self._t_start
            self.report.frames_grabbed = self.grabber.grabbed
            self.report.timings = self.timer.summary()
            log.info("drive ended after %.1f s (%s), %d ticks, %.1f Hz\n%s", self.report.seconds,
                     self.report.reason or "?", self.report.ticks, self.report.rate_hz,
                     format_summary(self.report.timings))
        return self.report


def _mode_name(state) -> str:
    return Mode(state.mode).name if state is not None and state.mode in Mode._value2member_map_ else "-"


def _install_signals(loop: DriveLoop) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame) -> None:
        loop.stop_signal = signal.Signals(signum).name

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _warm_up(policy, n: int, mode: str | None) -> None:
    if n <= 0:
        return
    blank = np.zeros((policy.height, policy.width, 3), np.uint8)
    for _ in range(n):
        policy.act(blank, blank if policy.stereo else None, mode)
    policy.reset()


def drive(config: DriveConfig, policy=None) -> DriveReport:
    """Run one drive session (see the module docstring). ``policy`` overrides loading ``config.model``.

    Startup problems (no model, camera, port or handshake) raise ValueError/DriverError before anything
    moves; once the loop runs, every problem is a named check in the report and ends in ESTOP.
    """
    import torch

    from driver.policy import load_policy

    if config.threads:
        torch.set_num_threads(config.threads)
    policy = policy or load_policy(config.model, runtime=config.runtime, device=config.device,
                                   threads=config.threads or None)
    cam_cfg = config.camera_config(stereo=policy.stereo)
    if policy.stereo and cam_cfg.kind in ("file", "v4l2") and not config.side_by_side:
        raise ValueError(f"{config.model} is a stereo model: camera {config.camera!r} gives one image; pass "
                         "side_by_side=True (--side-by-side) for a left|right camera")
    mode = config.mode if policy.modes else None
    _warm_up(policy, config.warmup, mode)
    view = None
    if config.view:  # Rerun live view (driver.view, optional extra); a bad sink fails before anything opens
        from driver.view.live import LiveView

        view = LiveView(config.view).start()
    link = CarLink(config.port, config.baud, estop_on_close=False) if config.port else SimLink()
    source = open_camera(cam_cfg, actuator=actuator_from_link(link))
    source.open()
    recorder = None
    try:
        link.open()
        grabber = LatestFrame(source).start()
        if config.record_dir:
            labels = {m: int(m == config.mode) for m in LAB_MODE_LABELS if m in (config.mode,)}
            recorder = SessionRecorder(session_path(config.record_dir), policy.height, policy.width, policy.stereo,
                                       labels=labels, attrs={"model": str(config.model), "camera": config.camera,
                                                             "port": config.port or "sim"})
        loop = DriveLoop(config, policy, link, grabber, recorder, view=view)
        previous = _install_signals(loop)
        try:
            loop.run()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            grabber.stop()
            if recorder is not None:
                path = recorder.close()
                loop.report.run_path = str(path) if path else None
    finally:
        source.close()
        link.close()
        if view is not None:
            view.close()
    return loop.report
