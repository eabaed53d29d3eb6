"""driver ingest's workers: runs in threads (the default) or processes; a run whose ingest crashed the process is
isolated in a process of its own by the next ingest, so it fails alone there; Ctrl-C leaves nothing staged."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from driver.datasets.ingest import IngestConfig, _plan, ingest
from driver.datasets.ingest_workers import run_jobs, safe_ingest
from driver.datasets.layout import STAGING
from driver.datasets.store import Store, create_store
from driver.datasets.synthetic import write_synthetic_runs
from tests.limits import SAFETY_S

from .conftest import read_run_frames
from .ingest_workers import dies_on_run_001

# an ingest whose process dies (os._exit: what a crash inside the HDF5 library does) while writing run_001
CRASHER = """
import os, sys
from driver.datasets import run_ingest
from driver.datasets.ingest import IngestConfig, ingest

write = run_ingest.write_run_group
def crash_on_run_001(path, job, *args, **kwargs):
    if job.run == "run_001":
        os._exit(139)
    return write(path, job, *args, **kwargs)
run_ingest.write_run_group = crash_on_run_001
ingest(IngestConfig(sources=[sys.argv[1]], out=sys.argv[2], jobs=2))
"""


def _assert_store_matches(out, runs):
    g = zarr.open_group(out, mode="r")
    assert Store(out).runs == [p.stem for p in runs]
    for p in runs:
        for cam in ("left", "right"):
            assert np.array_equal(g[f"runs/{p.stem}/{cam}"][...], read_run_frames(p, cam))


def _jobs(tmp_path, n):
    runs = write_synthetic_runs(tmp_path / "runs", n, n_frames=30, height=24, width=32, seed=8)
    config = IngestConfig(sources=[str(p) for p in runs], out=str(tmp_path / "s.zarr"), jobs=2)
    jobs, known = _plan(create_store(config.out), config, [str(p) for p in runs])
    assert len(jobs) == n and not known
    return jobs


def test_threads_run_every_job_and_hand_results_back_in_this_thread(tmp_path):
    import threading

    jobs = _jobs(tmp_path, 4)
    seen = {}
    run_jobs(jobs, 2, lambda job, result: seen.update({job.run: (result, threading.current_thread())}))
    assert sorted(seen) == ["run_000", "run_001", "run_002", "run_003"]
    assert all(r["status"] == "ingested" and t is threading.main_thread() for r, t in seen.values())
    assert all(os.path.isfile(os.path.join(r["staging"], "zarr.json")) for r, _ in seen.values())


@pytest.mark.slow
def test_an_isolated_run_that_kills_its_process_fails_alone(tmp_path, caplog):
    jobs = _jobs(tmp_path, 3)
    results = {}
    with caplog.at_level(logging.WARNING, logger="driver.datasets.ingest_workers"):
        run_jobs(jobs, 2, lambda job, result: results.update({job.run: result}), "threads", isolate={"run_001"},
                 work=dies_on_run_001)
    assert {r: v["status"] for r, v in results.items()} == {
        "run_000": "ingested", "run_001": "failed", "run_002": "ingested"}
    assert "run_001.h5: the worker process ingesting it died" in results["run_001"]["error"]
    assert "run_001: an earlier ingest stopped while writing it" in caplog.text


@pytest.mark.slow
def test_a_crash_in_a_thread_ends_the_ingest_and_the_next_ingest_isolates_its_run(tmp_path, caplog):
    runs = write_synthetic_runs(tmp_path / "runs", 4, n_frames=60, height=24, width=32, seed=12)
    out = tmp_path / "s.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    crashed = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path / "runs"), str(out)], env=env,
                             capture_output=True, text=True, timeout=SAFETY_S)
    assert crashed.returncode == 139, crashed.stderr[-2000:]
    assert "run_001" not in Store(out).runs  # whatever was committed before the crash is complete
    _assert_store_matches(out, [p for p in runs if p.stem in Store(out).runs])
    left = {n.rsplit(".", 1)[0] for n in os.listdir(out / STAGING)}  # the runs in flight: run_001 and maybe another
    assert "run_001" in left and not left & set(Store(out).runs)
    with caplog.at_level(logging.WARNING, logger="driver.datasets.ingest_workers"):
        report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out), jobs=2))
    assert report.ok, report.failures
    warning = next(line for line in caplog.text.splitlines() if "an earlier ingest stopped while writing" in line)
    assert all(run in warning for run in left)  # every run in flight at the crash, each isolated
    _assert_store_matches(out, runs)
    assert sorted(os.listdir(out)) == ["runs", "zarr.json"]


def test_an_interrupted_thread_pool_leaves_nothing_staged(tmp_path):
    """Ctrl-C (or a failed commit) while threads ingest: the runs in flight finish, are not committed, and their
    staging folders are removed, so the next ingest does not take them for crashed runs."""
    jobs = _jobs(tmp_path, 4)

    def interrupt(job, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, 2, interrupt, work=safe_ingest)
    assert not os.listdir(tmp_path / "s.zarr" / STAGING)
    assert Store(tmp_path / "s.zarr").runs == []


def test_workers_and_jobs_flags():
    from driver.cli import build_parser
    from driver.config_flags import config_from_args

    args = build_parser().parse_args(["ingest", "r.h5", "--out", "s.zarr", "--jobs", "3", "--workers", "processes"])
    config = config_from_args(IngestConfig, args)
    assert (config.jobs, config.workers) == (3, "processes")
    default = config_from_args(IngestConfig, build_parser().parse_args(["ingest", "r.h5", "--out", "s.zarr"]))
    assert (default.jobs, default.workers) == (None, "threads")  # None: DEFAULT_JOBS (2)
    with pytest.raises(SystemExit):  # argparse: invalid choice
        build_parser().parse_args(["ingest", "r.h5", "--out", "s.zarr", "--workers", "fork"])
