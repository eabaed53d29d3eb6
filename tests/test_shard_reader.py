"""The fast shard reader reads exactly what zarr wrote, checks every chunk's CRC32C, names the store, run,
array and frames when something is damaged, and keeps a bounded number of files open."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from driver.datasets import storage
from driver.datasets.layout import create_frames_array
from driver.datasets.shard_reader import ChecksumError, ShardedFrames, ShardReadError
from driver.datasets.shard_writer import FramesShardWriter
from driver.errors import DriverError
from tests.limits import SAFETY_S


def _data(n, h=6, w=8):
    return np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def _array(tmp_path, codec, n=100, shard=32, fill_to=None, writer="zarr"):
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    arr = create_frames_array(g, "left", n, 6, 8, shard, codec)
    data = _data(n)
    upto = n if fill_to is None else fill_to
    if writer == "zarr":
        arr[:upto] = data[:upto]
    else:  # what ingest writes: shard bytes and index written directly
        w = FramesShardWriter(tmp_path / "g.zarr" / "left", n, shard, codec)
        for i in range(-(-upto // shard)):
            w.write_shard(i, data[i * shard : min((i + 1) * shard, n)])
    return tmp_path / "g.zarr" / "left", data


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("writer", ["zarr", "direct"])
@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_reads_match_zarr(tmp_path, codec, writer):
    path, data = _array(tmp_path, codec, writer=writer)
    assert np.array_equal(zarr.open_array(path, mode="r")[...], data)  # plain zarr-python, CRCs checked by zarr
    r = ShardedFrames(path)
    assert r._fast and r.checksummed and len(r) == 100
    for start, count in [(0, 1), (30, 5), (31, 40), (90, 10), (0, 100)]:
        assert np.array_equal(r.read(start, count), data[start : start + count])
    idx = [5, 70, 71, 72, 3, 99]
    assert np.array_equal(r.read_frames(idx), data[idx])
    out = np.zeros((10, 2, 6, 8, 3), np.uint8)
    r.read(40, 10, out[:, 1])  # strided destination: one camera's slots
    assert np.array_equal(out[:, 1], data[40:50]) and not out[:, 0].any()
    with pytest.raises(IndexError, match="out of range"):
        r.read(95, 10)


def test_the_direct_writer_writes_what_zarr_writes(tmp_path):
    a, _ = _array(tmp_path / "a", "none", n=70, writer="zarr")
    b, _ = _array(tmp_path / "b", "none", n=70, writer="direct")
    for shard in ("0", "1", "2"):  # full shards and the partial last one: byte for byte the same files
        assert (a / "c" / shard / "0/0/0").read_bytes() == (b / "c" / shard / "0/0/0").read_bytes()


def test_unwritten_shards_read_as_fill(tmp_path):
    path, data = _array(tmp_path, "none", fill_to=40)
    r = ShardedFrames(path)
    got = r.read(30, 50)
    assert np.array_equal(got[:10], data[30:40]) and not got[34:].any()


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_a_flipped_byte_in_a_frame_is_named(tmp_path, codec):
    path, data = _array(tmp_path, codec, writer="direct")
    shard = path / "c" / "1" / "0" / "0" / "0"
    index = np.frombuffer(shard.read_bytes()[-(32 * 16 + 4) : -4], "<u8").reshape(-1, 2)
    _flip(shard, int(index[5, 0]) + 7)  # frame 32 + 5 = 37
    r = ShardedFrames(path)
    assert np.array_equal(r.read(0, 37), data[:37])  # the frames around it still read
    assert np.array_equal(r.read(38, 20), data[38:58])
    with pytest.raises(ChecksumError, match=r"left.*: frames 37\.\.37: checksum mismatch \(shard file c/1/0/0/0\)"):
        r.read(30, 10)
    with pytest.raises(ValueError, match="checksum"):  # zarr-python finds it too
        zarr.open_array(path, mode="r")[37]
    problems, _ = ShardedFrames(path).verify()
    assert len(problems) == 1 and "frames 37..37" in problems[0]
    assert issubclass(ChecksumError, DriverError)


def test_damaged_shard_indices_and_truncation_are_named(tmp_path):
    path, _ = _array(tmp_path, "none")
    _flip(path / "c" / "1" / "0" / "0" / "0", -6)  # inside the index
    with pytest.raises(ChecksumError, match=r"frames 32\.\.63: shard index checksum mismatch \(shard file c/1/"):
        ShardedFrames(path).read(40, 2)
    shard2 = path / "c" / "2" / "0" / "0" / "0"
    shard2.write_bytes(shard2.read_bytes()[:100])
    with pytest.raises(ShardReadError, match=r"frames 64\.\.95: .*truncated.*c/2/0/0/0"):
        ShardedFrames(path).read(70, 2)
    problems, _ = ShardedFrames(path).verify()
    assert [p.split(": ")[1] for p in problems] == ["frames 32..63", "frames 64..95"]


def test_format_1_arrays_still_read(tmp_path):
    """Arrays written before chunk checksums (no crc32c inner codec) read fast; they are not checksummed."""
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    data = _data(50)
    g.create_array("left", data=data, chunks=(1, 6, 8, 3), shards=(16, 6, 8, 3), compressors=None)
    r = ShardedFrames(tmp_path / "g.zarr" / "left")
    assert r._fast and not r.checksummed
    assert np.array_equal(r.read(10, 30), data[10:40])
    assert r.verify() == ([], 50 * 6 * 8 * 3)


def test_other_layouts_fall_back_to_zarr(tmp_path):
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    data = np.arange(40 * 4 * 4 * 3, dtype=np.uint8).reshape(40, 4, 4, 3)
    g.create_array("plain", data=data, chunks=(8, 4, 4, 3))  # unsharded
    r = ShardedFrames(tmp_path / "g.zarr" / "plain")
    assert not r._fast
    assert np.array_equal(r.read(5, 20), data[5:25])


def test_open_files_are_bounded(tmp_path):
    path, data = _array(tmp_path, "none", n=200, shard=8, writer="direct")  # 25 shard files
    before = storage.max_open_files()
    storage.set_max_open_files(4)
    try:
        r = ShardedFrames(path)
        fds0 = len(os.listdir("/proc/self/fd"))
        for start in np.random.default_rng(0).integers(0, 190, 300):
            assert np.array_equal(r.read(int(start), 10), data[start : start + 10])
            assert storage.open_file_count() <= 4
        assert len(os.listdir("/proc/self/fd")) <= fds0 + 4
    finally:
        storage.set_max_open_files(before)
    with pytest.raises(ValueError, match=r"max_open_files=0 must be an integer in 1\.\.65536"):
        storage.set_max_open_files(0)


def test_a_forked_child_starts_with_no_open_files(tmp_path):
    path, data = _array(tmp_path, "none", writer="direct")
    r = ShardedFrames(path)
    r.read(0, 100)
    assert storage.open_file_count() > 0
    pid = os.fork()
    if pid == 0:  # child: nothing inherited from the parent's cache, reads still right
        ok = storage.open_file_count() == 0 and np.array_equal(r.read(20, 50), data[20:70])
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0


LIMITED_READER = textwrap.dedent("""
    import os, resource, sys
    import numpy as np
    from torch.utils.data import DataLoader
    from driver.datasets.clips import ClipConfig, ClipDataset
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == 256, soft
    ds = ClipDataset(sys.argv[1], ClipConfig(clip_length=2, horizon=1))
    shards = sum(len(f) for r, _, f in os.walk(sys.argv[1]) if "/c/" in r + "/")
    assert shards > 3 * 256, shards

    def fds(batch):
        return len(os.listdir("/proc/self/fd"))

    n = 0
    for i in range(len(ds)):  # every clip, so every shard file, in this process
        n += int(ds[i]["frames"].sum() >= 0)
    worst = len(os.listdir("/proc/self/fd"))
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2, collate_fn=fds)
    worst_worker = max(loader)
    print(n, shards, worst, worst_worker)
""")


@pytest.mark.slow
def test_a_store_of_more_shards_than_open_files_allowed_reads_under_ulimit_256(tmp_path):
    from driver.datasets.ingest import IngestConfig, ingest
    from driver.datasets.synthetic import write_synthetic_runs

    write_synthetic_runs(tmp_path / "runs", 2, n_frames=480, height=8, width=8, seed=2)  # ~960 shard files
    out = tmp_path / "s.zarr"
    assert ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out), shard_frames=2)).ok
    proc = subprocess.run([sys.executable, "-c", LIMITED_READER, str(out)], capture_output=True, text=True,
                          preexec_fn=lambda: __import__("resource").setrlimit(  # noqa: PLW0108
                              __import__("resource").RLIMIT_NOFILE, (256, 256)), timeout=SAFETY_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    clips, shards, worst, worst_worker = map(int, proc.stdout.split())
    assert clips > 900 and shards > 3 * 256
    assert worst < 64 + 60 and worst_worker < 64 + 60  # the LRU's 64 plus the interpreter's own files


def _damage_in_place(path, offset):
    """Flip a byte of a file without giving it a new identity (same inode, size and mtime)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_checksums_first_checks_a_chunk_once_per_file_always_checks_every_read(tmp_path):
    """``first`` (the default) remembers what it checked, per file identity; ``always`` re-checks."""
    path, data = _array(tmp_path, "none", writer="direct")
    shard = path / "c" / "1" / "0" / "0" / "0"
    index = np.frombuffer(shard.read_bytes()[-(32 * 16 + 4) : -4], "<u8").reshape(-1, 2)
    r = ShardedFrames(path)
    assert r.checksums == "first"
    assert np.array_equal(r.read(30, 10), data[30:40])  # checked now
    _damage_in_place(shard, int(index[5, 0]) + 7)  # frame 37, behind the reader's back
    assert not np.array_equal(r.read(30, 10), data[30:40])  # the same file was checked already: not again
    with pytest.raises(ChecksumError, match=r"frames 37\.\.37: checksum mismatch"):
        ShardedFrames(path, checksums="always").read(30, 10)
    fresh = tmp_path / "fresh"  # the damaged bytes as a new file (new inode): checked again
    fresh.write_bytes(shard.read_bytes())
    os.replace(fresh, shard)
    storage.forget(path)
    with pytest.raises(ChecksumError, match=r"frames 37\.\.37"):
        r.read(30, 10)
    assert np.array_equal(r.read(0, 37), data[:37]) and np.array_equal(r.read(38, 20), data[38:58])


def test_the_checksum_policy_comes_from_the_environment(tmp_path, monkeypatch):
    path, _ = _array(tmp_path, "none", n=10, shard=8)
    monkeypatch.setenv("DRIVER_CHECKSUMS", "always")
    assert ShardedFrames(path).checksums == "always"
    monkeypatch.setenv("DRIVER_CHECKSUMS", "sometimes")
    with pytest.raises(ValueError, match=r"DRIVER_CHECKSUMS='sometimes' must be one of first, always"):
        ShardedFrames(path)
    with pytest.raises(ValueError, match=r"checksums='never' must be one of first, always"):
        ShardedFrames(path, checksums="never")


def test_a_forked_child_inherits_what_was_checked(tmp_path):
    path, data = _array(tmp_path, "none", writer="direct")
    r = ShardedFrames(path)
    r.read(0, 100)
    assert all(c.left == 0 for c in r._checked.values())
    pid = os.fork()
    if pid == 0:  # a DataLoader worker forked after the parent read: no second check needed, reads exact
        ok = all(c.left == 0 for c in r._checked.values()) and np.array_equal(r.read(10, 80), data[10:90])
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    import pickle

    assert pickle.loads(pickle.dumps(r))._checked == {}  # a spawned worker checks for itself


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_visit_hands_out_read_only_pieces_in_order(tmp_path, codec):
    path, data = _array(tmp_path, codec, fill_to=70, writer="direct")  # shards 0..2 (frames 0..95) written
    r = ShardedFrames(path)
    pieces = []
    r.visit(20, 80, lambda pos, frames: pieces.append((pos, frames.copy(), frames.flags.writeable)))
    got = np.concatenate([p[1] for p in pieces])
    assert [p[0] for p in pieces] == list(np.cumsum([0] + [len(p[1]) for p in pieces[:-1]]))
    assert np.array_equal(got[:76], data[20:96]) and not got[76:].any()  # the unwritten shard reads as 0
    if codec == "none":
        assert not any(p[2] for p in pieces[:-1])  # views of the mapped file itself
    with pytest.raises(IndexError, match="out of range"):
        r.visit(90, 20, lambda pos, frames: None)


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_reads_from_disk_are_exact_and_leave_the_range_cached(tmp_path, codec):
    path, data = _array(tmp_path, codec, n=200, shard=64, writer="direct")
    files = sorted(str(p) for p in (path / "c").rglob("*") if p.is_file())
    storage.close_all()
    for f in files:
        storage.drop_from_page_cache(f)
    r = ShardedFrames(path)
    mapping = storage.mapped(files[1])  # frames 64..127
    evicted = not mapping.resident(0, os.path.getsize(files[1]))
    for s in (70, 5, 150, 64, 100):
        assert np.array_equal(r.read(s, 20), data[s : s + 20])
    if evicted and codec == "none":  # where the filesystem lets pages go (not tmpfs): what was read is cached
        assert mapping.resident(r._stride * 6, r._stride * 20)
