"""Progress of long work: a rich bar on a terminal, a periodic log line everywhere else.

Under CI, ``nohup`` or with output sent to a file there is no terminal to draw a bar on; instead of
silence, :class:`Progress` logs one line every ``every_s`` seconds (and one at the end)::

    INFO driver.progress: train 1,200/2,400 (50%) 3.1 step/s, ETA 6m27s | loss 0.0412, 1,540 frames/s

    with Progress("train", total=2400, done=0, unit="step") as p:
        for step in range(...):
            p.update(step + 1, loss=f"{loss:.4f}")
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``6m27s``, ``1h02m``, ``48s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Progress of ``total`` units of work; ``enabled=False`` shows nothing. See the module docstring."""

    def __init__(self, what: str, total: int, done: int = 0, unit: str = "step", every_s: float = 30.0,
                 enabled: bool = True, tty: bool | None = None):
        self.what, self.total, self.unit, self.every_s = what, max(int(total), 1), unit, every_s
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._start_done = self.done = self._logged = int(done)
        self._t0 = self._last_line = time.monotonic()
        self._fields: dict[str, str] = {}
        self._bar = None
        if enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task(what, total=self.total, completed=self.done, info="")
            self._bar.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float:
        """Units per second since this object was made (units done before it, e.g. on resume, not counted)."""
        elapsed = time.monotonic() - self._t0
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def set_total(self, total: int) -> None:
        """A new amount of work (a budgeted training that re-planned its steps)."""
        self.total = max(int(total), 1)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def update(self, done: int, **fields) -> None:
        """``done`` units finished so far; ``fields`` (already formatted) are shown beside the count."""
        self.done = int(done)
        self._fields.update({k: str(v) for k, v in fields.items()})
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, info="  ".join(self._fields.values()))
        elif time.monotonic() - self._last_line >= self.every_s:
            self._line()

    def line(self) -> str:
        """The one-line status: count, share, rate, ETA and the fields."""
        rate = self.rate
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        text = (f"{self.what} {self.done:,}/{self.total:,} ({100 * self.done / self.total:.0f}%) "
                f"{rate:.2f} {self.unit}/s, ETA {eta}")
        return text + (" | " + ", ".join(self._fields.values()) if self._fields else "")

    def _line(self) -> None:
        self._last_line, self._logged = time.monotonic(), self.done
        log.info("%s", self.line())

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.done > self._logged:
            self._line()
        self.enabled = False
