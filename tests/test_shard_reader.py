"""The fast shard reader reads exactly what zarr wrote, and names the file when a shard is damaged."""

import numpy as np
import pytest
import zarr
from driver.datasets.layout import create_frames_array
from driver.datasets.shard_reader import ShardedFrames, ShardReadError


def _array(tmp_path, codec, n=100, shard=32, fill_to=None):
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    arr = create_frames_array(g, "left", n, 6, 8, shard, codec)
    data = np.random.default_rng(0).integers(0, 255, (n, 6, 8, 3), dtype=np.uint8)
    upto = n if fill_to is None else fill_to
    arr[:upto] = data[:upto]
    return tmp_path / "g.zarr" / "left", data


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_reads_match_zarr(tmp_path, codec):
    path, data = _array(tmp_path, codec)
    r = ShardedFrames(path)
    assert r._fast and len(r) == 100
    for start, count in [(0, 1), (30, 5), (31, 40), (90, 10), (0, 100)]:
        assert np.array_equal(r.read(start, count), data[start : start + count])
    idx = [5, 70, 71, 72, 3, 99]
    assert np.array_equal(r.read_frames(idx), data[idx])
    out = np.zeros((10, 2, 6, 8, 3), np.uint8)
    r.read(40, 10, out[:, 1])  # strided destination: one camera's slots
    assert np.array_equal(out[:, 1], data[40:50]) and not out[:, 0].any()
    with pytest.raises(IndexError, match="out of range"):
        r.read(95, 10)


def test_unwritten_shards_read_as_fill(tmp_path):
    path, data = _array(tmp_path, "none", fill_to=40)
    r = ShardedFrames(path)
    got = r.read(30, 50)
    assert np.array_equal(got[:10], data[30:40]) and not got[34:].any()


def test_damaged_shards_are_named(tmp_path):
    path, _ = _array(tmp_path, "none")
    shard = path / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-6] ^= 0xFF  # flip a bit inside the index
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardReadError, match=r"frames 32\.\.63: shard index checksum mismatch \(shard file c/1/0/0/0\)"):
        ShardedFrames(path).read(40, 2)
    shard2 = path / "c" / "2" / "0" / "0" / "0"
    shard2.write_bytes(shard2.read_bytes()[:100])
    with pytest.raises(ShardReadError, match="c/2/0/0/0"):
        ShardedFrames(path).read(70, 2)


def test_other_layouts_fall_back_to_zarr(tmp_path):
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    data = np.arange(40 * 4 * 4 * 3, dtype=np.uint8).reshape(40, 4, 4, 3)
    g.create_array("plain", data=data, chunks=(8, 4, 4, 3))  # unsharded
    r = ShardedFrames(tmp_path / "g.zarr" / "plain")
    assert not r._fast
    assert np.array_equal(r.read(5, 20), data[5:25])
