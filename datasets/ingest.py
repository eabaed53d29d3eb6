"""`driver ingest`: turn runs (HDF5 files, donkeycar tub sessions, LeRobot episodes: ``datasets/interop``) into a
sharded zarr v3 store, one atomic run at a time.

Each source file is validated, then written into ``STORE/.staging/`` and renamed into
``STORE/runs/<run>`` only when complete, so a killed ingest never leaves a half-written run visible;
re-running skips what is done (same size and mtime, or same sha256) and finishes the rest. A bad file
fails alone with one line naming it and the problem. Runs ingest ``jobs`` at a time, in threads or
processes (:mod:`.ingest_workers`), or as one task each on a Dask cluster with ``dask``
(:mod:`.dask_ingest`). A store on object storage has no rename: there each run is written in place and
committed by its metadata object, written last (:mod:`.object_ingest`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from driver.progress import Progress

from .ingest_workers import WORKERS, run_jobs, safe_ingest
from .interop import FORMATS, Hdf5Source, RunSource, run_sources
from .layout import CODECS, FORMAT_VERSION, STAGING
from .run_ingest import RunJob
from .store import (
    Store,
    StoreError,
    commit_run,
    locked,
    open_or_create_store,
    remove_store,
    run_name_for,
    sweep_leftovers,
)
from .validity import ValidityRules

log = logging.getLogger(__name__)

DEFAULT_JOBS = 2  # runs in flight overlap one run's fixed costs and CPU with another's disk time


@dataclass
class IngestConfig:
    """What to ingest and how. ``sources`` are run files, donkeycar tubs, LeRobot datasets or folders of them.

    ``force`` re-ingests every source even if unchanged; ``force_runs`` re-ingests only the named runs
    (e.g. one ``driver verify`` found damaged), from ``sources`` or, when no source gives that run, from
    the source file recorded in the store.
    """

    sources: list[str]  # run files (.h5/.hdf5), donkeycar tubs, LeRobot v3 datasets, or folders of them (optional with
                        # --force RUN)
    out: str  # store path or URL (s3://bucket/prefix, gs://, az://; created if missing)
    jobs: int | None = None  # runs ingested at once, 1..256 (None: 2, faster than 1 on lab-sized runs even on
                             # 2 cores: docs/benchmarks.md; 1 with --dask)
    workers: Literal["threads", "processes"] = "threads"  # how --jobs run: threads start at once; processes isolate
                                                          # a crash inside the HDF5 library (with threads the next
                                                          # ingest isolates the run that crashed)
    codec: str = "none"  # frame compression (none: fastest reads; see docs/dataset-format.md)
    shard_frames: int | None = None  # frames per shard file (None: ~24 MiB)
    validity: ValidityRules = field(default_factory=ValidityRules)
    force: bool = False
    force_runs: tuple[str, ...] = ()
    format: str = "auto"  # how to read the sources (auto: detected per path)
    mapping: str | None = None  # TOML/YAML mapping of tub/LeRobot fields to the run format (docs/import-export.md)
    dask: str = ""  # one task per run on a Dask cluster: local:N (N local worker processes) or a scheduler address
                    # tcp://HOST:8786 (pip install 'driver[dask]'); empty: local processes (--jobs)
    lock_ttl_s: float = 60.0  # object storage: seconds a run's lease lasts unless renewed; a dead writer's run is taken
                              # over after 1.5x this

    def __post_init__(self):
        self.sources = list(self.sources or [])
        self.force_runs = tuple(self.force_runs or ())
        if not self.sources and not self.force_runs:
            raise ValueError("sources is empty: name at least one run file or folder (or runs to --force)")
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(f"format={self.format!r} must be auto or one of {', '.join(FORMATS)}")
        if self.jobs is not None and not 1 <= self.jobs <= 256:
            raise ValueError(f"jobs={self.jobs} must be in 1..256")
        if self.workers not in WORKERS:
            raise ValueError(f"workers={self.workers!r} must be one of {', '.join(WORKERS)}")
        if self.codec not in CODECS:
            raise ValueError(f"codec={self.codec!r} must be one of {', '.join(CODECS)}")
        if self.shard_frames is not None and not 1 <= self.shard_frames <= 65536:
            raise ValueError(f"shard_frames={self.shard_frames} must be in 1..65536")
        if self.dask:
            from .dask_ingest import check_scheduler

            check_scheduler(self.dask)
            if self.jobs not in (None, 1):
                raise ValueError(f"jobs={self.jobs} with dask={self.dask!r}: choose one (the cluster's workers "
                                 "are the parallelism)")
        if not 0.5 <= self.lock_ttl_s <= 86400:
            raise ValueError(f"lock_ttl_s={self.lock_ttl_s} must be in 0.5..86400 seconds")


@dataclass
class RunOutcome:
    """What happened to one source file."""

    source: str
    run: str
    status: str  # ingested | replaced | unchanged | failed
    frames: int = 0
    valid: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    error: str = ""
    staging: str = ""


@dataclass
class IngestReport:
    store: str
    outcomes: list[RunOutcome]
    seconds: float

    @property
    def failures(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failures


def _recorded_sources(store: Store, config: IngestConfig, files: list[RunSource]) -> list[RunSource]:
    """Sources of the ``force_runs`` that no given source provides: the HDF5 paths the store recorded."""
    given = {f.run for f in files}
    extra = []
    for run in config.force_runs:
        if run in given:
            continue
        if not store.has_run(run):
            raise StoreError(f"--force {run}: no source given for it and the store {store.path} has no such run "
                             f"(runs: {', '.join(store.runs) or 'none'})")
        try:
            path = store.run_meta(run)["source"]["path"]
        except (StoreError, KeyError, TypeError) as e:
            raise StoreError(f"--force {run}: the store does not say where its source is ({e}); "
                             "give the source file") from e
        if store.run_meta(run)["source"].get("format", "hdf5") != "hdf5":
            raise StoreError(f"--force {run}: it was imported from {path}; give that source again")
        if run_name_for(path) != run:
            raise StoreError(f"--force {run}: its recorded source {path} would ingest as another run; "
                             "give the source file")
        extra.append(Hdf5Source(path))
    return extra


def _previous(store: Store, name: str, forced: bool) -> dict | None:
    """The stored run's metadata; for a forced run whose metadata is damaged, a bare marker."""
    if not store.has_run(name):
        return None
    try:
        return store.run_meta(name)
    except StoreError:
        if forced:
            return {}
        raise


def _plan(store: Store, config: IngestConfig, sources: list[RunSource | str]
          ) -> tuple[list[RunJob], list[RunOutcome]]:
    """Split sources into jobs to run and outcomes already known (duplicates, unchanged, missing)."""
    jobs, known, seen = [], [], {}
    for src in sources:
        src = src if isinstance(src, RunSource) else Hdf5Source(src)
        path, name = src.path, src.run
        if name in seen:
            known.append(RunOutcome(path, name, "failed",
                                    error=f"{path}: run name {name!r} is also used by {seen[name]}; rename one"))
            continue
        seen[name] = path
        if not src.exists():
            known.append(RunOutcome(path, name, "failed", error=f"{path}: no such file"))
            continue
        forced = config.force or name in config.force_runs
        previous = _previous(store, name, forced)
        if previous and not forced:
            stored = previous["source"]
            if all(stored.get(k) == v for k, v in src.fingerprint().items()):
                known.append(RunOutcome(path, name, "unchanged", previous["n_frames"], previous["n_valid"],
                                        stored["size"]))
                continue
        jobs.append(RunJob(
            source=os.path.abspath(path), run=name, store=store.url if store.remote else os.path.abspath(store.url),
            codec=config.codec, shard_frames=config.shard_frames, validity=config.validity.to_dict(),
            previous_sha256=None if (previous is None or forced) else previous["source"]["sha256"],
            replaces=previous is not None, origin=None if isinstance(src, Hdf5Source) else src,
            write_id=uuid.uuid4().hex, lock_ttl_s=config.lock_ttl_s,
        ))
    return jobs, known


def ingest(config: IngestConfig, progress: bool = False) -> IngestReport:
    """Ingest ``config.sources`` into ``config.out``; returns per-file outcomes (see module docstring).

    ``progress``: a bar on a terminal, else a progress line every 30 s."""
    t0 = time.perf_counter()
    files = run_sources(config.sources, config.format, config.mapping)
    if not files and not config.force_runs:
        raise StoreError(f"no runs found in {config.sources} (HDF5 files, donkeycar tubs or LeRobot datasets)")
    store, created = open_or_create_store(config.out)
    outcomes: list[RunOutcome] = []
    if store.remote:  # no store-wide lock there: every run is written under its own lease
        _ingest_into(store, config, files, outcomes, progress)
    else:
        # Only the lock holder may remove the store: a creator that loses the race for the lock leaves the store
        # to the ingest that holds it (removing it then would pull the store from under a running ingest).
        with locked(store):
            empty = created or not store.runs
            try:
                _ingest_into(store, config, files, outcomes, progress)
            finally:
                if empty and not store.runs:  # a failed first ingest leaves no (empty) store behind
                    remove_store(store)
    order = {(f.run, os.path.abspath(f.path)): i for i, f in enumerate(files)}
    outcomes.sort(key=lambda o: order.get((o.run, os.path.abspath(o.source)), len(order)))
    return IngestReport(store.url, outcomes, time.perf_counter() - t0)


def _interrupted_runs(store: Store) -> set[str]:
    """Runs an earlier ingest was writing when its process died (killed, or crashed inside a native library while
    reading the source): their staging folders are still there (a run that fails cleanly removes its own)."""
    try:
        return {name.rsplit(".", 1)[0] for name in os.listdir(store.path / STAGING)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _ingest_into(store: Store, config: IngestConfig, files: list[RunSource], outcomes: list[RunOutcome],
                 progress: bool) -> None:
    """The ingest proper (under the store's lock for a local store)."""
    interrupted = set()
    if not store.remote:
        interrupted = _interrupted_runs(store)
        sweep_leftovers(store)
    files.extend(_recorded_sources(store, config, files))
    jobs, known = _plan(store, config, files)
    outcomes.extend(known)
    bar = Progress("ingest", total=len(files), done=len(known), unit="run", enabled=progress)

    def on_done(job: RunJob, result: dict) -> None:
        o = RunOutcome(job.source, job.run, result["status"], result.get("frames", 0), result.get("valid", 0),
                       result.get("bytes_in", 0), result.get("bytes_out", 0), result["seconds"],
                       result.get("error", ""), result.get("staging", ""))
        if o.status in ("ingested", "replaced"):
            if store.remote:  # committed by the task itself
                store.forget_run(job.run)
            else:
                commit_run(store, job.run, o.staging)
        elif o.status == "unchanged":
            store.update_source(job.run, result["source"])
            o.frames, o.valid = store.run_meta(job.run)["n_frames"], store.run_meta(job.run)["n_valid"]
        if o.status == "failed":
            log.debug("%s", o.error)
        outcomes.append(o)
        bar.update(bar.done + 1, frames=f"{sum(x.frames for x in outcomes):,} frames")

    try:
        if config.dask:
            from .dask_ingest import run_on_dask

            run_on_dask(jobs, config.dask, on_done, safe_ingest)
        else:
            run_jobs(jobs, config.jobs or DEFAULT_JOBS, on_done, config.workers, interrupted)
    finally:
        bar.close()
    if not store.remote:
        sweep_leftovers(store)
    if store.format_version < FORMAT_VERSION and store.runs and all(store.run_verified(r) for r in store.runs):
        store.set_format_version(FORMAT_VERSION)  # every run now checksummed: the store is verified


def summary_table(report: IngestReport):
    """A rich Table: one row per run plus a total row (runs, frames, valid, bytes in/out, seconds)."""
    from rich.table import Table

    t = Table(title=f"ingest into {report.store}")
    for col in ("run", "status", "frames", "valid", "MB in", "MB out", "s"):
        t.add_column(col, justify="left" if col in ("run", "status") else "right")
    for o in report.outcomes:
        t.add_row(o.run, o.status, f"{o.frames:,}", f"{o.valid:,}", f"{o.bytes_in / 1e6:.1f}",
                  f"{o.bytes_out / 1e6:.1f}", f"{o.seconds:.2f}")
    n_ok = sum(o.status != "failed" for o in report.outcomes)
    t.add_section()
    t.add_row(f"{n_ok} ok, {len(report.failures)} failed", "",
              f"{sum(o.frames for o in report.outcomes):,}", f"{sum(o.valid for o in report.outcomes):,}",
              f"{sum(o.bytes_in for o in report.outcomes) / 1e6:.1f}",
              f"{sum(o.bytes_out for o in report.outcomes) / 1e6:.1f}", f"{report.seconds:.2f}")
    return t
