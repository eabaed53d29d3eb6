"""Host limits on the model's commands: a steering slew rate and a throttle cap (the MCU clamps again)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LimitsConfig:
    """``max_throttle`` caps forward throttle (normalised, 0..1); ``min_throttle`` bounds braking/reverse
    (-1..0); ``steer_slew_per_s`` is the most normalised steering may change per second (0 = unlimited)."""

    max_throttle: float = 0.3  # host throttle cap, normalised 0..1
    min_throttle: float = -1.0  # host brake/reverse bound, normalised -1..0
    steer_slew_per_s: float = 8.0  # most steering may change per second, normalised (0: off)

    def __post_init__(self) -> None:
        checks = {"max_throttle": (0.0, 1.0), "min_throttle": (-1.0, 0.0), "steer_slew_per_s": (0.0, 1000.0)}
        for name, (lo, hi) in checks.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"{name}={value!r} must be in {lo:g}..{hi:g}")


class HostLimits:
    """Applies :class:`LimitsConfig` to normalised (steer, throttle), tick by tick."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self._steer: float | None = None
        self._t: float | None = None

    def reset(self, steer: float | None = None) -> None:
        """Forget the slew history (next command's steering is taken as is, or from ``steer``)."""
        self._steer, self._t = steer, None

    def apply(self, steer: float, throttle: float, t: float) -> tuple[float, float]:
        """Limited (steer, throttle) for a command sent at monotonic time ``t``."""
        c = self.config
        steer = max(-1.0, min(1.0, steer))
        if c.steer_slew_per_s > 0 and self._steer is not None and self._t is not None:
            step = c.steer_slew_per_s * max(0.0, t - self._t)
            steer = max(self._steer - step, min(self._steer + step, steer))
        throttle = max(c.min_throttle, min(c.max_throttle, throttle))
        self._steer, self._t = steer, t
        return steer, throttle
