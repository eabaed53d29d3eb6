"""The simulator on the car's interfaces: a camera whose car moves with the MCU's outputs, and an MCU stand-in.

``--camera sim`` renders the view of a simulated car (:mod:`driver.sim`) on a generated track. The car is
driven by what the servo and ESC would actually receive:

* with ``--port`` (a real or fake MCU): the ``out_steer_us``/``out_thr_us`` reported in the MCU's STATE,
  so the MCU's mode switch, override, watchdog and FAILSAFE act on the simulated car exactly as on a
  real one (the human's RC passes through in MANUAL);
* without a port: :class:`SimLink`, an in-process stand-in for the MCU that acknowledges every CMD and
  outputs it (mode AUTO, no human), and neutral throttle after ESTOP. Its wheel encoder counts the
  simulated car's wheel travel (:data:`SIM_M_PER_TICK` metres a tick), in carlink v1.2 ODOM frames.

Either way the actuator is read from the link's latest STATE, never from the loop's own intentions, and
converted with the MCU's reported calibration. The camera also scores the drive as ``driver sim drive``
does (:meth:`SimCamera.driving`): cross-track error, and a virtual intervention (the car put back on the
centreline a little ahead) whenever it leaves its lane or faces the wrong way, for PilotNet's autonomy.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from driver.vehicle.carlink import PROTO_VERSION, Info, Mode, Odom, State, StateFlags
from driver.vehicle.link import Ack, LinkCounters

from .calibration import Calibration
from .camera import CameraConfig, CameraSource, Pacer
from .mcu_watch import McuWatch

log = logging.getLogger(__name__)

Actuator = Callable[[], tuple[float, float]]  # -> (steer_norm, motor_norm) the car receives now
RESET_AHEAD_M = 0.5  # an intervention puts the car back on the centreline this far ahead (as sim drive does)
SIM_M_PER_TICK = 0.005  # the simulated wheel encoder: 200 ticks a metre


def actuator_from_link(link) -> Actuator:
    """The servo/ESC commands the MCU reports (``out_*_us`` of its latest STATE) as normalised values,
    converted with the link's calibration (read when called: it is known once the link is open)."""

    def read() -> tuple[float, float]:
        state = link.latest_state
        if state is None:
            return 0.0, 0.0
        cal = link.calibration
        return cal.steer.us_to_norm(state.out_steer_us), cal.throttle.us_to_norm(state.out_thr_us)

    return read


@dataclass(frozen=True)
class SimDriving:
    """How well the simulated car drove: PilotNet autonomy over the session, cross-track error, distance."""

    seconds: float
    distance_m: float
    interventions: int
    autonomy_pct: float
    mean_abs_cte_m: float
    max_abs_cte_m: float
    track_seed: int

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"sim track {self.track_seed}: autonomy {self.autonomy_pct:.1f}% ({self.interventions} "
                f"interventions in {self.seconds:.1f} s, {self.distance_m:.1f} m), cross-track |e| mean "
                f"{self.mean_abs_cte_m:.3f} m, max {self.max_abs_cte_m:.3f} m")


class SimCamera(CameraSource):
    """A simulated car on track ``seed`` (split "eval"): each read steps the car by one frame period with the
    actuator's values, then renders its camera. Paced in real time to ``config.fps``."""

    def __init__(self, config: CameraConfig, seed: int = 0, actuator: Actuator | None = None,
                 stereo: bool = False) -> None:
        self.config, self.seed, self.stereo = config, seed, stereo
        self.actuator: Actuator = actuator or (lambda: (0.0, 0.0))
        self.name = f"sim:{seed}"
        self._pacer = Pacer(1.0 / config.fps)
        self.pose_log: list[tuple[float, float, float, float]] = []  # x, y, yaw, speed per frame
        self.wheel_m = 0.0  # wheel travel (what an encoder counts: |speed| integrated, reversing included)
        self.sim_s = 0.0  # simulated time: one frame period per step, however late the host runs

    def open(self) -> None:
        from driver.sim.camera import Renderer
        from driver.sim.car import Car
        from driver.sim.track import make_track

        self.track = make_track(self.seed, "eval")
        h, w = self.config.height or 94, self.config.width or 168
        self.renderer = Renderer(self.track, h, w, self.stereo, seed=self.seed)
        self.car = Car()
        self.car.reset(*self.track.point_at(0.0))
        self._started = False
        self._cte: list[float] = []
        self._interventions = 0
        self._distance = 0.0

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._started:
            steer, motor = self.actuator()
            self._step(steer, motor)
        self._started = True
        self._pacer.wait()
        st = self.car.state
        self.pose_log.append((st.x, st.y, st.yaw, st.speed))
        return self.renderer.render(st.x, st.y, st.yaw)

    def _step(self, steer: float, motor: float) -> None:
        from driver.sim.closed_loop import WRONG_WAY_RAD

        st = self.car.state
        x0, y0 = st.x, st.y
        self.car.step(steer, motor, 1.0 / self.config.fps)
        st = self.car.state
        self._distance += math.hypot(st.x - x0, st.y - y0)
        self.wheel_m += abs(st.speed) / self.config.fps
        self.sim_s += 1.0 / self.config.fps
        loc = self.track.locate(st.x, st.y)
        self._cte.append(loc.lateral)
        heading_err = math.atan2(math.sin(st.yaw - loc.heading), math.cos(st.yaw - loc.heading))
        if abs(loc.lateral) > self.track.lane_width / 2 or abs(heading_err) > WRONG_WAY_RAD:
            self._interventions += 1
            self.car.reset(*self.track.point_at(loc.progress + RESET_AHEAD_M), speed=max(st.speed, 0.0))

    def driving(self) -> SimDriving | None:
        """The drive so far, scored as ``driver sim drive`` scores it; None before the car first moved."""
        from driver.sim.closed_loop import autonomy_percent

        if not getattr(self, "_cte", None):
            return None
        seconds = len(self._cte) / self.config.fps
        cte = np.abs(np.asarray(self._cte))
        return SimDriving(seconds, self._distance, self._interventions,
                          autonomy_percent(self._interventions, seconds), float(cte.mean()), float(cte.max()),
                          self.seed)


@dataclass
class _Cmd:
    steer_permille: int = 0
    thr_permille: int = 0
    auto: bool = False


class SimLink:
    """An in-process MCU for ``--camera sim`` without ``--port``: same methods the drive loop uses on CarLink.

    Every CMD is acked at once with a STATE whose outputs follow it (mode AUTO: there is no human) while
    AUTO_REQUEST is set; ESTOP latches FAILSAFE with neutral throttle and held steering.
    """

    def __init__(self, calibration: Calibration | None = None, watchdog_ms: int = 150,
                 m_per_tick: float = SIM_M_PER_TICK) -> None:
        self.port = "sim"
        self.m_per_tick = m_per_tick
        self._wheel_m: Callable[[], float] | None = None  # set by attach_wheel once the sim camera exists
        self._wheel_clock: Callable[[], float] | None = None  # its simulated clock (s), set with it
        self._ticks, self._tick_ms = 0, 0
        self.calibration = calibration or Calibration(source="sim")
        self.watch = McuWatch(watchdog_ms)
        self.info: Info | None = None
        self._watchdog_ms = watchdog_ms
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._seq = 0
        self._state_seq = 0
        self._acks: dict[int, Ack] = {}
        self._latest: State | None = None
        self._failsafe = False
        self._counters = LinkCounters()
        self.ack_rtts_s: list[float] = []

    def open(self) -> Info:
        self.info = Info(PROTO_VERSION, 0, self._watchdog_ms)
        self._publish(_Cmd(), ack=0)
        return self.info

    def close(self) -> None:
        pass

    def raise_if_failed(self) -> None:
        pass

    def _publish(self, cmd: _Cmd, ack: int) -> State:
        steer, thr = self.calibration.steer, self.calibration.throttle
        if self._failsafe:
            mode = Mode.FAILSAFE
            steer_us = self._latest.out_steer_us if self._latest else steer.neutral_us
            thr_us = thr.neutral_us
        elif cmd.auto:
            mode = Mode.AUTO
            steer_us, thr_us = steer.permille_to_us(cmd.steer_permille), thr.permille_to_us(cmd.thr_permille)
        else:
            mode, steer_us, thr_us = Mode.MANUAL, steer.neutral_us, thr.neutral_us
        self._state_seq = (self._state_seq + 1) & 0xFF
        self._latest = State(self._state_seq, ack, int((time.monotonic() - self._t0) * 1000) & 0xFFFFFFFF,
                             steer.neutral_us, thr.neutral_us, 2000 if cmd.auto else 1000, steer_us, thr_us, mode,
                             StateFlags.NONE, 0)
        self.watch.observe(self._latest)
        self._counters.states += 1
        return self._latest

    def send(self, steer_norm: float, throttle_norm: float, auto: bool = True, estop: bool = False) -> int:
        from driver.units import norm_to_permille

        t = time.monotonic()
        with self._lock:
            self._seq = (self._seq + 1) & 0xFF
            if estop:
                self.watch.estop()
                self._failsafe = True
            state = self._publish(_Cmd(norm_to_permille(steer_norm), norm_to_permille(throttle_norm), auto),
                                  self._seq)
            rtt = time.monotonic() - t
            self._acks[self._seq] = Ack(self._seq, rtt, state)
            self.ack_rtts_s.append(rtt)
            self._counters.sent += 1
            self._counters.acked += 1
            return self._seq

    def estop(self, repeats: int = 3, wait_s: float = 0.1) -> State | None:
        for _ in range(repeats):
            self.send(0.0, 0.0, auto=False, estop=True)
        return self._latest

    @property
    def latest_state(self) -> State | None:
        return self._latest

    @property
    def has_encoder(self) -> bool:
        """An encoder once a sim camera's car is attached (:meth:`attach_wheel`)."""
        return self._wheel_m is not None

    def attach_wheel(self, wheel_m: Callable[[], float], clock_s: Callable[[], float]) -> None:
        """The encoder counts this wheel travel (m) on this clock (s): the sim camera's car
        (:attr:`SimCamera.wheel_m`, :attr:`SimCamera.sim_s`), so the speed read is the simulated car's even
        when a busy host runs the simulation slower than real time."""
        self._wheel_m, self._wheel_clock = wheel_m, clock_s

    @property
    def latest_odom(self) -> Odom | None:
        """An ODOM read now: the wheel travel in ticks, stamped when the count last changed."""
        if self._wheel_m is None:
            return None
        with self._lock:
            now_ms = int(round(self._wheel_clock() * 1000)) & 0xFFFFFFFF
            ticks = int(self._wheel_m() / self.m_per_tick) & 0xFFFFFFFF
            if ticks != self._ticks:
                self._ticks, self._tick_ms = ticks, now_ms
            return Odom(now_ms, self._ticks, self._tick_ms)

    @property
    def latest_odom_age_s(self) -> float:
        return 0.0  # read on demand: never stale

    @property
    def counters(self) -> LinkCounters:
        return self._counters

    def ack_for(self, seq: int) -> Ack | None:
        with self._lock:
            return self._acks.get(seq & 0xFF)
