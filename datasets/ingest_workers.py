"""Where `driver ingest` runs its jobs (one per run): threads of the command's own process, or spawned processes.

Threads (the default) start at once. The work of a run releases the GIL almost all of the time: positioned
vector reads and writes, fsync, sha256 (hashlib on 8 MiB blocks) and CRC32C (the ``crc32c`` package
releases it for buffers of 32 KiB and more; a 94x168 frame is 47 KiB), so ``jobs`` threads keep the disk
busy like ``jobs`` processes do, without each process's ~1 s of Python start-up and imports
(docs/benchmarks.md, "Ingest against the disk").

Processes isolate a crash inside a native library (HDF5 on a corrupt file, the out-of-memory killer): only
the run that kills its process fails. With threads such a crash ends the whole ingest; runs already
committed stay, and the run (or runs) that were being written are left in ``.staging/``. The next ingest
finds them there and ingests each in a process of its own (``isolate``), so a file that crashes the
library fails alone there, with one line, and every other run is ingested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from . import storage
from .run_format import RunFormatError
from .run_ingest import RunJob, ingest_run_file

log = logging.getLogger(__name__)

WORKERS = ("threads", "processes")

OnDone = Callable[[RunJob, dict], None]


def safe_ingest(job: RunJob) -> dict:
    """Run one job; never raises, so one bad file cannot take the pool (or the others) down."""
    t0 = time.perf_counter()
    try:
        result = ingest_run_file(job)
    except RunFormatError as e:
        result = {"status": "failed", "error": str(e)}
    except Exception as e:  # truncated reads, disk errors: reported per file, the rest goes on
        result = {"status": "failed", "error": f"{job.source}: {type(e).__name__}: {e}"}
    result["seconds"] = time.perf_counter() - t0
    return result


def run_jobs(jobs: list[RunJob], n: int, on_done: OnDone, workers: str = "threads",
             isolate: Collection[str] = (), work: Callable[[RunJob], dict] | None = None) -> None:
    """Run ``work`` (default :func:`safe_ingest`) on every job, ``n`` at a time, and call ``on_done(job, result)``
    in this thread as each finishes (in the order they finish).

    ``workers``: ``threads`` or ``processes`` (module docstring). Jobs whose run is in ``isolate`` (an earlier
    ingest died while writing them) run last, each in a spawned process of its own.
    """
    if workers not in WORKERS:
        raise ValueError(f"workers={workers!r} must be one of {', '.join(WORKERS)}")
    work = work or safe_ingest
    suspects = [job for job in jobs if job.run in isolate]
    rest = [job for job in jobs if job.run not in isolate]
    if workers == "processes":
        _in_processes(rest, n, on_done, work)
    else:
        _in_threads(rest, n, on_done, work)
    if suspects:
        log.warning("%s: an earlier ingest stopped while writing %s (killed, or its process crashed); ingesting "
                    "%s in a process of its own", ", ".join(j.run for j in suspects),
                    "it" if len(suspects) == 1 else "them", "it" if len(suspects) == 1 else "each")
        _each_in_own_process(suspects, n, on_done, work)


def _in_threads(jobs: list[RunJob], n: int, on_done: OnDone, work) -> None:
    if n <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, work(job))
        return
    pool = ThreadPoolExecutor(max_workers=min(n, len(jobs)), thread_name_prefix="ingest")
    futures = {pool.submit(work, job): job for job in jobs}
    handed = set()
    try:
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except Exception as e:  # ``work`` is meant never to raise; if it does, the run fails, not the ingest
                result = _failed(futures[fut], f"worker error: {type(e).__name__}: {e}")
            on_done(futures[fut], result)
            handed.add(fut)
    except BaseException:  # Ctrl-C, or a commit failed: start nothing new, let what runs finish, drop its staging
        pool.shutdown(wait=True, cancel_futures=True)  # (a staging folder left would mark its run as crashed)
        for fut in futures:
            if fut not in handed and not fut.cancelled() and fut.exception() is None \
                    and fut.result().get("staging"):
                storage.remove_tree(fut.result()["staging"])  # no-op where the commit already renamed it
        raise
    pool.shutdown()


def _in_processes(jobs: list[RunJob], n: int, on_done: OnDone, work) -> None:
    """In ``n`` spawned processes. A worker process that dies (killed, out of memory, a crash in a native library)
    breaks the whole pool and with it every job still queued there. Those jobs are run again, each in a fresh
    process of its own (``n`` at a time), so only the job that kills its process again is reported failed."""
    if not jobs:
        return
    lost: list[RunJob] = []
    with ProcessPoolExecutor(max_workers=min(n, len(jobs)), mp_context=get_context("spawn")) as pool:
        futures = {}
        for i, job in enumerate(jobs):
            try:
                futures[pool.submit(work, job)] = job
            except BrokenProcessPool:  # a worker died while the queue was being filled
                lost.extend(jobs[i:])
                break
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except BrokenProcessPool:
                lost.append(futures[fut])
                continue
            except Exception as e:  # the result could not come back (e.g. not picklable)
                result = _failed(futures[fut], f"worker error: {type(e).__name__}: {e}")
            on_done(futures[fut], result)
    if lost:
        log.warning("a worker process died; running %d unfinished run(s) again, one process each", len(lost))
        order = {id(job): i for i, job in enumerate(jobs)}
        _each_in_own_process(sorted(lost, key=lambda job: order[id(job)]), n, on_done, work)


def _each_in_own_process(jobs: list[RunJob], n: int, on_done: OnDone, work) -> None:
    with ThreadPoolExecutor(max_workers=max(1, min(n, len(jobs)))) as threads:
        for job, result in zip(jobs, threads.map(lambda job: _isolated(work, job), jobs), strict=True):
            on_done(job, result)


def _isolated(work, job: RunJob) -> dict:
    """``work(job)`` in a process of its own: if that process dies, only this job fails."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(work, job).result()
        except BrokenProcessPool as e:
            return _failed(job, f"the worker process ingesting it died ({e}); it may be too large for memory or "
                                "crash the HDF5 library")
        except Exception as e:
            return _failed(job, f"worker error: {type(e).__name__}: {e}")


def _failed(job: RunJob, why: str) -> dict:
    return {"status": "failed", "seconds": 0.0, "error": f"{job.source}: {why}"}
