"""driver ingest --dask: a LocalCluster of worker processes ingests like --jobs; a worker killed mid-run costs
only its run, which is retried past the dead attempt's lease (or, with no retries allowed, fails alone, the
store stays consistent and a re-run completes it)."""

import json
import os
import signal
import threading
import time

import pytest

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import Store
from driver.datasets.synthetic import write_synthetic_runs

from .conftest import s3_objects
from .faultproxy import FaultProxy
from .test_object_store import assert_run_equal


@pytest.mark.slow
def test_a_local_cluster_ingests_a_folder_store_like_jobs(tmp_path):
    """The workers write staging folders, this process commits them under the store's lock (S3: below)."""
    runs = write_synthetic_runs(tmp_path / "runs", 3, n_frames=40, height=24, width=32, stereo=True, seed=21)
    out = str(tmp_path / "store.zarr")
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=out, dask="local:2"))
    assert report.ok and [o.status for o in report.outcomes] == ["ingested"] * 3
    assert [o.run for o in report.outcomes] == ["run_000", "run_001", "run_002"]  # the summary's order
    for p in runs:
        assert_run_equal(out, p.stem, p)
    assert sorted(os.listdir(out)) == ["runs", "zarr.json"]  # no staging left behind
    again = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=out, dask="local:2"))
    assert [o.status for o in again.outcomes] == ["unchanged"] * 3


def test_bad_dask_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"dask='local:0': local:N needs N in 1\.\.256"):
        IngestConfig(sources=["a.h5"], out="s", dask="local:0")
    with pytest.raises(ValueError, match="dask='lokal' must be local:N or a scheduler address"):
        IngestConfig(sources=["a.h5"], out="s", dask="lokal")
    with pytest.raises(ValueError, match="jobs=2 with dask='local:2': choose one"):
        IngestConfig(sources=["a.h5"], out="s", dask="local:2", jobs=2)


def _kill_the_writer_of(run: str, bucket: str, prefix: str, endpoint: str, proxy: FaultProxy) -> int:
    """SIGKILL the worker process writing ``run`` once its first shard is on its way (its lease names it)."""
    import boto3

    c = boto3.client("s3", endpoint_url=endpoint)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proxy.requests("PUT", f"runs/{run}/left/c/"):
            lease = json.loads(c.get_object(Bucket=bucket, Key=f"{prefix}/locks/{run}.lock")["Body"].read())
            os.kill(lease["pid"], signal.SIGKILL)
            return lease["pid"]
        time.sleep(0.01)
    raise AssertionError(f"the ingest never started writing {run}")


def _ingest_with_a_kill(s3_url, s3_endpoint, tmp_path):
    """Ingest 3 runs on a LocalCluster of 2 workers, SIGKILL the worker writing run_001 mid-run."""
    runs = write_synthetic_runs(tmp_path / "runs", 3, n_frames=48, height=24, width=32, stereo=False, seed=22)
    bucket, prefix = s3_url[5:].split("/", 1)
    result = {}
    # shard uploads held 0.1 s each: the kill lands while run_001's first shard is in flight, 2 more to go
    with FaultProxy(s3_endpoint, only=("PUT", "/c/"), delay_s=0.1) as slow:
        old = os.environ["AWS_ENDPOINT_URL"]
        os.environ["AWS_ENDPOINT_URL"] = slow.url  # the cluster's workers start with this environment
        try:
            cfg = IngestConfig(sources=[str(tmp_path / "runs")], out=s3_url, shard_frames=16, dask="local:2",
                               lock_ttl_s=1)
            thread = threading.Thread(target=lambda: result.setdefault("report", ingest(cfg)))
            thread.start()
            result["killed"] = _kill_the_writer_of("run_001", bucket, prefix, s3_endpoint, slow)
            thread.join(300)
        finally:
            os.environ["AWS_ENDPOINT_URL"] = old
    assert not thread.is_alive()
    return runs, result["report"]


@pytest.mark.slow
def test_a_killed_worker_costs_only_a_retry_of_its_run(s3_url, s3_endpoint, tmp_path):
    runs, report = _ingest_with_a_kill(s3_url, s3_endpoint, tmp_path)
    assert report.ok and [o.status for o in report.outcomes] == ["ingested"] * 3, report.failures
    assert Store(s3_url).runs == ["run_000", "run_001", "run_002"]
    for p in runs:
        assert_run_equal(s3_url, p.stem, p, cameras=("left",))
    assert not [k for k in s3_objects(s3_endpoint, s3_url[5:].split("/")[0]) if "/locks/" in k]


@pytest.mark.slow
def test_with_no_retries_the_run_fails_alone_and_a_rerun_completes(s3_url, s3_endpoint, tmp_path):
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # the scheduler runs in this process
        runs, report = _ingest_with_a_kill(s3_url, s3_endpoint, tmp_path)
    failed = {o.run: o.error for o in report.failures}
    assert "run_001" in failed and "the Dask workers ingesting it died" in failed["run_001"]
    done = Store(s3_url).runs
    assert "run_001" not in done and set(done) | set(failed) == {"run_000", "run_001", "run_002"}
    for name in done:  # only what was on the dead worker is lost; what is visible is whole
        assert_run_equal(s3_url, name, tmp_path / "runs" / f"{name}.h5", cameras=("left",))
    again = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=s3_url, shard_frames=16, lock_ttl_s=1))
    assert again.ok and {o.run: o.status for o in again.outcomes}["run_001"] == "ingested"
    for p in runs:
        assert_run_equal(s3_url, p.stem, p, cameras=("left",))
