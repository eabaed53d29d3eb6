"""Host-side safety as data: named checks over the loop's health counters, each with a threshold and action.

Each tick the drive loop updates a :class:`Health` and calls :func:`evaluate`; the checks that fire say
what happens. ``ESTOP`` ends the session as a fault (ESTOP frames → neutral throttle, exit code 1);
``STOP`` ends it cleanly (ESTOP frames all the same, exit code 0); ``RESET`` forgets the policy's
recurrent state and carries on. The MCU's command watchdog covers everything the host cannot: a killed or
hung host, a pulled USB cable; when it acts (or the receiver is lost) the ``mcu_failsafe`` check ends the
session as a fault, so a session whose MCU latched FAILSAFE is never reported clean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

STUCK_THROTTLE = 0.15  # normalised forward throttle output at which a turning wheel is expected

class Act(Enum):
    RESET = "reset recurrent state, continue"
    STOP = "ESTOP, clean stop (exit 0)"
    ESTOP = "ESTOP, fault (exit 1)"


@dataclass(frozen=True)
class SafetyConfig:
    """Thresholds of the checks (their CLI flags are the field names with dashes)."""

    camera_timeout_ms: float = 250.0  # no new frame within this → camera_stale (keepalives hold the MCU meanwhile)
    frozen_frames: int = 15  # this many identical frames in a row → camera_frozen (0: off)
    max_lost_acks: int = 5  # this many CMDs in a row not acked → acks_lost
    ack_timeout_ms: float = 200.0  # a CMD not acked within this is lost
    deadline_ms: float = 0.0  # capture → send budget per tick (0: one frame period)
    max_overruns: int = 10  # this many ticks in a row over the deadline → loop_overrun
    gap_frames: int = 3  # more frames than this skipped between ticks → reset the recurrent state
    output_margin: float = 0.25  # raw model output beyond ±(1 + this), or NaN/inf → output_invalid
    wheel_timeout_ms: float = 100.0  # reading the wheel encoder and no ODOM within this → wheel_stale
    wheel_stuck_ms: float = 1500.0  # forward throttle output this long with no encoder tick → wheel_stuck

    def __post_init__(self) -> None:
        ranges = {"camera_timeout_ms": (10.0, 10000.0), "ack_timeout_ms": (5.0, 5000.0),
                  "deadline_ms": (0.0, 10000.0), "wheel_timeout_ms": (20.0, 10000.0),
                  "wheel_stuck_ms": (100.0, 60000.0)}
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"{name}={value!r} must be in {lo:g}..{hi:g} ms")
        if not (isinstance(self.output_margin, int | float) and 0.0 <= self.output_margin <= 10.0):
            raise ValueError(f"output_margin={self.output_margin!r} must be in 0..10 (normalised units)")
        counts = {"frozen_frames": (0, 100000), "max_lost_acks": (1, 100000), "max_overruns": (1, 100000),
                  "gap_frames": (0, 100000)}
        for name, (lo, hi) in counts.items():
            value = getattr(self, name)
            if not (isinstance(value, int) and lo <= value <= hi):
                raise ValueError(f"{name}={value!r} must be an integer in {lo}..{hi}")


@dataclass
class Health:
    """What the loop observed, updated every tick (counters are consecutive unless noted)."""

    camera_wait_ms: float = 0.0  # how long the last wait for a new frame took (timeout included)
    no_frame: bool = False  # the wait timed out
    end_of_stream: bool = False
    camera_error: str = ""
    identical_frames: int = 0
    frames_skipped: int = 0  # frames grabbed but never used between this tick and the last
    output_bad: str = ""  # description of a non-finite / out-of-range raw model output
    lost_acks: int = 0
    link_error: str = ""
    overruns: int = 0
    exception: str = ""
    signal: str = ""
    time_up: bool = False  # DriveConfig.seconds elapsed
    mode_to_auto: bool = False  # the MCU entered AUTO (model drives) since the last tick
    mcu_failsafe: str = ""  # the MCU went FAILSAFE without a host ESTOP (watchdog, RC loss), described
    mcu_mode_unknown: str = ""  # the MCU reported a mode carlink does not define, described
    wheel_age_ms: float = 0.0  # since the newest ODOM (0 when the session does not read the encoder)
    wheel_stuck_ms: float = 0.0  # forward throttle ≥ STUCK_THROTTLE output with no encoder tick, this long


@dataclass(frozen=True)
class Check:
    """One named safety check: when it fires (``condition``, for people), its threshold field, its action."""

    name: str
    condition: str
    threshold: str
    act: Act
    fires: Callable[[Health, SafetyConfig], bool]


CHECKS: tuple[Check, ...] = (
    Check("signal", "SIGINT or SIGTERM received", "-", Act.STOP, lambda h, c: bool(h.signal)),
    Check("duration", "the session's --seconds elapsed", "seconds", Act.STOP, lambda h, c: h.time_up),
    Check("end_of_stream", "a file/replay camera ran out of frames", "-", Act.STOP, lambda h, c: h.end_of_stream),
    Check("exception", "any unexpected exception in the loop", "-", Act.ESTOP, lambda h, c: bool(h.exception)),
    Check("link_error", "the serial port failed (write error, device gone, hangup)", "-", Act.ESTOP,
          lambda h, c: bool(h.link_error)),
    Check("mcu_failsafe", "the MCU went FAILSAFE without a host ESTOP (its watchdog fired, RC lost)", "-", Act.ESTOP,
          lambda h, c: bool(h.mcu_failsafe)),
    Check("mcu_mode_unknown", "the MCU reported a mode carlink does not define", "-", Act.ESTOP,
          lambda h, c: bool(h.mcu_mode_unknown)),
    Check("acks_lost", "consecutive CMDs without an ack within ack_timeout_ms", "max_lost_acks", Act.ESTOP,
          lambda h, c: h.lost_acks >= c.max_lost_acks),
    Check("wheel_stale", "the session reads the wheel encoder and no ODOM arrived within wheel_timeout_ms",
          "wheel_timeout_ms", Act.ESTOP, lambda h, c: h.wheel_age_ms > c.wheel_timeout_ms),
    Check("wheel_stuck", f"the MCU output forward throttle ≥ {STUCK_THROTTLE} for wheel_stuck_ms while the "
          "encoder counted no tick (encoder unplugged, or the car blocked)", "wheel_stuck_ms", Act.ESTOP,
          lambda h, c: h.wheel_stuck_ms >= c.wheel_stuck_ms),
    Check("camera_error", "the camera failed (device error, unplugged)", "-", Act.ESTOP,
          lambda h, c: bool(h.camera_error)),
    Check("camera_stale", "no new frame within camera_timeout_ms", "camera_timeout_ms", Act.ESTOP,
          lambda h, c: h.no_frame),
    Check("camera_frozen", "frozen_frames identical frames in a row", "frozen_frames", Act.ESTOP,
          lambda h, c: c.frozen_frames > 0 and h.identical_frames >= c.frozen_frames),
    Check("output_invalid", "the raw model output is non-finite or beyond ±(1 + output_margin), before any clamp",
          "output_margin", Act.ESTOP, lambda h, c: bool(h.output_bad)),
    Check("loop_overrun", "max_overruns ticks in a row took longer than deadline_ms", "max_overruns", Act.ESTOP,
          lambda h, c: h.overruns >= c.max_overruns),
    Check("frame_gap", "more than gap_frames frames skipped between two ticks", "gap_frames", Act.RESET,
          lambda h, c: h.frames_skipped > c.gap_frames),
    Check("mode_to_auto", "the MCU entered AUTO (the model takes over)", "-", Act.RESET,
          lambda h, c: h.mode_to_auto),
)

CHECKS_BY_NAME = {c.name: c for c in CHECKS}


def evaluate(health: Health, config: SafetyConfig) -> list[Check]:
    """The checks that fire, in table order (so the first ending check is the most fundamental)."""
    return [c for c in CHECKS if c.fires(health, config)]


def first_ending(fired: list[Check]) -> Check | None:
    """The check that ends the session, if any: a fault (ESTOP) wins over a clean STOP."""
    faults = [c for c in fired if c.act is Act.ESTOP]
    if faults:
        return faults[0]
    stops = [c for c in fired if c.act is Act.STOP]
    return stops[0] if stops else None


def output_problem(raw, margin: float) -> str:
    """Empty when a raw model output (horizon, 2) of normalised (steer, motor) is usable, else what is wrong.

    Checked before any clamp: every value must be finite, and the step that drives (the first) within
    ±(1 + margin): a linear (unsquashed) head may overshoot full lock a little, and that is clamped.
    """
    for step, pair in enumerate(raw):
        for name, v in zip(("steer", "motor"), pair, strict=True):
            v = float(v)
            if not math.isfinite(v):
                return f"{name}={v} at horizon step {step}"
            if step == 0 and abs(v) > 1.0 + margin:
                return f"{name}={v:.4g} beyond ±{1.0 + margin:g}"
    return ""


def checks_table_markdown() -> str:
    """The table for docs/drive.md, generated from :data:`CHECKS`."""
    rows = ["| check | fires when | threshold flag | action |", "|---|---|---|---|"]
    for c in CHECKS:
        flag = "-" if c.threshold == "-" else f"`--{c.threshold.replace('_', '-')}`"
        rows.append(f"| `{c.name}` | {c.condition} | {flag} | {c.act.value} |")
    return "\n".join(rows)
