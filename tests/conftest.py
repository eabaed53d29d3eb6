"""Shared fixtures: tiny synthetic runs and stores made in code."""

from __future__ import annotations

import logging
import os
import sys
import uuid

# One compute thread in this process and every process a test starts (before torch is imported; driver's
# automatic thread count honours it as a cap): the suite's models and batches are tiny, two threads only
# add OpenMP spin-waits, and a shared CI machine makes those stall.
os.environ["OMP_NUM_THREADS"] = "1"
# Compiled modules are kept (in __pycache__, ignored by git) even where PYTHONDONTWRITEBYTECODE is set: the
# suite starts ~100 Python processes, and each would otherwise compile driver's modules from source again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

import h5py
import numpy as np
import pytest
import torch

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.synthetic import synthetic_segments, write_synthetic_runs
from tests.cpu_report import (  # noqa: F401
    pytest_addoption,
    pytest_runtest_call,
    pytest_runtest_logreport,
    pytest_runtest_setup,
    pytest_runtest_teardown,
    pytest_terminal_summary,
)

torch.set_num_threads(1)  # in case torch was imported before this file set OMP_NUM_THREADS


def read_run_frames(path, camera="left") -> np.ndarray:
    """All frames of one camera of an HDF5 run, concatenated over segments (reference reader)."""
    with h5py.File(path, "r") as f:
        segs = sorted(f["segments"].keys(), key=int)
        return np.concatenate([f["segments"][s][camera][()] for s in segs])


def read_run_series(path, name) -> np.ndarray:
    with h5py.File(path, "r") as f:
        segs = sorted(f["segments"].keys(), key=int)
        return np.concatenate([f["segments"][s][name][()] for s in segs])


@pytest.fixture
def segments():
    """Factory for one run's segments (dicts of arrays) that tests can damage."""
    def make(seed=0, n_frames=120, height=24, width=32, stereo=True, n_segments=2):
        return synthetic_segments(seed, n_frames, height, width, stereo, n_segments)
    return make


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory):
    """Four small stereo runs (24×32, 150 frames each)."""
    d = tmp_path_factory.mktemp("runs")
    return write_synthetic_runs(d, 4, n_frames=150, height=24, width=32, stereo=True, seed=3)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory, small_runs):
    out = tmp_path_factory.mktemp("store") / "store.zarr"
    report = ingest(IngestConfig(sources=[str(p) for p in small_runs], out=str(out), shard_frames=64))
    assert report.ok, report.failures
    return out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Back to one torch thread after every test (a test may apply another count, as a command does)."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """An S3-compatible server on 127.0.0.1 for the session: moto's ThreadedMotoServer (in this process;
    range GETs, If-None-Match / If-Match writes, multipart, listings). The AWS_* variables point obstore,
    boto3 and s3fs (and the processes the tests start) at it; frames cache under a session folder."""
    from moto import backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # it logs every request otherwise
    mp = pytest.MonkeyPatch()
    # moto lists its own package folder (~150 stat calls) on every request to find the service; the list
    # cannot change while the server runs, so list it once
    modules = tuple(backends.list_of_moto_modules())
    mp.setattr(backends, "list_of_moto_modules", lambda: modules)
    for k, v in {**S3_ENV, "DRIVER_CACHE_DIR": str(tmp_path_factory.mktemp("shard_cache"))}.items():
        mp.setenv(k, v)  # explicit keys also keep clients from probing instance metadata
    mp.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    yield endpoint
    server.stop()
    mp.undo()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A new, empty bucket for this test (tests never share or reset buckets)."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:24]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_url(s3_bucket):
    return f"s3://{s3_bucket}/lab/driving.zarr"


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path):
    """Where a test's store goes: a folder, or a bucket of the test S3 server (the same tests run on both)."""
    if request.param == "local":
        return str(tmp_path / "store.zarr")
    return request.getfixturevalue("s3_url")


def s3_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every object of a bucket, read with boto3 (no driver code)."""
    import boto3

    c = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
