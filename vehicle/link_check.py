"""``driver link --port P``: check the car link without moving the car.

Handshakes, reports the MCU's protocol/firmware version and watchdog, measures CMD→ack round trips at the
control rate, and records the RC receiver live. With a wheel encoder (carlink v1.2) it counts its ticks over
the check: push the car along a measured line meanwhile and ``metres / ticks`` is ``--wheel-m-per-tick``.
Every CMD has throttle 0, steering 0 and AUTO_REQUEST clear, so the MCU never follows them: in MANUAL the
human keeps driving; with the mode switch in AUTO the MCU goes FAILSAFE (neutral throttle) and needs the
switch cycled through MANUAL afterwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from driver.vehicle.carlink import CmdFlags, Mode, StateFlags
from driver.vehicle.link import DEFAULT_BAUD, CarLink
from driver.vehicle.wheel_speed import WheelSpeed

log = logging.getLogger(__name__)

CHECK_RATE_HZ = 50.0
ACK_WAIT_S = 0.1
SLOW_RTT_MS = 20.0  # a p99 above this usually means the USB adapter's latency timer (FTDI: 16 ms default)


@dataclass(frozen=True)
class LinkCheckConfig:
    """``driver link``: each field's trailing comment is its flag's help."""

    port: str = ""  # the MCU's serial port, e.g. /dev/ttyUSB0
    seconds: float = 3.0  # how long to send CMDs and measure round trips
    baud: int = DEFAULT_BAUD  # serial baud rate
    wheel_m_per_tick: float = 0.0  # metres per wheel-encoder tick: also show distance and speed (0: ticks only)

    def __post_init__(self) -> None:
        if not self.port:
            raise ValueError("port is empty: name a serial device, e.g. /dev/ttyUSB0")
        if not 0 < self.seconds <= 600:
            raise ValueError(f"seconds={self.seconds} must be in (0, 600]")
        if self.baud <= 0:
            raise ValueError(f"baud={self.baud} must be a positive rate, e.g. 115200")
        if not 0.0 <= self.wheel_m_per_tick <= 10.0:
            raise ValueError(f"wheel_m_per_tick={self.wheel_m_per_tick} must be in 0..10 m (0 = ticks only)")


@dataclass(frozen=True)
class RcSample:
    """One STATE's view of the RC receiver, ``t_s`` after the check started."""

    t_s: float
    rc_steer_us: int
    rc_thr_us: int
    rc_mode_us: int
    mode: Mode
    flags: StateFlags


@dataclass
class LinkReport:
    port: str
    baud: int
    proto_version: int
    fw_version: int
    watchdog_ms: int
    cmds_sent: int = 0
    acked: int = 0
    lost_acks: int = 0
    rtt_ms: list[float] = field(default_factory=list)
    host_rx_drops: int = 0
    mcu_rx_bad: int = 0
    samples: list[RcSample] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibration: str = ""  # the MCU's endpoints (Calibration.describe)
    encoder: bool = False  # the MCU counts a wheel encoder (carlink v1.2)
    wheel_ticks: int = 0  # encoder ticks counted during the check
    wheel_seconds: float = 0.0  # MCU time between the first and last ODOM of the check
    wheel_m_per_tick: float = 0.0
    wheel_top_speed: float = 0.0  # m/s, with wheel_m_per_tick

    def rtt_percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.rtt_ms, q)) if self.rtt_ms else float("nan")

    @property
    def rtt_p50_ms(self) -> float:
        return self.rtt_percentile_ms(50)

    @property
    def rtt_p99_ms(self) -> float:
        return self.rtt_percentile_ms(99)

    @property
    def ok(self) -> bool:
        """The link works: CMDs are acked and at most 1 % of acks were lost."""
        return self.acked > 0 and self.lost_acks <= 0.01 * self.cmds_sent


def check_link(config: LinkCheckConfig) -> LinkReport:
    """Run the check; raises :class:`driver.vehicle.link.LinkError` if the port or handshake fails."""
    with CarLink(config.port, config.baud, estop_on_close=False) as link:
        info = link.info
        report = LinkReport(config.port, config.baud, info.proto_version, info.fw_version, info.watchdog_ms,
                            calibration=link.calibration.describe(), encoder=link.has_encoder,
                            wheel_m_per_tick=config.wheel_m_per_tick)
        wheel = WheelSpeed(config.wheel_m_per_tick or 1.0) if link.has_encoder else None
        first_odom = None
        mcu_bad_start = link.latest_state.rx_bad if link.latest_state else 0
        start = time.monotonic()
        link.drain_states()
        period = 1.0 / CHECK_RATE_HZ
        next_tick = start
        while time.monotonic() - start < config.seconds:
            seq = link.send_permille(0, 0, CmdFlags.NONE)
            ack = link.wait_ack(seq, ACK_WAIT_S)
            if ack is not None:
                report.rtt_ms.append(ack.rtt_s * 1000.0)
            for t, s in link.drain_states():
                report.samples.append(RcSample(t - start, s.rc_steer_us, s.rc_thr_us, s.rc_mode_us, s.mode, s.flags))
            odom = link.latest_odom
            if wheel is not None and odom is not None:
                first_odom = first_odom or odom
                speed = wheel.observe(odom)
                if config.wheel_m_per_tick:
                    report.wheel_top_speed = max(report.wheel_top_speed, speed)
                report.wheel_ticks = wheel.ticks_total
                report.wheel_seconds = ((odom.t_ms - first_odom.t_ms) & 0xFFFFFFFF) / 1000.0
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))
        time.sleep(ACK_WAIT_S)  # let the last acks arrive before counting
        counters = link.counters
        report.cmds_sent, report.acked, report.lost_acks = counters.sent, counters.acked, counters.lost_acks
        report.host_rx_drops = counters.rx_drops
        report.mcu_rx_bad = (counters.mcu_rx_bad - mcu_bad_start) & 0xFF
    report.warnings = _warnings(report)
    return report


def _warnings(report: LinkReport) -> list[str]:
    warnings = []
    if report.lost_acks:
        warnings.append(f"{report.lost_acks} of {report.cmds_sent} CMDs were not acked")
    if report.host_rx_drops or report.mcu_rx_bad:
        warnings.append(f"corrupted frames: {report.host_rx_drops} dropped here, {report.mcu_rx_bad} by the MCU "
                        "(check the cable, ground and baud rate)")
    if report.rtt_ms and report.rtt_p99_ms > SLOW_RTT_MS:
        warnings.append(f"slow round trips (p99 {report.rtt_p99_ms:.1f} ms): for FTDI adapters set "
                        "/sys/bus/usb-serial/devices/ttyUSB0/latency_timer to 1")
    if any(s.flags & StateFlags.RC_LOST for s in report.samples[-5:]):
        warnings.append("RC receiver lost: no pulses on at least one channel (steer D2, throttle D3, mode D4)")
    if report.calibration.endswith("(assumed-default)"):
        warnings.append("the MCU does not report its calibration (carlink v1.0 firmware): flash the v1.1 firmware so "
                        "recorded labels use the car's own endpoints")
    if report.samples and report.samples[-1].mode == Mode.FAILSAFE:
        warnings.append("MCU is in FAILSAFE: cycle the mode switch through MANUAL to clear it")
    return warnings


def format_link_report(report: LinkReport) -> str:
    """A few human-readable lines for the terminal."""
    lines = [
        f"carlink on {report.port} @ {report.baud}: protocol v{report.proto_version}, firmware {report.fw_version}, "
        f"MCU watchdog {report.watchdog_ms} ms",
        f"round trip over {len(report.rtt_ms)} CMDs: p50 {report.rtt_p50_ms:.2f} ms, p99 {report.rtt_p99_ms:.2f} ms; "
        f"{report.acked}/{report.cmds_sent} acked, {report.lost_acks} lost",
        f"frames dropped: {report.host_rx_drops} here, {report.mcu_rx_bad} by the MCU",
    ]
    if report.samples:
        last = report.samples[-1]
        name = last.mode.name if isinstance(last.mode, Mode) else str(last.mode)
        lines.append(f"RC now: steer {last.rc_steer_us} us, throttle {last.rc_thr_us} us, mode switch "
                     f"{last.rc_mode_us} us; MCU mode {name}, flags {_flag_names(last.flags)}")
        for label, values in (("steer", [s.rc_steer_us for s in report.samples]),
                              ("throttle", [s.rc_thr_us for s in report.samples]),
                              ("mode", [s.rc_mode_us for s in report.samples])):
            lines.append(f"  {label:8s} {min(values)}..{max(values)} us over {len(values)} samples")
    else:
        lines.append("RC: no STATE received")
    lines.append(f"calibration: {report.calibration}")
    if not report.encoder:
        lines.append("wheel encoder: none reported (carlink v1.2 firmware built with ENCODER=1 counts one on D5)")
    elif report.wheel_m_per_tick:
        lines.append(f"wheel encoder: {report.wheel_ticks} ticks in {report.wheel_seconds:.1f} s = "
                     f"{report.wheel_ticks * report.wheel_m_per_tick:.2f} m at {report.wheel_m_per_tick:g} m/tick, "
                     f"top speed {report.wheel_top_speed:.2f} m/s")
    else:
        lines.append(f"wheel encoder: {report.wheel_ticks} ticks in {report.wheel_seconds:.1f} s (push the car along "
                     "a measured line during the check: metres / ticks = --wheel-m-per-tick)")
    lines += [f"warning: {w}" for w in report.warnings]
    lines.append("link OK" if report.ok else "link FAILED")
    return "\n".join(lines)


def _flag_names(flags: StateFlags) -> str:
    names = [f.name for f in StateFlags if f and f in flags]
    return "|".join(names) if names else "none"
