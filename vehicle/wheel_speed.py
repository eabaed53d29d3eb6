"""The car's speed in m/s from the wheel encoder's tick count (carlink v1.2 ODOM frames).

The MCU counts the encoder's rising edges and stamps the newest one with its own millisecond clock; the
host turns that into speed with the car's metres per tick (``m_per_tick = wheel circumference / (ticks per
wheel turn × gear ratio from the encoder to the wheel)``, docs/training.md#speed-input):

    speed = Δticks × m_per_tick / Δt_edges

over the edges of the last ``window_ms`` (at least the two newest edges, so a slow wheel with one tick per
200 ms still reads), with both ends of Δt taken at edges on the MCU clock: no quantisation to the 50 Hz
frame rate and no host scheduling jitter. While no new edge comes the wheel can be at most one tick per
elapsed time, so the estimate is capped at ``m_per_tick / (t_now − t_last_edge)`` and is 0 after
``stop_ms`` without an edge. One encoder channel: the count never goes down, so reversing reads as forward
speed (as the sim's ``encoder`` series, ``|v|``, does).
"""

from __future__ import annotations

from collections import deque

WINDOW_MS = 100.0  # edges this far back (MCU clock) average the speed
STOP_MS = 500.0  # no edge for this long: standing still
MAX_EDGE_SAMPLES = 64


class WheelSpeed:
    """Feed every (or the latest) ODOM with :meth:`observe`; read :attr:`speed` (m/s, ≥ 0)."""

    def __init__(self, m_per_tick: float, window_ms: float = WINDOW_MS, stop_ms: float = STOP_MS) -> None:
        if not (isinstance(m_per_tick, int | float) and 0.0 < m_per_tick <= 10.0):
            raise ValueError(f"wheel_m_per_tick={m_per_tick!r} must be in (0, 10] metres per encoder tick")
        self.m_per_tick = float(m_per_tick)
        self.window_ms, self.stop_ms = float(window_ms), float(stop_ms)
        self._edges: deque[tuple[int, int]] = deque(maxlen=MAX_EDGE_SAMPLES)  # (edge ms, ticks), unwrapped
        self._raw: tuple[int, int] | None = None  # the last (ticks, tick_ms) as sent, for unwrapping
        self._ticks = 0  # unwrapped count since the first ODOM
        self._tick_ms = 0  # unwrapped ms of the newest edge
        self._now_ms = 0  # unwrapped MCU clock of the newest ODOM
        self.speed = 0.0

    def observe(self, odom) -> float:
        """Take one :class:`~driver.vehicle.carlink.Odom` (repeats are harmless); returns the speed, m/s."""
        if self._raw is None:
            self._raw = (odom.ticks, odom.tick_ms)
            self._tick_ms, self._now_ms = 0, (odom.t_ms - odom.tick_ms) & 0xFFFFFFFF
            self._edges.append((0, 0))
            self.speed = 0.0
            return self.speed
        ticks = (odom.ticks - self._raw[0]) & 0xFFFFFFFF  # modular: the MCU's counters wrap at 2^32
        if ticks:
            self._ticks += ticks
            self._tick_ms += (odom.tick_ms - self._raw[1]) & 0xFFFFFFFF
            self._edges.append((self._tick_ms, self._ticks))
            self._raw = (odom.ticks, odom.tick_ms)
        self._now_ms = self._tick_ms + ((odom.t_ms - self._raw[1]) & 0xFFFFFFFF)
        self.speed = self._estimate()
        return self.speed

    @property
    def ticks_total(self) -> int:
        """Ticks counted since the first ODOM."""
        return self._ticks

    def _estimate(self) -> float:
        since_edge = self._now_ms - self._tick_ms
        if len(self._edges) < 2 or since_edge > self.stop_ms:
            return 0.0
        t_new, c_new = self._edges[-1]
        t_old, c_old = self._edges[-2]
        for t, c in reversed(self._edges):  # the oldest edge inside the window (at least the one before)
            if t_new - t > self.window_ms:
                break
            if t < t_new:
                t_old, c_old = t, c
        if t_new <= t_old:  # every edge so far in the same millisecond: too little to say
            return 0.0
        speed = (c_new - c_old) * self.m_per_tick * 1000.0 / (t_new - t_old)
        if since_edge > 0:
            speed = min(speed, self.m_per_tick * 1000.0 / since_edge)
        return speed
