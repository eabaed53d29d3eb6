"""driver export-dataset --to lerobot: a LeRobot v3.0 dataset, and the round trip lab -> LeRobot -> ingest."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.interop.lerobot_export import LeRobotExportConfig, export_lerobot
from driver.datasets.store import Store
from driver.datasets.synthetic import write_synthetic_runs

from .test_import import psnr


@pytest.fixture(scope="module")
def lab_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab")
    write_synthetic_runs(d / "runs", 3, n_frames=80, height=48, width=64, stereo=True, seed=5)
    report = ingest(IngestConfig(sources=[str(d / "runs")], out=str(d / "store.zarr")))
    assert report.ok
    return d / "store.zarr"


def test_export_writes_lerobot_v3_and_round_trips_exactly(tmp_path, lab_store):
    out = tmp_path / "ds"
    result = export_lerobot(LeRobotExportConfig(store=str(lab_store), out=str(out), vcodec="libx264", crf=18))
    assert result.episodes == 3 and result.frames == 240 and result.fps == 30
    assert not (tmp_path / "ds.partial").exists()
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3 and info["total_frames"] == 240
    assert info["features"]["observation.images.left"]["shape"] == [48, 64, 3]
    assert info["features"]["action"]["names"] == ["steer", "motor"]
    assert info["features"]["observation.state"]["names"] == ["encoder", "gyro_0", "gyro_1", "gyro_2"]
    stats = json.loads((out / "meta/stats.json").read_text())
    assert np.array(stats["observation.images.left"]["mean"]).shape == (3, 1, 1)
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == [80, 80, 80] and eps[1]["dataset_from_index"] == 80
    assert eps[1]["videos/observation.images.left/from_timestamp"] == pytest.approx(80 / 30)
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert np.allclose(np.diff(data.column("timestamp").to_numpy()[:80]), 1 / 30, atol=1e-6)

    back = ingest(IngestConfig(sources=[str(out)], out=str(tmp_path / "back.zarr")))
    assert back.ok, back.failures
    src, dst = Store(lab_store), Store(tmp_path / "back.zarr")
    assert dst.runs == src.runs  # run names come back
    for run in src.runs:
        a, b = src.run_meta(run), dst.run_meta(run)
        assert b["labels"] == a["labels"] and b["cameras"] == a["cameras"]
        assert [s["length"] for s in b["segments"]] == [s["length"] for s in a["segments"]]
        for name in ("steer", "motor", "state", "timestamp", "segment", "valid", "encoder", "gyro"):
            assert np.array_equal(dst.series(run, name), src.series(run, name)), (run, name)  # exactly
        for cam in ("left", "right"):
            x, y = src.frames(run, cam).read(0, 80), dst.frames(run, cam).read(0, 80)
            assert psnr(x, y) > 25  # within the codec's loss (H.264 crf 18 on noise-like synthetic frames)


def test_export_refuses_to_overwrite_and_mixed_shapes(tmp_path, lab_store):
    (tmp_path / "ds").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        export_lerobot(LeRobotExportConfig(store=str(lab_store), out=str(tmp_path / "ds")))
    with pytest.raises(ValueError, match="vcodec='mjpeg' must be one of"):
        LeRobotExportConfig(store=str(lab_store), out=str(tmp_path / "x"), vcodec="mjpeg")
    write_synthetic_runs(tmp_path / "other", 1, n_frames=20, height=24, width=32, stereo=True, seed=9)
    (tmp_path / "other" / "run_000.h5").rename(tmp_path / "other" / "small.h5")
    mixed = tmp_path / "mixed.zarr"
    ingest(IngestConfig(sources=[str(tmp_path / "other"), str(lab_store.parent / "runs")], out=str(mixed)))
    with pytest.raises(ValueError, match="a LeRobot dataset has one shape per camera"):
        export_lerobot(LeRobotExportConfig(store=str(mixed), out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
