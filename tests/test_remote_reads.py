"""Reading a store on S3: one range request per clip, a batch's requests in flight together, a second epoch
from the cache, retries through a faulty network, one clear error when it stays down, and a forked child that
fails fast instead of hanging. (DataLoader workers and torchrun ranks reading from S3: test_remote_training.)"""

import multiprocessing as mp
import time

import numpy as np
import pytest

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.object_store import ForkedClientError, StoreIOError
from driver.datasets.shard_cache import ShardCache
from driver.datasets.store import Store
from driver.datasets.synthetic import write_synthetic_runs
from driver.datasets.verify import VerifyConfig, verify_store

from .faultproxy import FaultProxy

CFG = ClipConfig(clip_length=4, stack=1, cameras=("left",), horizon=2)


@pytest.fixture
def stores(s3_url, tmp_path):
    """The same three runs on S3 and in a folder (the reference)."""
    write_synthetic_runs(tmp_path / "runs", 3, n_frames=96, height=24, width=32, stereo=True, seed=11)
    src = [str(tmp_path / "runs")]
    assert ingest(IngestConfig(sources=src, out=s3_url, shard_frames=32)).ok
    assert ingest(IngestConfig(sources=src, out=str(tmp_path / "ref.zarr"), shard_frames=32)).ok
    return s3_url, str(tmp_path / "ref.zarr")


def _through(monkeypatch, proxy: FaultProxy) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # clients built from now on go through the proxy


def test_one_range_request_per_clip_and_none_the_second_epoch(stores, s3_endpoint, tmp_path, monkeypatch):
    url, ref = stores
    with FaultProxy(s3_endpoint) as proxy:
        _through(monkeypatch, proxy)
        ds, want = ClipDataset(Store(url, cache=None), CFG), ClipDataset(ref, CFG)
        picks = np.random.default_rng(0).choice(len(ds), 40, replace=False)
        proxy.clear()
        for i in picks:
            assert np.array_equal(ds[int(i)]["frames"].numpy(), want[int(i)]["frames"].numpy())
        gets = proxy.requests("GET", "/left/c/")
        ranged = [r for r in gets if r[2] and not r[2].startswith("bytes=-")]
        indices = [r for r in gets if r[2] and r[2].startswith("bytes=-")]
        shards_touched = {r[1] for r in gets}
        assert len(ranged) == len(picks) + sum(  # one per clip, two for a clip across a shard boundary
            (s // 32) != ((s + 3) // 32) for s in (int(ds.clip_index()[1][i]) for i in picks))
        assert len(indices) == len(shards_touched)  # each shard's index once
        first = ClipDataset(Store(url, cache=ShardCache(tmp_path / "cache", 10**8)), CFG)
        for i in picks:  # the first epoch through the cache fills it
            first[int(i)]
        proxy.clear()
        st2 = Store(url, cache=ShardCache(tmp_path / "cache", 10**8))  # a new process's view: same cache
        ds2 = ClipDataset(st2, CFG)
        for i in picks:
            assert np.array_equal(ds2[int(i)]["frames"].numpy(), want[int(i)]["frames"].numpy())
        assert proxy.requests("GET", "/left/c/") == []  # the second epoch reads only local files
        assert st2.cache.stats["hits"] >= len(picks)


def test_a_batch_is_fetched_in_parallel(stores, s3_endpoint, monkeypatch):
    url, ref = stores
    with FaultProxy(s3_endpoint, only=("GET", "/c/"), delay_s=0.2) as proxy:
        _through(monkeypatch, proxy)
        ds, want = ClipDataset(Store(url, cache=None), CFG), ClipDataset(ref, CFG)
        idx = list(range(0, len(ds), max(1, len(ds) // 16)))[:16]
        ds.__getitems__(idx[:1])  # parse the shard indices first
        t0 = time.monotonic()
        batch = ds.__getitems__(idx)
        seconds = time.monotonic() - t0
    for i, item in zip(idx, batch, strict=True):
        assert np.array_equal(item["frames"].numpy(), want[i]["frames"].numpy())
    assert seconds < 0.2 * len(idx) / 2  # 16 requests of 0.2 s each, not one after another


@pytest.mark.parametrize("faults", [{"503": 0.1, "500": 0.05, "drop": 0.05, "cut": 0.05, "lost": 0.05}])
def test_a_faulty_network_is_retried(s3_url, s3_endpoint, tmp_path, monkeypatch, faults):
    write_synthetic_runs(tmp_path / "runs", 2, n_frames=32, height=24, width=32, stereo=True, seed=12)
    src = [str(tmp_path / "runs")]
    assert ingest(IngestConfig(sources=src, out=str(tmp_path / "ref.zarr"), shard_frames=16)).ok
    monkeypatch.setenv("DRIVER_STORE_BACKOFF_S", "0.01")
    with FaultProxy(s3_endpoint, faults, seed=3) as proxy:
        _through(monkeypatch, proxy)
        report = ingest(IngestConfig(sources=src, out=s3_url, shard_frames=16))
        assert report.ok, report.failures
        ds, want = ClipDataset(Store(s3_url, cache=None), CFG), ClipDataset(str(tmp_path / "ref.zarr"), CFG)
        for i in range(0, len(ds), 7):
            assert np.array_equal(ds[i]["frames"].numpy(), want[i]["frames"].numpy())
        assert verify_store(VerifyConfig(store=s3_url)).ok
    faulted = [r for r in proxy.log if r[3] != "ok"]
    assert len(faulted) >= 10 and {r[3] for r in faulted} >= {"503", "drop", "cut"}


def test_a_server_that_stays_down_is_one_clear_error(stores, s3_endpoint, monkeypatch):
    url, _ = stores
    monkeypatch.setenv("DRIVER_STORE_RETRIES", "2")
    monkeypatch.setenv("DRIVER_STORE_BACKOFF_S", "0.01")
    with FaultProxy(s3_endpoint, {"503": 1.0}, only=("GET", "/left/c/")) as proxy:
        _through(monkeypatch, proxy)
        frames = Store(url, cache=None).frames("run_000", "left")
        t0 = time.monotonic()
        with pytest.raises(StoreIOError) as e:
            frames.read(40, 4)
        assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert f"{url}/runs/run_000/left/c/1/0/0/0" in msg and "SlowDown" in msg and "\n" not in msg
    assert len(proxy.requests("GET", "/left/c/1/")) == 3  # the first try and 2 retries


def _read_after_fork(url, q) -> None:
    try:
        Store(url, cache=None).frames("run_000", "left").read(0, 2)
        q.put("read")
    except ForkedClientError as e:
        q.put(str(e))


def test_a_forked_child_fails_fast_instead_of_hanging(stores):
    url, _ = stores
    Store(url, cache=None).frames("run_000", "left").read(0, 2)  # this process has used obstore
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_read_after_fork, args=(url, q))
    p.start()
    p.join(120)
    assert not p.is_alive()
    assert "multiprocessing_context='forkserver'" in q.get(timeout=5)
