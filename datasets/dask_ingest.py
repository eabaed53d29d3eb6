"""`driver ingest --dask SCHEDULER`: one task per run on a Dask distributed cluster
(``pip install 'driver[dask]'``).

Each task runs exactly what a ``--jobs`` worker process runs (validation, writing, and on object storage
the commit under the run's lease) and returns the same result, so the summary table and the exit code are
the same. ``local:N`` starts a ``LocalCluster`` of N single-threaded worker processes on this machine;
anything else is the address of a running scheduler (``tcp://host:8786``), whose workers need the
sources and the store at the same paths or URLs (a shared filesystem, or object storage) and their own
credentials.

A worker that dies takes only its runs with it: the scheduler re-runs them on another worker
(``distributed.scheduler.allowed-failures``, default 3), and a task is idempotent (a local store commits
in this process; an object store's task recognises its own earlier commit and takes over its dead
attempt's lease). A run whose task keeps killing workers is reported failed.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

_LOCAL = re.compile(r"local:(\d+)")


def check_scheduler(spec: str) -> None:
    """``local:N`` (N in 1..256) or a scheduler address such as ``tcp://10.0.0.5:8786``."""
    m = _LOCAL.fullmatch(spec)
    if m:
        if not 1 <= int(m.group(1)) <= 256:
            raise ValueError(f"dask={spec!r}: local:N needs N in 1..256 worker processes")
        return
    if spec.startswith("local"):
        raise ValueError(f"dask={spec!r} must be local:N (N worker processes) or a scheduler address")
    if not re.fullmatch(r"([a-z]+://)?[^\s:/]+:\d+", spec):
        raise ValueError(f"dask={spec!r} must be local:N or a scheduler address such as tcp://host:8786")


def _client(spec: str):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(f"--dask {spec}: Dask is not installed: pip install 'driver[dask]'") from None
    if not log.isEnabledFor(logging.DEBUG):  # the scheduler's and nannies' chatter only with -v
        logging.getLogger("distributed").setLevel(logging.WARNING)
    m = _LOCAL.fullmatch(spec)
    if m is None:
        try:
            return Client(spec, timeout="30s"), None
        except OSError as e:
            raise OSError(f"--dask {spec}: cannot reach the Dask scheduler: {e}") from None
    try:
        import bokeh  # noqa: F401 - the dashboard needs it; without it the cluster runs without a dashboard

        dashboard = ":8787"  # another free port when that one is taken
    except ImportError:
        dashboard = None
    quiet = logging.ERROR if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL  # failures come back per task
    cluster = LocalCluster(n_workers=int(m.group(1)), threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=dashboard, silence_logs=quiet)
    return Client(cluster), cluster


def run_on_dask(jobs: list, spec: str, on_done, work) -> None:
    """Submit ``work(job)`` for every job as one task; call ``on_done(job, result)`` as each finishes."""
    if not jobs:
        return
    client, cluster = _client(spec)
    try:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        if client.dashboard_link and (cluster is None or cluster.scheduler.http_server is not None):
            log.info("Dask dashboard: %s", client.dashboard_link)
        futures = {client.submit(work, job, key=f"ingest-{job.run}-{job.write_id[:8]}", pure=False): job
                   for job in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                result = fut.result()
            except KilledWorker as e:
                result = {"status": "failed", "seconds": 0.0,
                          "error": f"{job.source}: the Dask workers ingesting it died repeatedly ({e}); it may be "
                                   "too large for a worker's memory or crash the HDF5 library"}
            except Exception as e:  # noqa: BLE001 - a lost scheduler, a result that cannot come back
                result = {"status": "failed", "seconds": 0.0,
                          "error": f"{job.source}: Dask task failed: {type(e).__name__}: {e}"}
            on_done(job, result)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
