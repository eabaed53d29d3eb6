"""driver ingest of donkeycar tubs and LeRobot v3 datasets: fixtures written by the real libraries
(tests/fixtures/make_fixtures.py), plus damaged copies made here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.interop import detect_format, run_sources
from driver.datasets.store import Store

from .fixtures.make_fixtures import frame

FIX = Path(__file__).parent / "fixtures"
TUB, LEROBOT = FIX / "tub", FIX / "lerobot"
LEROBOT_MAPPING = """
[motor]
field = "action"
name = "throttle"
[extras]
speed = "observation.state"
"""


def _catalog_records(tub: Path) -> list[dict]:
    recs = []
    for p in sorted(tub.glob("catalog_*.catalog"), key=lambda p: int(p.stem.split("_")[1])):
        recs += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return recs


def _ingest(tmp_path, sources, **kw):
    report = ingest(IngestConfig(sources=[str(s) for s in sources], out=str(tmp_path / "s.zarr"), **kw))
    return report, Store(tmp_path / "s.zarr") if (tmp_path / "s.zarr").exists() else None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_formats_are_detected_from_the_path(tmp_path):
    assert detect_format(TUB) == "tub" and detect_format(LEROBOT) == "lerobot"
    assert detect_format(tmp_path) is None and detect_format(tmp_path / "x.h5") == "hdf5"
    runs = run_sources([str(FIX)])  # a folder of datasets: every tub session and LeRobot episode in it
    assert {r.run for r in runs} >= {"tub_26-12-01_0", "tub_26-12-01_1", "lerobot_ep000000", "lerobot_ep000002"}


def test_tub_sessions_become_runs_with_exact_labels_and_pixels(tmp_path):
    report, store = _ingest(tmp_path, [TUB])
    assert report.ok and [o.run for o in report.outcomes] == ["tub_26-12-01_0", "tub_26-12-01_1"]
    recs = _catalog_records(TUB)
    deleted = set(json.loads((TUB / "manifest.json").read_text().splitlines()[4])["deleted_indexes"])
    for run, session in zip(store.runs, ("26-12-01_0", "26-12-01_1"), strict=True):
        rs = [r for r in recs if r["_session_id"] == session]
        angle = np.array([r["user/angle"] for r in rs])
        expect = np.where(angle < 0, 49 + 49 * angle, 49 + 50 * angle)  # -1..1 around 0 -> 0..99 around 49
        assert np.allclose(store.series(run, "steer"), expect, atol=1e-4)
        thr = np.array([r["user/throttle"] for r in rs])
        assert np.allclose(store.series(run, "motor"), 49 + 50 * thr, atol=1e-4)
        codes = {"user": 1, "local_angle": 3, "local": 6}
        state = [-1 if r["_index"] in deleted else codes[r["user/mode"]] for r in rs]
        assert store.series(run, "state").tolist() == state
        assert np.array_equal(store.series(run, "timestamp"), np.array([r["_timestamp_ms"] for r in rs]) / 1000.0)
        pil = np.stack([np.asarray(Image.open(TUB / "images" / r["cam/image_array"])) for r in rs])
        assert np.array_equal(store.frames(run, "left").read(0, len(rs)), pil)  # donkeycar's own decode, exactly
        valid = store.series(run, "valid")
        assert not valid[np.array(state) == -1].any()
    meta = store.run_meta("tub_26-12-01_1")
    assert meta["source"]["format"] == "tub" and meta["source"]["session"] == "26-12-01_1"
    # unchanged on a second run; a new mapping re-ingests
    again = ingest(IngestConfig(sources=[str(TUB)], out=str(tmp_path / "s.zarr")))
    assert [o.status for o in again.outcomes] == ["unchanged", "unchanged"]
    mapping = tmp_path / "m.toml"
    mapping.write_text('[extras]\ngyro_z = "imu/gyr_z"\n[labels]\ndirect = 1\n')
    third = ingest(IngestConfig(sources=[str(TUB)], out=str(tmp_path / "s.zarr"), mapping=str(mapping)))
    assert [o.status for o in third.outcomes] == ["replaced", "replaced"]
    store = Store(tmp_path / "s.zarr")
    assert store.labels("tub_26-12-01_0") == {"direct": 1}
    assert np.allclose(store.series("tub_26-12-01_0", "gyro_z"), [r["imu/gyr_z"] for r in recs[:30]])


def test_lerobot_episodes_become_stereo_runs(tmp_path):
    mapping = tmp_path / "m.toml"
    mapping.write_text(LEROBOT_MAPPING)
    report, store = _ingest(tmp_path, [LEROBOT], mapping=str(mapping))
    assert report.ok, report.failures
    assert [o.run for o in report.outcomes] == ["lerobot_ep000000", "lerobot_ep000001", "lerobot_ep000002"]
    for ep, n in enumerate((24, 30, 20)):
        run = f"lerobot_ep{ep:06d}"
        meta = store.run_meta(run)
        assert meta["n_frames"] == n and meta["cameras"] == ["left", "right"] and meta["height"] == 48
        k = ep * 100 + np.arange(n)
        steer = (np.sin(k / 4.0) * 0.8).astype(np.float32).astype(np.float64)
        assert np.allclose(store.series(run, "steer"), np.where(steer < 0, 49 + 49 * steer, 49 + 50 * steer), atol=1e-4)
        assert np.allclose(store.series(run, "timestamp"), np.arange(n) / 20.0, atol=1e-6)
        assert np.allclose(store.series(run, "speed"), 0.5 + 0.01 * np.arange(n), atol=1e-6)
        for cam, shift in (("left", 0), ("right", 40)):
            got = store.frames(run, cam).read(0, n)
            ref = np.stack([frame(int(i), shift) for i in k])
            own = np.array([psnr(g, r) for g, r in zip(got, ref, strict=True)])
            assert own.min() > 20  # AV1 at LeRobot's crf 30 on 48x64 frames
            assert (own[1:] > [psnr(g, r) for g, r in zip(got[1:], ref[:-1], strict=True)]).all()  # not shifted


def test_a_mapping_file_can_be_yaml(tmp_path):
    mapping = tmp_path / "m.yaml"
    mapping.write_text("motor:\n  field: action\n  index: 1\nlabels:\n  racing: 1\n")
    report, store = _ingest(tmp_path, [LEROBOT], mapping=str(mapping))
    assert report.ok and store.labels("lerobot_ep000001") == {"racing": 1}


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_a_corrupt_catalog_line_fails_only_its_session(tmp_path):
    tub = _copy(TUB, tmp_path / "in")
    cat = tub / "catalog_3.catalog"  # records 48..59: session 1 only
    lines = cat.read_text().splitlines()
    lines[2] = lines[2][:40]  # a torn write
    cat.write_text("\n".join(lines) + "\n")
    report, store = _ingest(tmp_path, [tub])
    status = {o.run: o.status for o in report.outcomes}
    assert status == {"tub_26-12-01_0": "ingested", "tub_26-12-01_1": "failed"}
    err = report.failures[0].error
    assert f"{cat}: line 3 is not a valid record" in err and "\n" not in err
    assert store.runs == ["tub_26-12-01_0"]


def test_a_missing_image_fails_only_its_session(tmp_path):
    tub = _copy(TUB, tmp_path / "in")
    (tub / "images" / "5_cam_image_array_.jpg").unlink()
    report, store = _ingest(tmp_path, [tub])
    assert {o.run: o.status for o in report.outcomes} == {"tub_26-12-01_0": "failed", "tub_26-12-01_1": "ingested"}
    assert "images/5_cam_image_array_.jpg: image of" in report.failures[0].error
    assert "catalog_0.catalog: line 6" in report.failures[0].error


def test_a_corrupt_image_fails_only_its_session(tmp_path):
    tub = _copy(TUB, tmp_path / "in")
    (tub / "images" / "40_cam_image_array_.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    report, _ = _ingest(tmp_path, [tub])
    assert {o.run: o.status for o in report.outcomes} == {"tub_26-12-01_0": "ingested", "tub_26-12-01_1": "failed"}
    assert "40_cam_image_array_.jpg: not a readable image" in report.failures[0].error


def test_unsupported_lerobot_version_and_unknown_keys_fail_with_one_line(tmp_path):
    mapping = tmp_path / "m.toml"
    mapping.write_text('[cameras]\nleft = "observation.images.front"\n')
    report, store = _ingest(tmp_path, [FIX / "lerobot_v21", TUB], mapping=str(mapping))
    errors = {o.run: o.error for o in report.failures}
    assert "codebase_version 'v2.1' is not supported" in errors["lerobot_v21"]
    assert str(FIX / "lerobot_v21" / "meta" / "info.json") in errors["lerobot_v21"]
    assert "manifest.json: image key 'observation.images.front' (cameras.left) is not one of the tub's inputs" in (
        errors["tub"])
    report, _ = _ingest(tmp_path / "b", [LEROBOT], mapping=str(mapping))
    assert "image key 'observation.images.front' (cameras.left) does not exist; the dataset's cameras are " \
           "['observation.images.left', 'observation.images.right']" in report.failures[0].error


def test_a_missing_lerobot_video_fails_its_episodes_only(tmp_path):
    ds = _copy(LEROBOT, tmp_path / "in")
    mapping = tmp_path / "m.toml"
    mapping.write_text(LEROBOT_MAPPING + "[cameras]\nright = \"\"\n")
    (ds / "videos" / "observation.images.right" / "chunk-000" / "file-000.mp4").unlink()
    report, store = _ingest(tmp_path, [ds], mapping=str(mapping))
    assert report.ok and store.run_meta("lerobot_ep000000")["cameras"] == ["left"]  # mono: the right video unused
    mapping.write_text(LEROBOT_MAPPING)
    report, _ = _ingest(tmp_path / "b", [ds], mapping=str(mapping))
    assert len(report.failures) == 3
    assert "observation.images.right/chunk-000/file-000.mp4: video file is missing" in report.failures[0].error


def test_gaps_split_segments_and_dropped_records_leave_one(tmp_path):
    tub = _copy(TUB, tmp_path / "in")
    for cat in tub.glob("*.catalog"):
        recs = [json.loads(line) for line in cat.read_text().splitlines()]
        for r in recs:
            r["_timestamp_ms"] += 2000 * (r["_index"] >= 10)  # the car stopped recording for two seconds
        cat.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    mapping = tmp_path / "m.toml"
    mapping.write_text('[records]\ndeleted = "drop"\n')
    report, store = _ingest(tmp_path, [tub], mapping=str(mapping))
    assert report.ok
    assert [s["length"] for s in store.run_meta("tub_26-12-01_0")["segments"]] == [10, 20]
    assert [s["length"] for s in store.run_meta("tub_26-12-01_1")["segments"]] == [5, 22]  # 35..37 dropped
    assert -1 not in store.series("tub_26-12-01_1", "state")


def test_bad_mapping_files_are_one_line_errors(tmp_path):
    for text, problem in (("[steer\n", "not valid TOML"), ("[wheels]\n", "unknown sections ['wheels']"),
                          ('[steer]\nrange = [1, 2]\n', "must be three finite numbers"),
                          ('[records]\ndeleted = "maybe"\n', "records.deleted='maybe' must be one of invalid, drop")):
        mapping = tmp_path / "m.toml"
        mapping.write_text(text)
        report, _ = _ingest(tmp_path, [TUB], mapping=str(mapping))
        assert len(report.failures) == 1 and f"{mapping}: " in report.failures[0].error, report.failures
        assert problem in report.failures[0].error


def test_format_can_be_forced(tmp_path):
    with pytest.raises(ValueError, match="format='zip' must be auto or one of hdf5, tub, lerobot"):
        IngestConfig(sources=[str(TUB)], out=str(tmp_path / "s.zarr"), format="zip")
    report, _ = _ingest(tmp_path, [TUB], format="lerobot")
    assert "meta/info.json: cannot read" in report.failures[0].error


def test_lerobot_image_features_stored_in_parquet(tmp_path):
    """A camera stored as images in the data parquet (``dtype: image``, a {bytes, path} struct per row)."""
    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = _copy(LEROBOT, tmp_path / "in")
    info = json.loads((ds / "meta/info.json").read_text())
    info["features"]["observation.images.left"]["dtype"] = "image"
    (ds / "meta/info.json").write_text(json.dumps(info))
    path = ds / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    ep, idx = table.column("episode_index").to_numpy(), table.column("frame_index").to_numpy()
    pngs = [{"bytes": cv2.imencode(".png", frame(int(e) * 100 + int(i))[..., ::-1])[1].tobytes(), "path": None}
            for e, i in zip(ep, idx, strict=True)]
    pq.write_table(table.append_column("observation.images.left", pa.array(pngs)), path)
    mapping = tmp_path / "m.toml"
    mapping.write_text(LEROBOT_MAPPING + '[cameras]\nright = ""\n')
    report, store = _ingest(tmp_path, [ds], mapping=str(mapping))
    assert report.ok, report.failures
    got = store.frames("lerobot_ep000001", "left").read(0, 30)
    assert np.array_equal(got, np.stack([frame(100 + i) for i in range(30)]))  # PNG: lossless
