"""CarLink: carlink v1.2 over a serial port (pyserial), with handshake, ack tracking and a reader thread.

    with CarLink("/dev/ttyUSB0") as link:          # opens, HELLO → INFO, CAL_REQ → CAL handshake
        link.calibration                            # the MCU's endpoints (defaults from a v1.0 MCU)
        link.has_encoder                            # v1.2 firmware with a wheel encoder: ODOM at 50 Hz
        link.latest_odom                            # its newest tick count (driver.vehicle.wheel_speed → m/s)
        seq = link.send(steer_norm=0.1, throttle_norm=0.2)
        state = link.latest_state                   # newest STATE from the MCU (50 Hz and each ack)
    # leaving the block (normally or by an exception) sends ESTOP: neutral throttle, FAILSAFE latched

Every failure of the port becomes a :class:`LinkError` whose message names the port. The MCU's own watchdog
is the real guarantee that a dead host ends in neutral throttle; ESTOP on exit is the polite version.
Every STATE also goes to :attr:`CarLink.watch` (:class:`~driver.vehicle.mcu_watch.McuWatch`), which
notices a FAILSAFE the host did not ask for and modes carlink does not define.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace

from driver.errors import DriverError
from driver.vehicle.calibration import Calibration
from driver.vehicle.carlink import (
    PROTO_MINOR,
    PROTO_VERSION,
    Cal,
    CalFlags,
    CalRequest,
    Cmd,
    CmdFlags,
    FrameDecoder,
    Hello,
    Info,
    Mode,
    MsgType,
    Odom,
    State,
    encode,
)
from driver.vehicle.mcu_watch import McuWatch

log = logging.getLogger(__name__)

DEFAULT_BAUD = 115200
READ_TIMEOUT_S = 0.01     # reader thread poll period
HELLO_RETRY_S = 0.2       # resend HELLO this often during the handshake
CAL_WAIT_S = 0.25         # wait this long for CAL after each CAL_REQ (a v1.0 MCU never answers)
CAL_TRIES = 2
ACK_TIMEOUT_S = 0.2       # a CMD not acked within this is counted lost
MAX_PENDING_ACKS = 64


class LinkError(DriverError, ConnectionError):
    """The serial link to the car's MCU failed or never came up; the message names the port."""


def _port_problem(exc: Exception) -> str:
    """pyserial's open error in a few words (it nests the OS error twice: 'could not open port X: [Errno 2] ...')."""
    errno = getattr(exc, "errno", None)
    if errno == 2 or "No such file" in str(exc):
        return "no such device (is the MCU plugged in? `python -m serial.tools.list_ports` lists the ports)"
    if errno == 13 or "Permission denied" in str(exc):
        return "permission denied (add yourself to the dialout group, then log in again)"
    if errno == 16 or "busy" in str(exc).lower() or "lock" in str(exc).lower():
        return "busy: another program has it open"
    return str(exc)


@dataclass
class LinkCounters:
    """Link statistics; ``rx_drops`` are frames this host dropped, ``mcu_rx_bad`` those the MCU dropped."""

    sent: int = 0
    acked: int = 0
    lost_acks: int = 0
    lost_in_a_row: int = 0  # CMDs lost since the last ack: what the drive's acks_lost check counts
    states: int = 0
    rx_drops: int = 0
    mcu_rx_bad: int = 0


@dataclass(frozen=True)
class Ack:
    """One acknowledged CMD: its seq, the round trip from write to the STATE that acked it, that STATE."""

    seq: int
    rtt_s: float
    state: State


class CarLink:
    """A carlink v1 connection. ``port`` is a device path or any pyserial URL (``loop://``, ``spy://…``)."""

    def __init__(self, port: str, baud: int = DEFAULT_BAUD, *, handshake_timeout_s: float = 2.5,
                 ack_timeout_s: float = ACK_TIMEOUT_S, estop_on_close: bool = True) -> None:
        self.port = port
        self.baud = baud
        self.handshake_timeout_s = handshake_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.estop_on_close = estop_on_close
        self.info: Info | None = None
        self.calibration = Calibration()
        self.has_encoder = False  # v1.2 firmware that counts a wheel encoder (ODOM frames at 50 Hz)
        self._serial = None  # a pyserial port while open
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._write_lock = threading.RLock()  # one writer at a time; held across seq + pending + write
        self._reset_session()

    def _reset_session(self) -> None:
        self._decoder = FrameDecoder(accept=(MsgType.STATE, MsgType.INFO, MsgType.CAL, MsgType.ODOM))
        self._cal: Cal | None = None
        self._odom: Odom | None = None
        self._odom_t = 0.0
        self.watch = McuWatch()
        self._error: LinkError | None = None
        self._seq = 0
        self._pending: OrderedDict[int, float] = OrderedDict()  # seq -> monotonic send time
        self._acks: OrderedDict[int, Ack] = OrderedDict()
        self._counters = LinkCounters()
        self._latest: State | None = None
        self._latest_t = 0.0
        self._recent_states: deque[tuple[float, State]] = deque(maxlen=512)
        self.ack_rtts_s: deque[float] = deque(maxlen=1000)

    # ---- lifecycle ----

    def open(self) -> Info:
        """Open the port, start the reader and do the handshake (HELLO → INFO, then CAL_REQ → CAL)."""
        import serial

        if self._serial is not None:
            raise LinkError(f"{self.port}: already open")
        self._reset_session()
        try:
            self._serial = serial.serial_for_url(self.port, baudrate=self.baud, bytesize=8, parity="N",
                                                 stopbits=1, timeout=READ_TIMEOUT_S, exclusive=True)
            self._serial.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError) as exc:
            self._serial = None
            raise LinkError(f"cannot open serial port {self.port}: {_port_problem(exc)}") from exc
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_loop, name=f"carlink-reader {self.port}", daemon=True)
        self._reader.start()
        try:
            self.info = self._handshake()
            self.watch.watchdog_ms = self.info.watchdog_ms
            self.calibration = self._request_calibration()
            self.has_encoder = bool(PROTO_MINOR >= 2 and self._cal is not None and self._cal.minor >= 2
                                    and self._cal.flags & CalFlags.ENCODER)  # then ODOM comes at 50 Hz
        except BaseException:
            self.close()
            raise
        log.info("carlink up on %s: proto v%d.%d, firmware %d, watchdog %d ms, %s; %s", self.port,
                 self.info.proto_version, self._cal.minor if self._cal else 0, self.info.fw_version,
                 self.info.watchdog_ms, "wheel encoder" if self.has_encoder else "no wheel encoder",
                 self.calibration.describe())
        return self.info

    def _handshake(self) -> Info:
        deadline = time.monotonic() + self.handshake_timeout_s
        first = True
        while time.monotonic() < deadline:
            # A leading 0x00 lets the MCU's parser sync even if it saw line noise before we opened the port.
            self._write((b"\x00" if first else b"") + encode(Hello(PROTO_VERSION)))
            first = False
            with self._cond:
                self._cond.wait_for(lambda: self.info is not None or self._error is not None,
                                    timeout=min(HELLO_RETRY_S, max(0.0, deadline - time.monotonic())))
                if self._error is not None:
                    raise self._error
                if self.info is not None:
                    break
        if self.info is None:
            raise LinkError(f"no INFO reply from {self.port} within {self.handshake_timeout_s:.1f} s: is the carlink "
                            f"firmware running on it, at {self.baud} baud?")
        if self.info.proto_version != PROTO_VERSION:
            raise LinkError(f"{self.port} speaks carlink v{self.info.proto_version}; this host speaks v{PROTO_VERSION}")
        return self.info

    def _request_calibration(self) -> Calibration:
        """v1.1: ask for the MCU's endpoints; a v1.0 MCU does not answer (and counts one dropped frame)."""
        for _ in range(CAL_TRIES):
            self._write(encode(CalRequest(PROTO_MINOR)))
            with self._cond:
                self._cond.wait_for(lambda: self._cal is not None or self._error is not None, timeout=CAL_WAIT_S)
                self.raise_if_failed()
                cal = self._cal
            if cal is not None:
                try:
                    return Calibration.from_cal(cal)
                except ValueError as e:
                    raise LinkError(f"{self.port}: the MCU reports an implausible calibration: {e}") from e
        log.warning("%s: the MCU does not report its calibration (carlink v1.0 firmware): pulses are converted "
                    "with the default endpoints 1000/1500/2000 µs; flash the v1.1 firmware for calibrated labels",
                    self.port)
        return Calibration(source="assumed-default")

    def close(self) -> None:
        """Stop the reader and close the port (no ESTOP; see :meth:`__exit__`). Safe to call twice."""
        self._stop.set()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=1.0)
        self._reader = None
        if self._serial is not None:
            try:
                self._serial.close()
            except OSError as exc:  # serial.SerialException is an OSError (IOError)
                log.debug("closing %s: %s", self.port, exc)
            self._serial = None

    def reconnect(self) -> Info:
        """Close and open the same port again (after the MCU reset or the USB adapter re-enumerated)."""
        self.close()
        self.info = None
        return self.open()

    def __enter__(self) -> CarLink:
        if self._serial is None:
            self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None or self.estop_on_close:
                self.estop()
        finally:
            self.close()

    # ---- sending ----

    def send(self, steer_norm: float, throttle_norm: float, auto: bool = True, estop: bool = False) -> int:
        """Send one CMD from normalised [-1, 1] values (clamped); returns its seq. Raises LinkError, ValueError."""
        if not (math.isfinite(steer_norm) and math.isfinite(throttle_norm)):
            raise ValueError(f"non-finite command steer={steer_norm} throttle={throttle_norm}")
        flags = (CmdFlags.AUTO_REQUEST if auto else CmdFlags.NONE) | (CmdFlags.ESTOP if estop else CmdFlags.NONE)
        if estop:
            self.watch.estop()
        with self._write_lock:
            seq = self._next_seq()
            self._send_cmd(Cmd.from_norm(seq, steer_norm, throttle_norm, flags))
        return seq

    def send_permille(self, steer: int, throttle: int, flags: CmdFlags = CmdFlags.AUTO_REQUEST) -> int:
        """Send one CMD in wire units (per-mille, clamped); returns its seq."""
        with self._write_lock:
            seq = self._next_seq()
            self._send_cmd(Cmd(seq, steer, throttle, flags))
        return seq

    def estop(self, repeats: int = 3, wait_s: float = 0.1) -> State | None:
        """Send ESTOP (neutral, FAILSAFE latched) ``repeats`` times; returns the FAILSAFE STATE seen, if any.

        Never raises: this runs on the way out of errors. Failures are logged.
        """
        self.watch.estop()
        for _ in range(repeats):
            try:  # best effort even after the link was marked failed: try the port anyway
                with self._write_lock:
                    frame = encode(Cmd(self._next_seq(), 0, 0, CmdFlags.ESTOP))
                    if self._serial is None:
                        raise LinkError(f"{self.port}: not open")
                    self._serial.write(frame)
            except OSError as exc:  # LinkError and serial.SerialException included
                log.warning("ESTOP not sent on %s: %s (the MCU watchdog will stop the car)", self.port, exc)
                return None
            time.sleep(0.005)
        try:
            return self.wait_state(lambda s: s.mode == Mode.FAILSAFE, timeout_s=wait_s)
        except (LinkError, TimeoutError):
            log.warning("no FAILSAFE STATE from %s after ESTOP", self.port)
            return None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF  # starts at 1: a STATE before any CMD carries ack 0
        return self._seq

    def _send_cmd(self, cmd: Cmd) -> None:
        now = time.monotonic()
        with self._cond:
            self._expire_pending(now)
            self._pending.pop(cmd.seq, None)
            self._acks.pop(cmd.seq, None)
            self._pending[cmd.seq] = now
            while len(self._pending) > MAX_PENDING_ACKS:
                self._pending.popitem(last=False)
                self._count_lost()
            self._counters.sent += 1
        self._write(encode(cmd))

    def _write(self, data: bytes) -> None:
        self.raise_if_failed()
        if self._serial is None:
            raise LinkError(f"{self.port}: not open")
        try:
            with self._write_lock:
                self._serial.write(data)
        except OSError as exc:  # serial.SerialException is an OSError
            self._fail(LinkError(f"write to {self.port} failed: {exc}"))
            raise self._error from exc

    # ---- receiving ----

    def _read_loop(self) -> None:
        ser = self._serial
        while not self._stop.is_set():
            try:
                data = ser.read(max(1, ser.in_waiting))
            except (OSError, TypeError, AttributeError) as exc:  # serial.SerialException is an OSError
                if not self._stop.is_set():
                    self._fail(LinkError(f"lost the link on {self.port}: {exc}"))
                return
            if data:
                self._on_bytes(data, time.monotonic())

    def _on_bytes(self, data: bytes, now: float) -> None:
        messages = self._decoder.feed(data)
        with self._cond:
            self._counters.rx_drops = self._decoder.drops.total
            for msg in messages:
                if isinstance(msg, Info):
                    self.info = msg
                elif isinstance(msg, Cal):
                    self._cal = msg
                elif isinstance(msg, Odom):
                    self._odom, self._odom_t = msg, now
                elif isinstance(msg, State):
                    self.watch.observe(msg)
                    self._on_state(msg, now)
            self._expire_pending(now)
            self._cond.notify_all()

    def _on_state(self, state: State, now: float) -> None:
        self._latest, self._latest_t = state, now
        self._recent_states.append((now, state))
        self._counters.states += 1
        self._counters.mcu_rx_bad = state.rx_bad
        sent_at = self._pending.pop(state.ack, None)
        if sent_at is None:
            return  # a 50 Hz STATE repeating an ack we already have
        rtt = now - sent_at
        self._counters.acked += 1
        self.ack_rtts_s.append(rtt)
        self._acks[state.ack] = Ack(state.ack, rtt, state)
        while len(self._acks) > MAX_PENDING_ACKS:
            self._acks.popitem(last=False)
        # CMDs sent before the acked one and still pending will never be acked: the MCU moved past them.
        for seq in [s for s, t in self._pending.items() if t < sent_at]:
            del self._pending[seq]
            self._count_lost()
        self._counters.lost_in_a_row = 0  # an ack arrived after those: the run of losses is broken

    def _expire_pending(self, now: float) -> None:
        for seq in [s for s, t in self._pending.items() if now - t > self.ack_timeout_s]:
            del self._pending[seq]
            self._count_lost()

    def _count_lost(self) -> None:
        """The one place a CMD is counted lost (no ack within ``ack_timeout_s``, or overtaken by a later ack)."""
        self._counters.lost_acks += 1
        self._counters.lost_in_a_row += 1

    def _fail(self, error: LinkError) -> None:
        log.error("%s", error)
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    # ---- queries ----

    def raise_if_failed(self) -> None:
        """Raise the LinkError the reader or a write recorded, if any."""
        if self._error is not None:
            raise self._error

    @property
    def latest_state(self) -> State | None:
        """The newest STATE received (or None before the first)."""
        return self._latest

    @property
    def latest_state_age_s(self) -> float:
        """Seconds since the newest STATE arrived (inf before the first). The MCU sends one at least at 50 Hz."""
        return time.monotonic() - self._latest_t if self._latest is not None else math.inf

    @property
    def latest_odom(self) -> Odom | None:
        """The newest ODOM (v1.2 wheel encoder; None before the first, and always without an encoder)."""
        return self._odom

    @property
    def latest_odom_age_s(self) -> float:
        """Seconds since the newest ODOM arrived (inf before the first). A v1.2 MCU sends one at 50 Hz."""
        return time.monotonic() - self._odom_t if self._odom is not None else math.inf

    @property
    def counters(self) -> LinkCounters:
        with self._cond:
            return replace(self._counters)

    @property
    def last_ack(self) -> Ack | None:
        """The most recent acknowledged CMD (or None)."""
        with self._cond:
            return next(reversed(self._acks.values()), None)

    def ack_for(self, seq: int) -> Ack | None:
        with self._cond:
            return self._acks.get(seq & 0xFF)

    def wait_ack(self, seq: int, timeout_s: float = ACK_TIMEOUT_S) -> Ack | None:
        """Wait for the STATE acking ``seq``; None if it did not come in time. Raises LinkError."""
        with self._cond:
            self._cond.wait_for(lambda: (seq & 0xFF) in self._acks or self._error is not None, timeout=timeout_s)
            self.raise_if_failed()
            return self._acks.get(seq & 0xFF)

    def wait_state(self, predicate, timeout_s: float) -> State:
        """Wait for a STATE (the current one included) satisfying ``predicate``; raises TimeoutError, LinkError."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._error is not None or (self._latest is not None and predicate(self._latest)),
                timeout=timeout_s)
            self.raise_if_failed()
            if not ok:
                raise TimeoutError(f"{self.port}: no matching STATE within {timeout_s:.2f} s (latest {self._latest})")
            return self._latest

    def drain_states(self) -> list[tuple[float, State]]:
        """(monotonic receive time, STATE) pairs received since the last call (at most the last 512)."""
        with self._cond:
            states = list(self._recent_states)
            self._recent_states.clear()
            return states
