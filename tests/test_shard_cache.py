"""The read-through shard cache: hits only for checked bytes, bounded by LRU eviction, shared by processes,
disposable when damaged."""

import multiprocessing as mp
import os
import random

import pytest

from driver.datasets.shard_cache import ShardCache, parse_bytes


def _content(key: str, offset: int, n: int) -> bytes:
    """Deterministic bytes of object ``key`` at ``offset`` (what the remote store would return)."""
    return random.Random(f"{key}:{offset}").randbytes(n)


def _pieces(offset: int, count: int, size: int) -> list[tuple[int, int]]:
    return [(offset + i * size, size) for i in range(count)]


def _fill(cache: ShardCache, key: str, offset: int, count: int, size: int) -> bytes:
    data = b"".join(_content(key, o, n) for o, n in _pieces(offset, count, size))
    cache.put(key, offset, data, _pieces(offset, count, size))
    return data


def test_hits_only_for_checked_bytes(tmp_path):
    cache = ShardCache(tmp_path / "c", 10**6)
    data = _fill(cache, "s3://b/x/c/0@w1", 1000, 4, 100)
    assert cache.get("s3://b/x/c/0@w1", _pieces(1000, 4, 100)) == data
    assert cache.get("s3://b/x/c/0@w1", _pieces(1100, 2, 100)) == data[100:300]
    assert cache.get("s3://b/x/c/0@w1", _pieces(1000, 5, 100)) is None  # one chunk never cached
    assert cache.get("s3://b/x/c/0@w2", _pieces(1000, 4, 100)) is None  # another version of the run
    files = os.listdir(tmp_path / "c" / "data")
    with open(tmp_path / "c" / "data" / files[0], "r+b") as f:  # a torn write, a bit flipped on disk
        f.seek(1250)
        f.write(b"\x00")
    assert cache.get("s3://b/x/c/0@w1", _pieces(1000, 4, 100)) is None
    assert cache.stats["bad"] == 1
    assert cache.get("s3://b/x/c/0@w1", _pieces(1000, 2, 100)) == data[:200]  # the intact chunks still hit
    _fill(cache, "s3://b/x/c/0@w1", 1000, 4, 100)  # fetched again: whole again
    assert cache.get("s3://b/x/c/0@w1", _pieces(1000, 4, 100)) == data


def test_bounded_least_recently_used_first(tmp_path):
    cache = ShardCache(tmp_path / "c", 100_000)
    for i in range(10):
        _fill(cache, f"obj{i}", 0, 3, 10_000)  # 30 kB each
    assert cache.cached_bytes() <= 100_000
    on_disk = sum(os.path.getsize(tmp_path / "c" / "data" / f) for f in os.listdir(tmp_path / "c" / "data"))
    assert on_disk <= 100_000 + 30_000
    assert cache.get("obj9", _pieces(0, 3, 10_000)) is not None  # the newest stays
    assert cache.get("obj0", _pieces(0, 3, 10_000)) is None  # the oldest went first
    assert cache.stats["evicted"] >= 7


def _worker(root: str, seed: int, q) -> None:
    cache = ShardCache(root, 200_000)
    rng = random.Random(seed)
    wrong = hits = 0
    for _ in range(300):
        key = f"shard{rng.randrange(8)}"
        first = rng.randrange(20)
        pieces = _pieces(first * 5_000, 3, 5_000)
        expected = b"".join(_content(key, o, n) for o, n in pieces)
        got = cache.get(key, pieces)
        if got is None:
            cache.put(key, pieces[0][0], expected, pieces)
        else:
            hits += 1
            wrong += got != expected
    q.put((wrong, hits, cache.cached_bytes()))


def test_processes_share_it_safely(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), seed, q)) for seed in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert sum(r[0] for r in results) == 0  # never a wrong byte, though others evict meanwhile
    assert sum(r[1] for r in results) > 0
    assert ShardCache(tmp_path / "c", 200_000).cached_bytes() <= 200_000


def test_a_damaged_database_is_bypassed(tmp_path, caplog):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "index.sqlite").write_bytes(b"this is not a database" * 100)
    cache = ShardCache(tmp_path / "c", 10**6)
    assert cache.get("k", [(0, 10)]) is None
    cache.put("k", 0, b"x" * 10, [(0, 10)])  # no error: reads go to the store instead
    assert "is unusable" in caplog.text and str(tmp_path / "c") in caplog.text


def test_configuration_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIVER_CACHE_DIR", str(tmp_path / "here"))
    monkeypatch.setenv("DRIVER_CACHE_BYTES", "512M")
    cache = ShardCache.from_env()
    assert cache.root == str(tmp_path / "here") and cache.max_bytes == 512 * 2**20
    monkeypatch.setenv("DRIVER_CACHE_BYTES", "0")
    assert ShardCache.from_env() is None
    assert parse_bytes("20G") == 20 * 2**30 and parse_bytes("1.5GiB") == int(1.5 * 2**30)
    monkeypatch.setenv("DRIVER_CACHE_BYTES", "lots")
    with pytest.raises(ValueError, match="DRIVER_CACHE_BYTES='lots' must be a size such as 20G"):
        ShardCache.from_env()
