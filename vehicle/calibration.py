"""The MCU's pulse-width map and the calibration it maps with: one Python port of the firmware's C mapping.

The firmware (``vehicle/firmware/carlink_proto.c``, ``proto_permille_to_us``) turns a per-mille command into a
servo/ESC pulse linearly on each side of a calibrated neutral, so uneven endpoints (1100/1480/1880 µs) still
put -1000 at the minimum, 0 at neutral and +1000 at the maximum. Since carlink v1.1 the MCU reports those
endpoints (a CAL message); :class:`driver.vehicle.link.CarLink` asks for them at the handshake, and the drive
loop converts every pulse it records with the same endpoints, so full left is 0, straight 49 and full right
99 in run units on any calibrated car. :meth:`Endpoints.permille_to_us` is tested against the C function.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from driver.units import norm_to_permille, norm_to_run

RC_MIN_VALID_US = 800  # CARLINK_RC_MIN_VALID_US: the firmware rejects endpoints outside this window
RC_MAX_VALID_US = 2200
SOURCES = ("stored", "firmware-default", "assumed-default", "sim")


@dataclass(frozen=True)
class Endpoints:
    """One output's calibrated pulse widths (µs): ``min_us`` < ``neutral_us`` < ``max_us``."""

    min_us: int = 1000
    neutral_us: int = 1500
    max_us: int = 2000

    def __post_init__(self) -> None:  # the firmware's proto_calibration_valid
        values = (self.min_us, self.neutral_us, self.max_us)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or not (
                RC_MIN_VALID_US <= self.min_us < self.neutral_us < self.max_us <= RC_MAX_VALID_US):
            raise ValueError(f"endpoints {values} must be integers with {RC_MIN_VALID_US} <= min < neutral < max "
                             f"<= {RC_MAX_VALID_US} µs")

    def clamp_us(self, us: int) -> int:
        return max(self.min_us, min(self.max_us, int(us)))

    def permille_to_us(self, permille: int) -> int:
        """The firmware's map, integer for integer: neutral + (v·span ± 500) / 1000 (C division), clamped."""
        v = max(-1000, min(1000, int(permille)))
        span = self.max_us - self.neutral_us if v >= 0 else self.neutral_us - self.min_us
        num = v * span + (500 if v >= 0 else -500)
        quotient = abs(num) // 1000 * (1 if num >= 0 else -1)  # C truncates toward zero
        return self.clamp_us(max(0, self.neutral_us + quotient))

    def norm_to_us(self, norm: float) -> int:
        """Normalised [-1, 1] → the pulse the MCU outputs for it (through the per-mille the wire carries)."""
        return self.permille_to_us(norm_to_permille(norm))

    def us_to_norm(self, us: float) -> float:
        """A pulse (as reported in STATE) → normalised [-1, 1], the inverse of the map on each side, clamped."""
        offset = float(us) - self.neutral_us
        span = self.max_us - self.neutral_us if offset >= 0 else self.neutral_us - self.min_us
        return max(-1.0, min(1.0, offset / span))

    def us_to_run(self, us: float) -> float:
        """A pulse → run units 0..99 (49 neutral), through :mod:`driver.units`."""
        return float(norm_to_run(self.us_to_norm(us)))


@dataclass(frozen=True)
class Calibration:
    """The MCU's endpoints for steering and throttle, its steering deadband, and where they came from.

    ``source``: ``stored`` (the MCU reported a calibration from its EEPROM), ``firmware-default`` (it reported
    its built-in defaults), ``assumed-default`` (a carlink v1.0 MCU that cannot report: the defaults are
    assumed), ``sim`` (the in-process stand-in).
    """

    steer: Endpoints = field(default_factory=Endpoints)
    throttle: Endpoints = field(default_factory=Endpoints)
    steer_deadband_us: int = 100
    source: str = "assumed-default"

    def __post_init__(self) -> None:
        if not (isinstance(self.steer_deadband_us, int) and 0 < self.steer_deadband_us < 400):
            raise ValueError(f"steer_deadband_us={self.steer_deadband_us!r} must be in 1..399 µs")
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r} must be one of {', '.join(SOURCES)}")

    @classmethod
    def from_cal(cls, msg) -> Calibration:
        """From a carlink CAL message (:class:`driver.vehicle.carlink.Cal`); raises ValueError if implausible."""
        from driver.vehicle.carlink import CalFlags

        return cls(Endpoints(msg.steer_min_us, msg.steer_neutral_us, msg.steer_max_us),
                   Endpoints(msg.thr_min_us, msg.thr_neutral_us, msg.thr_max_us), msg.steer_deadband_us,
                   "stored" if msg.flags & CalFlags.STORED else "firmware-default")

    def to_json(self) -> str:
        """The form recorded in a session file's ``calibration`` attribute."""
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        s, t = self.steer, self.throttle
        return (f"steer {s.min_us}/{s.neutral_us}/{s.max_us} µs, throttle {t.min_us}/{t.neutral_us}/{t.max_us} µs "
                f"({self.source})")
