"""A data check: where did the driver lose control? (``driver info --lint``)

Behavioural cloning copies the driver, mistakes included. Two signs that a stretch of a run is not
driving worth copying, each flagged as a window of frames:

``saturated_steer``
    the steering held within ``saturation`` run units of an end (0 or 99) for at least
    ``saturation_seconds``: the driver (or expert) is fighting a slide or has lost the road;
``no_progress``
    the throttle pushes forward (``motor > 49 + neutral_band``) but the car does not move
    (``|speed| <= stuck_speed``, from ``encoder`` or the sim's ``speed``) for at least ``stuck_seconds``:
    stuck against something. Runs without a speed series skip this check (``Report.unchecked``).

Each window is widened by ``margin_seconds`` on both sides (control is lost before the steering
saturates). Training drops flagged frames by default (``TrainConfig.exclude_flagged``): from the clips it
learns from and from the validation that chooses ``best.pt``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .series import frame_rate, long_stretches, stored_speed_name, stretches
from .store import Store


@dataclass(frozen=True)
class LintRules:
    """Thresholds of the lost-control check (run units and seconds; speed in the speed series' units)."""

    saturation: float = 1.0
    saturation_seconds: float = 1.0
    stuck_speed: float = 0.05
    stuck_seconds: float = 2.0
    neutral_band: float = 1.0
    margin_seconds: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.saturation < 49.0:
            raise ValueError(f"saturation={self.saturation} must be in 0..49 run units from an end")
        for name in ("saturation_seconds", "stuck_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0 seconds")
        if not self.margin_seconds >= 0 or not self.stuck_speed >= 0 or not 0 <= self.neutral_band <= 49:
            raise ValueError(f"margin_seconds={self.margin_seconds} and stuck_speed={self.stuck_speed} must be >= 0, "
                             f"neutral_band={self.neutral_band} in 0..49")


@dataclass(frozen=True)
class Flag:
    """One flagged window: frames ``start..end-1`` of ``run`` (store frame indices)."""

    run: str
    segment: int
    start: int
    end: int
    seconds: float
    reason: str  # saturated_steer | no_progress


@dataclass
class LintReport:
    flags: list[Flag] = field(default_factory=list)
    frames: dict[str, int] = field(default_factory=dict)  # run -> frames
    flagged: dict[str, int] = field(default_factory=dict)  # run -> flagged frames (margins included)
    unchecked: list[str] = field(default_factory=list)  # runs without a speed series (no_progress skipped)
    margin_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"flags": [asdict(f) for f in self.flags], "frames": self.frames, "flagged": self.flagged,
                "unchecked_no_progress": self.unchecked, "margin_seconds": self.margin_seconds}


def _windows(mask: np.ndarray, segment: np.ndarray, timestamp: np.ndarray, seconds: float) -> list[tuple[int, int]]:
    return stretches(long_stretches(mask, segment, timestamp, seconds), segment)


def lint_series(run: str, steer: np.ndarray, motor: np.ndarray, timestamp: np.ndarray, segment: np.ndarray,
                speed: np.ndarray | None, rules: LintRules = LintRules()) -> list[Flag]:
    """The flagged windows of one run's series (margins not included)."""
    fps = frame_rate(timestamp, segment)
    step = 1.0 / fps
    found = []
    saturated = (steer <= rules.saturation) | (steer >= 99.0 - rules.saturation)
    for a, b in _windows(saturated, segment, timestamp, rules.saturation_seconds):
        found.append(Flag(run, int(segment[a]), a, b, round(float(timestamp[b - 1] - timestamp[a]) + step, 3),
                          "saturated_steer"))
    if speed is not None:
        stuck = (np.abs(speed) <= rules.stuck_speed) & (motor > 49.0 + rules.neutral_band)
        for a, b in _windows(stuck, segment, timestamp, rules.stuck_seconds):
            found.append(Flag(run, int(segment[a]), a, b, round(float(timestamp[b - 1] - timestamp[a]) + step, 3),
                              "no_progress"))
    return sorted(found, key=lambda f: f.start)


def flagged_mask(flags: list[Flag], segment: np.ndarray, timestamp: np.ndarray, margin_seconds: float) -> np.ndarray:
    """Frames inside a flagged window or within ``margin_seconds`` of one (in the same segment)."""
    out = np.zeros(len(segment), dtype=bool)
    for f in flags:
        same = segment == f.segment
        near = (timestamp >= timestamp[f.start] - margin_seconds) & (timestamp <= timestamp[f.end - 1] + margin_seconds)
        out |= same & near
    return out


def lint_run(store: Store, run: str, rules: LintRules = LintRules()) -> tuple[list[Flag], np.ndarray, bool]:
    """(flags, flagged-frame mask with margins, whether a speed series was checked) of one stored run."""
    meta = store.run_meta(run)
    speed_name = stored_speed_name(meta)
    timestamp = store.series(run, "timestamp").astype(np.float64)
    segment = store.series(run, "segment")
    flags = lint_series(run, store.series(run, "steer"), store.series(run, "motor"), timestamp, segment,
                        store.series(run, speed_name) if speed_name else None, rules)
    return flags, flagged_mask(flags, segment, timestamp, rules.margin_seconds), speed_name is not None


def lint_store(store: Store | str, runs: list[str] | None = None, rules: LintRules = LintRules()) -> LintReport:
    """Lint every run of ``store`` (or ``runs``)."""
    store = store if isinstance(store, Store) else Store(store)
    report = LintReport(margin_seconds=rules.margin_seconds)
    for run in runs if runs is not None else store.runs:
        flags, mask, checked = lint_run(store, run, rules)
        report.flags += flags
        report.frames[run] = len(mask)
        report.flagged[run] = int(mask.sum())
        if not checked:
            report.unchecked.append(run)
    return report


def lint_table(report: LintReport, path: str):
    """A rich Table of the flagged windows, then one line per run with flagged frames."""
    from rich.table import Table

    t = Table(title=f"lint of {path}: where the driver lost control")
    for col in ("run", "segment", "frames", "seconds", "reason"):
        t.add_column(col, justify="right" if col in ("segment", "seconds") else "left", overflow="fold")
    for f in report.flags:
        t.add_row(f.run, str(f.segment), f"{f.start}..{f.end - 1}", f"{f.seconds:.1f}", f.reason)
    return t


def lint_summary(report: LintReport) -> list[str]:
    """Plain lines: totals, runs most affected, and what to do about them."""
    total, flagged = sum(report.frames.values()), sum(report.flagged.values())
    lines = [f"{len(report.flags)} flagged windows, {flagged:,} of {total:,} frames "
             f"({100 * flagged / max(total, 1):.1f}%, with {report.margin_seconds:g} s margins) in "
             f"{sum(1 for n in report.flagged.values() if n)} of {len(report.frames)} runs"]
    worst = sorted(((n / max(report.frames[r], 1), r) for r, n in report.flagged.items() if n), reverse=True)[:5]
    lines += [f"  {r}: {100 * share:.0f}% of its frames flagged" for share, r in worst]
    if report.unchecked:
        lines.append(f"no speed series (encoder/speed) in {len(report.unchecked)} runs: no_progress not checked")
    if flagged:
        lines.append("driver train drops flagged frames by default (--no-exclude-flagged keeps them); to drop "
                     "whole runs, label them reject_run or pass --exclude-runs")
    return lines
