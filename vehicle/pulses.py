"""Servo/ESC pulse widths (µs, as the MCU reports them in STATE) to normalised and run units.

The MCU maps per-mille to µs linearly between calibrated endpoints (default 1000..1500..2000 µs); the
host only needs the inverse, for recording what the car did and what the human's sticks said. The
normalised value then goes through :mod:`driver.units`, the one mapping to run units.
"""

from __future__ import annotations

from dataclasses import dataclass

from driver.units import norm_to_run


@dataclass(frozen=True)
class PulseCalibration:
    """``neutral_us`` ± ``span_us`` is full scale (the firmware's default endpoints: 1500 ± 500 µs)."""

    neutral_us: int = 1500
    span_us: int = 500

    def __post_init__(self) -> None:
        if not 800 <= self.neutral_us <= 2200:
            raise ValueError(f"neutral_us={self.neutral_us} must be in 800..2200 µs")
        if not 50 <= self.span_us <= 1000:
            raise ValueError(f"span_us={self.span_us} must be in 50..1000 µs")

    def to_norm(self, us: float) -> float:
        """µs to normalised [-1, 1] (clamped)."""
        return max(-1.0, min(1.0, (float(us) - self.neutral_us) / self.span_us))

    def to_run(self, us: float) -> float:
        """µs to run units 0..99 (49 neutral)."""
        return float(norm_to_run(self.to_norm(us)))

    def from_norm(self, norm: float) -> int:
        """Normalised to µs, as the firmware's default linear map does."""
        return int(round(self.neutral_us + max(-1.0, min(1.0, norm)) * self.span_us))
