"""`driver info`: what a store holds (runs, frames, modes, resolution, size on disk)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from .series import stored_speed_name
from .store import Store
from .validity import ValidityRules, rule_masks


@dataclass
class StoreSummary:
    path: str
    runs: list[dict] = field(default_factory=list)
    disk_bytes: int = 0  # the store's files, without a killed ingest's staging and trash leftovers
    format_version: int = 2

    @property
    def unverified(self) -> list[str]:
        """Runs written before chunk checksums (format 1)."""
        return [r["name"] for r in self.runs if int(r.get("format_version", 1)) < 2]

    @property
    def frames(self) -> int:
        return sum(r["n_frames"] for r in self.runs)

    @property
    def valid(self) -> int:
        return sum(r["n_valid"] for r in self.runs)

    @property
    def removed(self) -> Counter:
        """Frames each validity rule rejects, over all runs (a frame may fail several rules)."""
        return sum((Counter(r["removed"]) for r in self.runs), Counter())

    @property
    def labels(self) -> Counter:
        return Counter(k for r in self.runs for k, v in r["labels"].items() if v)

    @property
    def resolutions(self) -> Counter:
        return Counter(f"{r['height']}x{r['width']} {'stereo' if len(r['cameras']) == 2 else 'mono'}"
                       for r in self.runs)


def rule_counts(store: Store, run: str) -> dict[str, int]:
    """How many frames of ``run`` each validity rule (``datasets.validity.RULES``) rejects, with the rules
    recorded at ingest."""
    meta = store.run_meta(run)
    speed = stored_speed_name(meta)
    series = [store.series(run, k) for k in ("state", "steer", "motor", "timestamp", "segment")]
    masks = rule_masks(*series, ValidityRules.from_dict(meta["validity"]), store.series(run, speed) if speed else None)
    return {rule: int(mask.sum()) for rule, mask in masks.items()}


def describe_store(path: str | os.PathLike) -> StoreSummary:
    store = Store(path)
    return StoreSummary(str(store.path), [{**store.run_meta(r), "removed": rule_counts(store, r)} for r in store.runs],
                        store.disk_bytes, store.format_version)


def _removed_text(removed: Counter | dict) -> str:
    return ", ".join(f"{rule} {n:,}" for rule, n in removed.items() if n) or "-"


def info_tables(summary: StoreSummary):
    """Two rich renderables: the per-run table and the totals."""
    from rich.table import Table

    runs = Table(title=f"runs in {summary.path}")
    # run names are what --runs and --force take: never cut them; the other columns fold when narrow
    longest = max((len(r["name"]) for r in summary.runs), default=3)
    runs.add_column("run", no_wrap=True, min_width=longest)
    for col in ("frames", "valid", "removed by rule", "segments", "size", "cameras", "labels", "source"):
        runs.add_column(col, justify="right" if col in ("frames", "valid", "segments") else "left", overflow="fold")
    for r in summary.runs:
        labels = ",".join(k for k, v in sorted(r["labels"].items()) if v)
        runs.add_row(r["name"], f"{r['n_frames']:,}", f"{r['n_valid']:,}", _removed_text(r["removed"]),
                     str(len(r["segments"])),
                     f"{r['height']}x{r['width']}", "+".join(r["cameras"]), labels, r["source"]["file"])
    totals = Table(title="totals", show_header=False)
    totals.add_column("what")
    totals.add_column("value")
    pct = 100.0 * summary.valid / summary.frames if summary.frames else 0.0
    totals.add_row("runs", str(len(summary.runs)))
    totals.add_row("frames", f"{summary.frames:,} ({summary.valid:,} valid, {pct:.1f}%)")
    totals.add_row("removed by rule", _removed_text(summary.removed) + " (frames; see docs/dataset-format.md)")
    totals.add_row("resolution", ", ".join(f"{k} ({n} runs)" for k, n in summary.resolutions.items()) or "-")
    totals.add_row("labels", ", ".join(f"{k} ({n})" for k, n in sorted(summary.labels.items())) or "-")
    totals.add_row("size on disk", f"{summary.disk_bytes / 1e6:,.1f} MB")
    unverified = summary.unverified
    if not unverified:
        totals.add_row("checksums", f"every chunk (format {summary.format_version}); check with driver verify")
    else:
        totals.add_row("checksums", f"UNVERIFIED: {len(unverified)} run(s) written before chunk checksums (format 1); "
                       f"driver ingest --out {summary.path} --force rewrites them with checksums")
    return runs, totals


def print_info(summary: StoreSummary, console) -> None:
    """Print the info tables on a rich Console, wider than the terminal if a run name needs it (the terminal
    then wraps the line instead of rich cutting the name)."""
    from rich.measure import Measurement

    tables = info_tables(summary)
    unbounded = console.options.update(max_width=100_000)
    need = max(Measurement.get(console, unbounded, t).minimum for t in tables)
    if need > console.width:
        console.width = need
    for t in tables:
        console.print(t)
