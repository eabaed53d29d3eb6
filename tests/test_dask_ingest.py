"""driver ingest --dask: a LocalCluster of worker processes ingests like --jobs; a worker killed mid-run costs
only its run, which is retried (or, with no retries allowed, fails alone and a re-run completes it)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import Store
from driver.datasets.synthetic import write_synthetic_runs

from .conftest import s3_objects
from .faultproxy import FaultProxy
from .test_object_store import assert_run_equal


@pytest.mark.slow
def test_a_local_cluster_ingests_like_jobs(store_url, tmp_path):
    runs = write_synthetic_runs(tmp_path / "runs", 3, n_frames=40, height=24, width=32, stereo=True, seed=21)
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=store_url, dask="local:2"))
    assert report.ok and [o.status for o in report.outcomes] == ["ingested"] * 3
    assert [o.run for o in report.outcomes] == ["run_000", "run_001", "run_002"]  # the summary's order
    for p in runs:
        assert_run_equal(store_url, p.stem, p)
    again = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=store_url, dask="local:2"))
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


def _ingest_with_a_kill(s3_url, s3_endpoint, tmp_path, env_extra: dict):
    runs = write_synthetic_runs(tmp_path / "runs", 4, n_frames=64, height=24, width=32, seed=22)
    bucket, prefix = s3_url[5:].split("/", 1)
    with FaultProxy(s3_endpoint, only=("PUT", "/c/"), delay_s=0.3) as slow:  # slow shard uploads
        env = {**os.environ, "AWS_ENDPOINT_URL": slow.url, **env_extra}
        cmd = [sys.executable, "-m", "driver.cli", "ingest", str(tmp_path / "runs"), "--out", s3_url,
               "--shard-frames", "16", "--dask", "local:2", "--lock-ttl", "1"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            killed = _kill_the_writer_of("run_001", bucket, prefix, s3_endpoint, slow)
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
    assert str(killed) not in out
    return runs, proc.returncode, out, err


@pytest.mark.slow
def test_a_killed_worker_costs_only_a_retry_of_its_run(s3_url, s3_endpoint, tmp_path):
    runs, code, out, err = _ingest_with_a_kill(s3_url, s3_endpoint, tmp_path, {})
    assert code == 0, out + err
    assert "4 ok, 0 failed" in out
    assert Store(s3_url).runs == ["run_000", "run_001", "run_002", "run_003"]
    for p in runs:
        assert_run_equal(s3_url, p.stem, p, cameras=("left",))
    assert not [k for k in s3_objects(s3_endpoint, s3_url[5:].split("/")[0]) if "/locks/" in k]


@pytest.mark.slow
def test_with_no_retries_the_run_fails_alone_and_a_rerun_completes(s3_url, s3_endpoint, tmp_path):
    runs, code, out, err = _ingest_with_a_kill(s3_url, s3_endpoint, tmp_path,
                                               {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})
    assert code == 1 and "FAILED" in out and "run_001.h5: the Dask workers ingesting it died" in out, out + err
    done = Store(s3_url).runs
    assert "run_001" not in done and len(done) >= 2  # only what was on the dead worker is lost
    for name in done:
        assert_run_equal(s3_url, name, tmp_path / "runs" / f"{name}.h5", cameras=("left",))
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=s3_url, shard_frames=16, dask="local:2",
                                 lock_ttl_s=1))
    assert report.ok and {o.run: o.status for o in report.outcomes}["run_001"] == "ingested"
    for p in runs:
        assert_run_equal(s3_url, p.stem, p, cameras=("left",))
