"""Per-stage latency of the drive loop: p50/p99 at exit and a live status line."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

STAGES = ("capture_age", "preprocess", "inference", "send", "capture_to_send", "overhead", "ack_rtt", "tick")
STAGE_HELP = {
    "capture_age": "frame capture → tick start (waiting in the grabber)",
    "preprocess": "prepare_frame: crop + resize to the model's input",
    "inference": "policy.act (input tensor, model step, output)",
    "send": "limits + CMD encode + serial write",
    "capture_to_send": "frame capture → CMD written (the latency that matters)",
    "overhead": "capture_to_send minus inference: what the runtime itself adds",
    "ack_rtt": "CMD written → STATE with its ack received",
    "tick": "tick start → end (recording included)",
}


@dataclass(frozen=True)
class StageStats:
    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class StageTimer:
    """Keeps the last ``window`` samples (seconds) of each stage."""

    def __init__(self, window: int = 10000) -> None:
        self._samples: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}

    def add(self, stage: str, seconds: float) -> None:
        if math.isfinite(seconds):
            self._samples[stage].append(seconds)

    def stats(self, stage: str, last: int | None = None) -> StageStats:
        data = list(self._samples[stage])[-last:] if last else list(self._samples[stage])
        if not data:
            return StageStats(0, math.nan, math.nan, math.nan)
        arr = np.asarray(data) * 1000.0
        return StageStats(len(arr), float(np.percentile(arr, 50)), float(np.percentile(arr, 99)),
                          float(arr.max()))

    def summary(self) -> dict[str, StageStats]:
        return {s: self.stats(s) for s in STAGES}

    def status_line(self, last: int = 100) -> str:
        """``stage p50/p99`` of the recent ticks, for the periodic log line."""
        parts = []
        for s in ("capture_age", "preprocess", "inference", "send", "capture_to_send", "ack_rtt"):
            st = self.stats(s, last)
            if st.n:
                parts.append(f"{s} {st.p50_ms:.1f}/{st.p99_ms:.1f}")
        return "ms p50/p99: " + ", ".join(parts)


def format_summary(summary: dict[str, StageStats]) -> str:
    """A plain-text table of the stages, logged at exit."""
    lines = [f"{'stage':<16}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"]
    for name, st in summary.items():
        if st.n:
            lines.append(f"{name:<16}{st.n:>7}{st.p50_ms:>9.2f}{st.p99_ms:>9.2f}{st.max_ms:>9.2f}")
    return "\n".join(lines)
