"""Shared fixtures: tiny synthetic runs and stores made in code."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.synthetic import synthetic_segments, write_synthetic_runs


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models at batch 1..16 run fastest, and steadiest on a shared 2-core machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
