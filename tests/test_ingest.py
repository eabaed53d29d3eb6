"""driver ingest: bit-exact round trip, standard zarr, idempotence, replacement, resume, bad files."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_writer import write_run
from driver.datasets.store import Store, StoreError
from driver.datasets.synthetic import write_synthetic_runs
from driver.datasets.validity import ValidityRules, validity_mask
from tests.limits import SAFETY_S

from .conftest import read_run_frames, read_run_series
from .ingest_workers import dies_on_run_001


def _assert_run_equal(store_path, run_name, h5_path, cameras=("left", "right")):
    g = zarr.open_group(store_path, mode="r")[f"runs/{run_name}"]  # plain zarr-python, no driver code
    st = Store(store_path)
    for cam in cameras:
        ref = read_run_frames(h5_path, cam)
        assert np.array_equal(g[cam][...], ref)
        assert np.array_equal(st.frames(run_name, cam).read(0, len(ref)), ref)
    for name, key in (("steer", "steer"), ("motor", "motor"), ("left_timestamp", "timestamp")):
        ref = read_run_series(h5_path, name)
        assert np.array_equal(g[key][...], ref.astype(g[key].dtype))
    assert np.array_equal(g["extra/gyro"][...], read_run_series(h5_path, "gyro"))
    assert np.array_equal(g["extra/encoder"][...], read_run_series(h5_path, "encoder"))


@pytest.mark.parametrize("shape, stereo, codec", [((94, 168), True, "none"), ((96, 96), False, "lz4"),
                                                  ((120, 160), True, "zstd")])
def test_round_trip_bit_exact(tmp_path, shape, stereo, codec):
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=90, height=shape[0], width=shape[1],
                                stereo=stereo, seed=1)
    out = tmp_path / "s.zarr"
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out), codec=codec, shard_frames=32))
    assert report.ok and [o.status for o in report.outcomes] == ["ingested", "ingested"]
    for p in runs:
        _assert_run_equal(out, p.stem, p, ("left", "right") if stereo else ("left",))
    meta = Store(out).run_meta("run_000")
    assert meta["labels"]["direct"] == 1 and meta["source"]["size"] == os.path.getsize(runs[0])
    assert len(meta["source"]["sha256"]) == 64 and meta["codec"] == codec
    assert [s["length"] for s in meta["segments"]] == [45, 45]
    arr = zarr.open_group(out, mode="r")["runs/run_000/left"]
    assert arr.shards == (32, *shape, 3) and arr.chunks == (1, *shape, 3)


def test_validity_mask_as_the_lab(tmp_path, small_store, small_runs):
    st = Store(small_store)
    p = small_runs[0]
    state = read_run_series(p, "state")
    valid = st.series("run_000", "valid")
    assert not valid[state == 2].any()  # braking and coasting frames are kept (tests/test_validity.py)
    t = read_run_series(p, "left_timestamp")
    seg = st.series("run_000", "segment")
    gaps = np.flatnonzero((np.diff(t) >= 0.1) & (seg[1:] == seg[:-1]))
    assert len(gaps) and not valid[gaps].any()
    assert 0.7 < valid.mean() < 1.0
    # configurable thresholds; lone state-4 frames read as the state before them
    lone4 = np.array([1, 1, 4, 1, 4, 4, 1], dtype=float)
    m = validity_mask(lone4, np.full(7, 49.0), np.full(7, 60.0), np.arange(7) * 0.03, np.zeros(7, int),
                      ValidityRules(accepted_states=(1,), min_motor=50))
    assert m.tolist() == [True, True, True, True, False, False, True]


def test_idempotent_and_changed_file_replaces(tmp_path, segments):
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=60, height=24, width=32, seed=2)
    out = str(tmp_path / "s.zarr")
    ingest(IngestConfig(sources=[str(p) for p in runs], out=out))
    before = {f: os.stat(os.path.join(r, f)).st_mtime_ns for r, _, fs in os.walk(out) for f in fs}
    again = ingest(IngestConfig(sources=[str(p) for p in runs], out=out))
    assert [o.status for o in again.outcomes] == ["unchanged", "unchanged"]
    after = {f: os.stat(os.path.join(r, f)).st_mtime_ns for r, _, fs in os.walk(out) for f in fs}
    assert before == after  # a true no-op
    os.utime(runs[0])  # touched but identical: hashed, still unchanged
    assert ingest(IngestConfig(sources=[str(runs[0])], out=out)).outcomes[0].status == "unchanged"
    write_run(runs[1], segments(seed=9, n_frames=50), {"racing": 1})  # new content, same name
    third = ingest(IngestConfig(sources=[str(p) for p in runs], out=out))
    assert [o.status for o in third.outcomes] == ["unchanged", "replaced"]
    _assert_run_equal(out, "run_001", runs[1])
    assert Store(out).run_meta("run_001")["labels"] == {"racing": 1}
    assert sorted(os.listdir(out)) == ["runs", "zarr.json"]  # no staging or trash left behind


@pytest.mark.parametrize("workers", ["threads", pytest.param("processes", marks=pytest.mark.slow)])
def test_bad_files_fail_alone(tmp_path, segments, workers):
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=60, height=24, width=32, seed=4)
    bad = tmp_path / "runs" / "bad.h5"
    segs = segments(n_frames=40)
    segs[0]["steer"][2] = np.nan
    write_run(bad, segs)
    trunc = tmp_path / "runs" / "trunc.h5"
    write_run(trunc, segments(n_frames=80))
    data = trunc.read_bytes()
    trunc.write_bytes(data[: int(len(data) * 0.6)])
    (tmp_path / "runs" / "readme.h5").write_text("not a run")
    out = tmp_path / "s.zarr"
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out), jobs=2, workers=workers))
    status = {o.run: o.status for o in report.outcomes}
    assert status == {"bad": "failed", "readme": "failed", "run_000": "ingested", "run_001": "ingested",
                      "trunc": "failed"}
    errors = {o.run: o.error for o in report.failures}
    assert "bad.h5: segments/0/steer[2] is nan" in errors["bad"]
    assert "readme.h5: not an HDF5 file" in errors["readme"]
    assert str(trunc) in errors["trunc"]
    assert Store(out).runs == ["run_000", "run_001"]
    for p in runs:
        _assert_run_equal(out, p.stem, p)


def test_duplicate_names_and_missing_files(tmp_path):
    a = write_synthetic_runs(tmp_path / "a", 1, n_frames=40, height=24, width=32)[0]
    b = write_synthetic_runs(tmp_path / "b", 1, n_frames=40, height=24, width=32, seed=5)[0]
    report = ingest(IngestConfig(sources=[str(a), str(b), str(tmp_path / "nope.h5")], out=str(tmp_path / "s")))
    assert [o.status for o in report.outcomes] == ["ingested", "failed", "failed"]
    assert "also used by" in report.outcomes[1].error and "no such file" in report.outcomes[2].error


def test_refuses_a_non_store_path(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.txt").write_text("hi")
    with pytest.raises(StoreError, match="is not a store"):
        ingest(IngestConfig(sources=["whatever.h5"], out=str(tmp_path / "x")))
    with pytest.raises(ValueError, match=r"jobs=0 must be in 1\.\.256"):
        IngestConfig(sources=["a.h5"], out="s", jobs=0)
    with pytest.raises(ValueError, match="workers='fork' must be one of threads, processes"):
        IngestConfig(sources=["a.h5"], out="s", workers="fork")


def test_killed_ingest_resumes(tmp_path):
    runs = write_synthetic_runs(tmp_path / "runs", 6, n_frames=200, height=64, width=96, seed=6)
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "driver.cli", "ingest", str(tmp_path / "runs"), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + SAFETY_S
    while time.time() < deadline and not (out / "runs" / "run_000").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "runs" / "run_000").exists()
    done = Store(out).runs
    assert len(done) < 6, "ingest finished before it could be killed"
    for name in done:  # everything visible is complete
        _assert_run_equal(out, name, tmp_path / "runs" / f"{name}.h5")
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out)))
    assert report.ok
    assert sum(o.status == "unchanged" for o in report.outcomes) == len(done)
    assert Store(out).runs == [p.stem for p in runs]
    for p in runs:
        _assert_run_equal(out, p.stem, p)
    assert not (out / ".staging").exists()


def test_concurrent_ingest_is_refused(tmp_path):
    from driver.datasets.store import create_store, locked

    st = create_store(tmp_path / "s.zarr")
    with locked(st), pytest.raises(StoreError, match="another ingest"), locked(Store(tmp_path / "s.zarr")):
        pass
    shutil.rmtree(tmp_path / "s.zarr")


def test_replace_killed_between_renames_keeps_the_old_run(tmp_path, segments):
    from driver.datasets.layout import RUNS, TRASH

    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=40, height=24, width=32, seed=3)
    out = tmp_path / "s.zarr"
    ingest(IngestConfig(sources=[str(p) for p in runs], out=str(out)))
    # the state commit_run leaves when killed after moving the old run aside, before renaming the new one in
    (out / TRASH).mkdir()
    os.rename(out / RUNS / "run_001", out / TRASH / "run_001.0123456789ab")
    assert Store(out).runs == ["run_000"]
    report = ingest(IngestConfig(sources=[str(p) for p in runs], out=str(out)))
    assert [o.status for o in report.outcomes] == ["unchanged", "unchanged"]  # restored, not re-ingested
    _assert_run_equal(out, "run_001", runs[1])
    assert sorted(os.listdir(out)) == ["runs", "zarr.json"]


@pytest.mark.slow
def test_a_dying_worker_fails_only_its_own_run(tmp_path):
    from driver.datasets.ingest import _plan
    from driver.datasets.ingest_workers import run_jobs
    from driver.datasets.store import create_store

    runs = write_synthetic_runs(tmp_path / "runs", 4, n_frames=30, height=24, width=32, seed=8)
    config = IngestConfig(sources=[str(p) for p in runs], out=str(tmp_path / "s.zarr"), jobs=2)
    jobs, known = _plan(create_store(config.out), config, [str(p) for p in runs])
    assert len(jobs) == 4 and not known
    results = {}
    run_jobs(jobs, 2, lambda job, result: results.update({job.run: result}), "processes", work=dies_on_run_001)
    assert {r: v["status"] for r, v in results.items()} == {
        "run_000": "ingested", "run_001": "failed", "run_002": "ingested", "run_003": "ingested"}
    assert "run_001.h5: the worker process ingesting it died" in results["run_001"]["error"]
    for name in ("run_000", "run_002", "run_003"):
        assert os.path.isfile(os.path.join(results[name]["staging"], "zarr.json"))


def test_a_failed_first_ingest_leaves_no_store(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad.h5").write_text("not a run")
    out = tmp_path / "data" / "s.zarr"
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out)))
    assert not report.ok and not out.exists()
    assert os.listdir(tmp_path / "data") == []  # no temporary folders left beside it either
    (out).mkdir()  # an empty folder given as --out stays an empty folder
    assert not ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out))).ok
    assert not out.exists() or not any(out.iterdir())


RACERS = """
import os, sys, traceback
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import StoreError
runs, out, start, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
children = []
for _ in range(n):  # n racers forked after the imports: each a process of its own, none paying for them
    pid = os.fork()
    if pid:
        children.append(pid)
        continue
    code = 0
    try:
        os.read(start, 1)  # the start line: every racer blocks here until the test closes the pipe
        try:
            report = ingest(IngestConfig(sources=[runs], out=out))
            line = "ok" if report.ok else "failed"
        except StoreError as e:
            line = "refused: " + " ".join(str(e).split())
        os.write(1, (line + "\\n").encode())  # one short write: racers' lines never interleave
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)
print("ready", flush=True)
failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
sys.exit(f"{len(failed)} racer(s) failed" if failed else 0)
"""


def test_racing_ingests_into_a_new_store_leave_a_consistent_store(tmp_path):
    """20 processes ingest the same runs into one new store, released at once from one start line."""
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=40, height=24, width=32, seed=11)
    out = tmp_path / "s.zarr"
    start_r, start_w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", RACERS, str(tmp_path / "runs"), str(out), str(start_r), "20"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, pass_fds=(start_r,))
        os.close(start_r)
        # all 20 have forked and wait at the start line (no sleep to guess how long imports take)
        assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=SAFETY_S)[1][-2000:]
    finally:
        os.close(start_w)  # end of file on the pipe: all 20 go at once
    stdout, stderr = proc.communicate(timeout=SAFETY_S)
    assert proc.returncode == 0, stderr[-3000:]
    lines = stdout.splitlines()
    assert len(lines) == 20 and all(line == "ok" or line.startswith("refused:") for line in lines), lines
    assert "ok" in lines  # someone ingested; the others stopped with one clear line
    assert all("another ingest is writing this store" in line or "removed" in line
               for line in lines if line != "ok")
    assert Store(out).runs == ["run_000", "run_001"]
    for p in runs:
        _assert_run_equal(out, p.stem, p)
    assert sorted(os.listdir(out)) == ["runs", "zarr.json"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no creation leftovers
    again = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out)))
    assert [o.status for o in again.outcomes] == ["unchanged", "unchanged"]


def test_a_creator_that_loses_the_lock_leaves_the_store_to_its_holder(tmp_path, monkeypatch):
    """The race seen with 20 simultaneous ingests: the process that created the store did not get its lock and
    removed the (still empty) store from under the ingest that held it."""
    import fcntl

    from driver.datasets import ingest as ingest_module
    from driver.datasets.store import create_store

    runs = write_synthetic_runs(tmp_path / "runs", 1, n_frames=20, height=24, width=32, seed=2)
    store = create_store(tmp_path / "s.zarr")
    monkeypatch.setattr(ingest_module, "open_or_create_store", lambda p: (Store(p), True))  # "I created it"
    with open(store.path / "zarr.json", "rb") as holder:  # another ingest holds the lock, its runs not yet in
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StoreError, match="another ingest is writing this store"):
            ingest(IngestConfig(sources=[str(p) for p in runs], out=str(store.path)))
        assert (store.path / "zarr.json").is_file()  # still there for the holder


def _write_layout(path, segments, layout):
    """The run of ``write_run`` with its frames stored another way (what other recorders write)."""
    import h5py

    write_run(path, segments, {"direct": 1})
    with h5py.File(path, "a") as f:
        for i, seg in enumerate(segments):
            for cam in ("left", "right"):
                del f["segments"][str(i)][cam]
                kw = {"contiguous": {}, "chunks4": {"chunks": (4, *seg[cam].shape[1:])},
                      "gzip": {"chunks": (1, *seg[cam].shape[1:]), "compression": "gzip"},
                      "tiles": {"chunks": (2, 8, 8, 3)}}[layout]
                f["segments"][str(i)].create_dataset(cam, data=seg[cam], **kw)


def test_frame_offsets_only_for_frames_stored_as_they_are(tmp_path, segments):
    import h5py

    from driver.datasets.run_ingest import frame_offsets

    segs = segments(n_frames=30, n_segments=1)
    expected = {"chunks1": True, "contiguous": True, "chunks4": True, "gzip": False, "tiles": False}
    for layout, direct in expected.items():
        path = tmp_path / f"{layout}.h5"
        if layout == "chunks1":
            write_run(path, segs, {"direct": 1})
        else:
            _write_layout(path, segs, layout)
        raw = path.read_bytes()
        with h5py.File(path, "r") as f:
            offsets = frame_offsets(f["segments"]["0"]["left"])
        assert (offsets is not None) == direct, layout
        if direct:  # every frame's bytes are where the offsets say
            nbytes = segs[0]["left"][0].nbytes
            assert all(raw[o : o + nbytes] == segs[0]["left"][i].tobytes() for i, o in enumerate(offsets))
    with h5py.File(tmp_path / "sparse.h5", "w") as f:  # chunks never written read as the fill value
        f.create_dataset("x", shape=(6, 4, 4, 3), dtype=np.uint8, chunks=(1, 4, 4, 3))[2] = 7
        assert frame_offsets(f["x"]) is None


@pytest.mark.parametrize("layout", ["contiguous", "chunks4", "gzip", "tiles"])
def test_every_frame_layout_ingests_the_same_frames(tmp_path, segments, layout):
    segs = segments(seed=4, n_frames=70)
    (tmp_path / "runs").mkdir()
    _write_layout(tmp_path / "runs" / "r.h5", segs, layout)
    out = tmp_path / "s.zarr"
    assert ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out), shard_frames=16)).ok
    st = Store(out)
    for cam in ("left", "right"):
        ref = np.concatenate([s[cam] for s in segs])
        assert np.array_equal(st.frames("r", cam)[:], ref)
        assert np.array_equal(zarr.open_array(out / "runs" / "r" / cam, mode="r")[...], ref)


def test_frames_past_the_end_of_the_source_are_a_named_error(tmp_path):
    from driver.datasets.run_format import RunFormatError
    from driver.datasets.run_ingest import _read_direct

    src = tmp_path / "short.h5"
    src.write_bytes(bytes(1000))
    out = np.empty((2, 10, 10, 3), np.uint8)
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(RunFormatError, match=r"short\.h5: frames end past the end of the file \(truncated\?\)"):
            _read_direct(fd, str(src), np.array([400, 800]), out, np.empty(1 << 20, np.uint8))
    finally:
        os.close(fd)
