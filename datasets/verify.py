"""`driver verify`: read every byte of a store and check it against its checksums.

Per run: its metadata, every shard of every camera (index checksum and bounds, each frame's CRC32C),
and every series (its CRC32C, checked by zarr-python's own ``crc32c`` codec) with the length the
metadata promises. Runs written before format 2 have no chunk checksums: they are checked as far as
their format allows (index checksums, decoding, impossible values) and reported as unverified.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from driver.progress import Progress

from .layout import RUNS, SERIES_ARRAYS
from .shard_reader import ShardReadError
from .store import Store, StoreError

log = logging.getLogger(__name__)


@dataclass
class VerifyConfig:
    """What to verify."""

    store: str                                      # store path or URL (driver ingest output)
    runs: list[str] = field(default_factory=list)   # runs to check (default: every run)

    def __post_init__(self):
        if not self.store:
            raise ValueError("store is empty: name the store to verify")
        self.runs = list(self.runs or [])


@dataclass
class RunCheck:
    """The outcome for one run: ok, damaged (with one line per problem) or unverified (format 1)."""

    run: str
    status: str = "ok"
    arrays: int = 0
    frames: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    store: str
    format_version: int
    runs: list[RunCheck]
    seconds: float

    @property
    def damaged(self) -> list[RunCheck]:
        return [r for r in self.runs if r.status == "damaged"]

    @property
    def ok(self) -> bool:
        return not self.damaged


def _check_run(store: Store, run: str, on_bytes) -> RunCheck:
    check = RunCheck(run)
    try:
        meta = store.run_meta(run)
        n = int(meta["n_frames"])
        cameras = list(meta["cameras"])
    except (StoreError, KeyError, TypeError, ValueError) as e:
        check.status, check.problems = "damaged", [f"{store.url}: run {run!r}: metadata: {e}"]
        return check
    check.frames = n
    for cam in cameras:
        check.arrays += 1
        try:
            frames = store.open_frames(run, cam)
        except ShardReadError as e:
            check.problems.append(str(e))
            continue
        if len(frames) != n:
            check.problems.append(f"{store.url}: run {run!r}, array {cam!r}: {len(frames)} frames, metadata says {n}")
        problems, nbytes = frames.verify(on_bytes)
        check.problems += problems
        check.bytes += nbytes
    for name in [*SERIES_ARRAYS, *(e["name"] for e in meta.get("extras", []))]:
        check.arrays += 1
        try:
            data = store.series(run, name)
        except (ShardReadError, StoreError) as e:
            check.problems.append(str(e))
            continue
        check.bytes += data.nbytes
        if len(data) != n:
            check.problems.append(f"{store.url}: run {run!r}, array {name!r}: {len(data)} values, metadata says {n}")
    if check.problems:
        check.status = "damaged"
    elif not store.run_verified(run):
        check.status = "unverified"
    return check


def _total_bytes(store: Store, runs: list[str]) -> int:
    return sum(size for run in runs for key, size in store.location.list(f"{RUNS}/{run}/")
               if not key.endswith("zarr.json"))


def verify_store(config: VerifyConfig, progress: bool = False) -> VerifyReport:
    """Check ``config.runs`` (default all) of the store; never stops at the first damage."""
    t0 = time.perf_counter()
    store = Store(config.store)
    runs = config.runs or store.runs
    missing = [r for r in runs if not store.has_run(r)]
    if missing:
        raise StoreError(f"{store.url}: no run named {missing[0]!r} (runs: {', '.join(store.runs) or 'none'})")
    checks = []
    with Progress("verify", total=_total_bytes(store, runs), unit="B", enabled=progress) as bar:
        for run in runs:
            check = _check_run(store, run, lambda n: bar.update(bar.done + n))
            for p in check.problems:
                log.debug("%s", p)
            checks.append(check)
        bar.update(bar.total)  # the total was estimated from the arrays' sizes
    return VerifyReport(store.url, store.format_version, checks, time.perf_counter() - t0)


def verify_table(report: VerifyReport):
    """A rich Table: one row per run (status, arrays, frames, MB checked) and a total row."""
    from rich.table import Table

    t = Table(title=f"verify {report.store} (format {report.format_version})")
    t.add_column("run", no_wrap=True)
    t.add_column("status", no_wrap=True)
    for col in ("arrays", "frames", "MB", "problems"):
        t.add_column(col, justify="right")
    style = {"ok": "green", "damaged": "bold red", "unverified": "yellow"}
    for r in report.runs:
        t.add_row(r.run, f"[{style[r.status]}]{r.status}[/]", str(r.arrays), f"{r.frames:,}", f"{r.bytes / 1e6:.1f}",
                  str(len(r.problems)))
    t.add_section()
    counts = {s: sum(r.status == s for r in report.runs) for s in ("ok", "damaged", "unverified")}
    t.add_row(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs", "", "",
              f"{sum(r.frames for r in report.runs):,}", f"{sum(r.bytes for r in report.runs) / 1e6:.1f}",
              f"{report.seconds:.1f} s")
    return t
