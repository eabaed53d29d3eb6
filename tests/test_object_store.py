"""The same store tests on a folder and on S3 (a bucket of moto's server): ingest round trip, plain zarr with
the same URL, re-runs, replacement, damage found and repaired, clip items; then what only object storage has:
uncommitted runs stay invisible, a killed ingest resumes, the CLI on URLs."""

import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import zarr

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.info import describe_store
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_writer import write_run
from driver.datasets.shard_reader import ChecksumError
from driver.datasets.store import Store
from driver.datasets.synthetic import write_synthetic_runs
from driver.datasets.verify import VerifyConfig, verify_store
from tests.limits import SAFETY_S

from .conftest import read_run_frames, read_run_series, s3_objects
from .faultproxy import FaultProxy


def plain_zarr(url: str) -> zarr.Group:
    """The store through zarr-python alone, opened with the very URL driver was given."""
    opts = {"use_listings_cache": False, "skip_instance_cache": True} if url.startswith("s3://") else None
    return zarr.open_group(url, mode="r", storage_options=opts)


def assert_run_equal(url: str, run: str, h5_path, cameras=("left", "right")) -> None:
    g = plain_zarr(url)[f"runs/{run}"]
    st = Store(url, cache=None)
    for cam in cameras:
        ref = read_run_frames(h5_path, cam)
        assert np.array_equal(g[cam][...], ref)
        assert np.array_equal(st.frames(run, cam).read(0, len(ref)), ref)
        assert np.array_equal(st.frames(run, cam).read(7, 9), ref[7:16])
    for name, key in (("steer", "steer"), ("motor", "motor"), ("left_timestamp", "timestamp")):
        ref = read_run_series(h5_path, name)
        assert np.array_equal(g[key][...], ref.astype(g[key].dtype))
        assert np.array_equal(st.series(run, key), ref.astype(g[key].dtype))
    assert np.array_equal(g["extra/gyro"][...], read_run_series(h5_path, "gyro"))


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_round_trip_info_verify_and_plain_zarr(store_url, tmp_path, codec):
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=90, height=24, width=32, stereo=True, seed=1)
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=store_url, codec=codec, shard_frames=32))
    assert report.ok and [o.status for o in report.outcomes] == ["ingested", "ingested"]
    assert report.store == store_url and all(o.bytes_out > 0 for o in report.outcomes)
    for p in runs:
        assert_run_equal(store_url, p.stem, p)
    assert sorted(plain_zarr(store_url)["runs"].group_keys()) == ["run_000", "run_001"]
    summary = describe_store(store_url)
    assert [r["name"] for r in summary.runs] == ["run_000", "run_001"] and summary.frames == 180
    assert summary.disk_bytes >= sum(o.bytes_out for o in report.outcomes)
    v = verify_store(VerifyConfig(store=store_url))
    assert v.ok and [r.status for r in v.runs] == ["ok", "ok"] and all(r.bytes > 0 for r in v.runs)


def test_rerun_skips_and_a_changed_source_replaces(store_url, tmp_path, segments):
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=60, height=24, width=32, seed=2)
    sources = [str(p) for p in runs]
    assert ingest(IngestConfig(sources=sources, out=store_url, shard_frames=16)).ok
    st = Store(store_url)
    before = st.frames("run_000", "left").read(0, 60)  # on S3: through the shard cache, which now holds it
    again = ingest(IngestConfig(sources=sources, out=store_url, shard_frames=16))
    assert [o.status for o in again.outcomes] == ["unchanged", "unchanged"]
    write_run(runs[0], segments(seed=9, n_frames=60, n_segments=1), {"direct": 1})  # new content, same name
    replaced = ingest(IngestConfig(sources=sources, out=store_url, shard_frames=16))
    assert [o.status for o in replaced.outcomes] == ["replaced", "unchanged"]
    after = Store(store_url).frames("run_000", "left").read(0, 60)
    assert not np.array_equal(before, after)  # never the cached bytes of the old version
    assert_run_equal(store_url, "run_000", runs[0])
    forced = ingest(IngestConfig(sources=[], out=store_url, force_runs=("run_001",)))
    assert [(o.run, o.status) for o in forced.outcomes] == [("run_001", "replaced")]
    assert_run_equal(store_url, "run_001", runs[1])


def test_a_bad_file_fails_alone(store_url, tmp_path):
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=40, height=24, width=32, seed=4)
    with h5py.File(runs[1], "r+") as f:  # a steer series one value short
        seg = next(iter(f["segments"]))
        data = f["segments"][seg]["steer"][()]
        del f["segments"][seg]["steer"]
        f["segments"][seg]["steer"] = data[:-1]
    report = ingest(IngestConfig(sources=[str(p) for p in runs], out=store_url))
    assert [o.status for o in report.outcomes] == ["ingested", "failed"]
    assert str(runs[1]) in report.failures[0].error and "steer" in report.failures[0].error
    assert Store(store_url).runs == ["run_000"]
    assert sorted(plain_zarr(store_url)["runs"].group_keys()) == ["run_000"]


def _flip_a_frame_byte(url: str, tmp_path, s3_endpoint=None) -> None:
    """Damage frame 3 of run_000/left where it is stored (the file, or the S3 object, rewritten)."""
    key = "runs/run_000/left/c/0/0/0/0"
    if url.startswith("s3://"):
        import boto3

        bucket, prefix = url[5:].split("/", 1)
        c = boto3.client("s3", endpoint_url=s3_endpoint)
        data = bytearray(c.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read())
        data[3 * (24 * 32 * 3 + 4) + 100] ^= 0xFF
        c.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=bytes(data))
    else:
        with open(f"{url}/{key}", "r+b") as f:
            f.seek(3 * (24 * 32 * 3 + 4) + 100)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))


def test_damage_is_found_named_and_repaired(store_url, tmp_path, request):
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=40, height=24, width=32, seed=5)
    assert ingest(IngestConfig(sources=[str(p) for p in runs], out=store_url)).ok
    endpoint = request.getfixturevalue("s3_endpoint") if store_url.startswith("s3://") else None
    _flip_a_frame_byte(store_url, tmp_path, endpoint)
    with pytest.raises(ChecksumError, match=r"run 'run_000', array 'left': frames 3\.\.3: checksum mismatch"):
        Store(store_url, cache=None).frames("run_000", "left").read(0, 10)
    v = verify_store(VerifyConfig(store=store_url))
    assert [r.status for r in v.runs] == ["damaged", "ok"]
    assert any(store_url in p and "frames 3..3" in p for p in v.runs[0].problems)
    repaired = ingest(IngestConfig(sources=[], out=store_url, force_runs=("run_000",)))
    assert repaired.ok and verify_store(VerifyConfig(store=store_url)).ok
    assert_run_equal(store_url, "run_000", runs[0])


def test_clip_items_equal_a_local_store(store_url, tmp_path):
    write_synthetic_runs(tmp_path / "runs", 3, n_frames=80, height=24, width=32, stereo=True, seed=6)
    src = [str(tmp_path / "runs")]
    assert ingest(IngestConfig(sources=src, out=store_url, shard_frames=16)).ok
    assert ingest(IngestConfig(sources=src, out=str(tmp_path / "ref.zarr"), shard_frames=16)).ok
    for cfg in (ClipConfig(clip_length=4, stack=2, flip=0.5, color_jitter=0.3, seed=1),
                ClipConfig(clip_length=3, frame_stride=3, stack=2, cameras=("left",))):
        ds, ref = ClipDataset(store_url, cfg), ClipDataset(str(tmp_path / "ref.zarr"), cfg)
        assert len(ds) == len(ref) > 0
        idx = [0, len(ds) - 1, 17, 17, 40]
        batch = ds.__getitems__(idx)
        for i, item in zip(idx, batch, strict=True):
            for k, v in ref[i].items():
                assert np.array_equal(item[k].numpy(), v.numpy()), (i, k)
                assert np.array_equal(ds[i][k].numpy(), v.numpy()), (i, k)


@pytest.mark.slow
def test_an_uncommitted_run_is_invisible(s3_url, s3_endpoint, tmp_path, monkeypatch):
    """Every object of run_001 is written, but its marker (the commit) never lands: nothing of it shows."""
    runs = write_synthetic_runs(tmp_path / "runs", 2, n_frames=40, height=24, width=32, seed=7)
    monkeypatch.setenv("DRIVER_STORE_RETRIES", "1")
    monkeypatch.setenv("DRIVER_STORE_BACKOFF_S", "0.01")
    with FaultProxy(s3_endpoint, {"503": 1.0}, only=("PUT", "runs/run_001/zarr.json")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        report = ingest(IngestConfig(sources=[str(p) for p in runs], out=s3_url))
    assert [o.status for o in report.outcomes] == ["ingested", "failed"]
    assert f"{s3_url}/runs/run_001/zarr.json" in report.failures[0].error and "503" in report.failures[0].error
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    bucket, prefix = s3_url[5:].split("/", 1)
    keys = set(s3_objects(s3_endpoint, bucket))
    assert f"{prefix}/runs/run_001/left/c/0/0/0/0" in keys  # its data is there ...
    assert f"{prefix}/runs/run_001/zarr.json" not in keys
    assert not [k for k in keys if "/locks/" in k]  # ... its lease was given back
    assert Store(s3_url).runs == ["run_000"]  # ... and nobody sees it
    with pytest.warns(UserWarning, match="run_001"):  # zarr: "not recognized as a component" of the hierarchy
        assert sorted(plain_zarr(s3_url)["runs"].group_keys()) == ["run_000"]
    again = ingest(IngestConfig(sources=[str(p) for p in runs], out=s3_url))
    assert [o.status for o in again.outcomes] == ["unchanged", "ingested"]
    assert_run_equal(s3_url, "run_001", runs[1])
    objects = s3_objects(s3_endpoint, bucket)
    mine = sorted(k.split("run_001/")[1] for k in objects if "/run_001/" in k)
    assert mine == sorted(k.split("run_000/")[1] for k in objects if "/run_000/" in k)  # no leftovers


@pytest.mark.slow
def test_killed_ingest_on_object_storage_resumes(s3_url, s3_endpoint, tmp_path):
    runs = write_synthetic_runs(tmp_path / "runs", 3, n_frames=48, height=24, width=32, stereo=False, seed=8)
    bucket, prefix = s3_url[5:].split("/", 1)
    with FaultProxy(s3_endpoint, only=("PUT", "/c/"), delay_s=0.2) as slow:  # slow shard uploads
        env = {**__import__("os").environ, "AWS_ENDPOINT_URL": slow.url}
        cmd = [sys.executable, "-m", "driver.cli", "ingest", str(tmp_path / "runs"), "--out", s3_url,
               "--shard-frames", "16", "--lock-ttl", "1", "--jobs", "1"]  # one run at a time: run_000 is done
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + SAFETY_S
        while time.time() < deadline and not slow.requests("PUT", "runs/run_001/left/c/"):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert slow.requests("PUT", "runs/run_001/left/c/"), "the ingest never reached run_001"
    st = Store(s3_url)
    assert st.runs == ["run_000"]  # complete runs only
    assert_run_equal(s3_url, "run_000", runs[0], cameras=("left",))
    assert f"{prefix}/locks/run_001.lock" in s3_objects(s3_endpoint, bucket)  # the dead writer's lease
    t0 = time.monotonic()
    report = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=s3_url, shard_frames=16, lock_ttl_s=1))
    assert report.ok and [o.status for o in report.outcomes] == ["unchanged", "ingested", "ingested"]
    assert time.monotonic() - t0 < 60
    for p in runs:
        assert_run_equal(s3_url, p.stem, p, cameras=("left",))
    assert not [k for k in s3_objects(s3_endpoint, bucket) if "/locks/" in k]


def test_bad_urls_are_one_line_naming_them(s3_url, caplog):
    """`driver info`/`verify`/`train` on a URL that holds no store, or that carries credentials (exit 2)."""
    from driver.cli import main

    missing = s3_url.replace("driving.zarr", "nothing.zarr")
    assert main(["info", missing]) == 2
    assert f"{missing}: not a store" in caplog.text
    caplog.clear()
    assert main(["verify", "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/x"]) == 2
    assert "credentials do not belong in a store URL" in caplog.text and "wJalrXUtnFEMI" not in caplog.text
    assert main(["info", "ftp://host/store"]) == 2
    assert "unsupported store URL scheme 'ftp'" in caplog.text


def test_a_runs_prefix_is_only_its_own(s3_url):
    """Listing or deleting runs/r/ never touches runs/r1/ or runs/r.x/ (prefixes end at a '/')."""
    from driver.datasets.object_store import ObjectLocation

    loc = ObjectLocation(s3_url)
    for key in ("runs/r/a", "runs/r/b/c", "runs/r1/a", "runs/r.x/a", "runs/rr"):
        loc.write(key, b"x")
    assert sorted(k for k, _ in loc.list("runs/r/")) == ["runs/r/a", "runs/r/b/c"]
    assert loc.list_dirs("runs") == ["r", "r.x", "r1"]
    assert loc.delete_prefix("runs/r/") == 2
    assert sorted(k for k, _ in loc.list("")) == ["runs/r.x/a", "runs/r1/a", "runs/rr"]
