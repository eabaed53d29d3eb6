"""Work functions for ingest's spawned worker processes. A spawned process imports the module of the function it
runs: this one imports nothing of the tests (test_ingest.py pulls in conftest and torch, ~2 CPU-s a process)."""

from __future__ import annotations

import os


def dies_on_run_001(job):
    """Ingest ``job``, except that the process ingesting run_001 dies (the OOM killer, a crash in a native
    library)."""
    from driver.datasets.ingest_workers import safe_ingest

    if job.run == "run_001":
        os._exit(3)
    return safe_ingest(job)
