"""driver info --lint flags where the driver lost control; training can drop those frames."""

import json
import subprocess
import sys

import numpy as np
import pytest

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.lint import LintRules, flagged_mask, lint_series, lint_store
from driver.datasets.run_writer import write_run

FPS = 50.0


def _segment(steer, motor, speed):
    n = len(steer)
    return {"left": np.zeros((n, 8, 8, 3), np.uint8), "steer": np.asarray(steer, float),
            "motor": np.asarray(motor, float), "state": np.ones(n), "left_timestamp": 10 + np.arange(n) / FPS,
            "speed": np.asarray(speed, float)}


@pytest.fixture(scope="module")
def lost_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lint")
    (root / "runs").mkdir()
    n = 500
    steer = 49 + 10 * np.sin(np.arange(n) / 20)
    steer[200:300] = 99.0  # 2 s of full right lock: lost the road
    motor, speed = np.full(n, 70.0), np.full(n, 1.5)
    speed[400:] = 0.0  # throttle on, wheels still: stuck for the last 2 s
    write_run(root / "runs" / "lost.h5", [_segment(steer, motor, speed)], {"direct": 1})
    clean = 49 + 10 * np.sin(np.arange(n) / 20)
    write_run(root / "runs" / "clean.h5", [_segment(clean, motor, np.full(n, 1.5))], {"direct": 1})
    assert ingest(IngestConfig(sources=[str(root / "runs")], out=str(root / "s.zarr"))).ok
    return root / "s.zarr"


def test_flags_saturated_steering_and_no_progress(lost_store):
    report = lint_store(lost_store)
    assert [(f.run, f.start, f.end, f.reason) for f in report.flags] == [
        ("lost", 200, 300, "saturated_steer"), ("lost", 400, 500, "no_progress")]
    assert report.flags[0].seconds == pytest.approx(2.0)
    assert report.flagged["clean"] == 0 and report.flagged["lost"] == (25 + 100 + 25) + (25 + 100)  # 0.5 s margins
    assert report.unchecked == []


def test_short_saturation_is_not_a_loss_of_control():
    steer = np.full(200, 49.0)
    steer[50:90] = 0.0  # 0.8 s at full left: a sharp turn, not lost
    ts, seg = np.arange(200) / FPS, np.zeros(200, int)
    assert lint_series("r", steer, np.full(200, 60.0), ts, seg, None) == []
    flags = lint_series("r", steer, np.full(200, 60.0), ts, seg, None, LintRules(saturation_seconds=0.5))
    assert len(flags) == 1 and flagged_mask(flags, seg, ts, 0.0).sum() == 40


def test_training_clips_skip_flagged_frames(lost_store):
    cfg = ClipConfig(clip_length=1, horizon=1, cameras=("left",))
    plain = ClipDataset(lost_store, cfg, runs=["lost"])
    excluded = ClipDataset(lost_store, ClipConfig(**{**vars(cfg), "exclude_flagged": LintRules()}), runs=["lost"])
    starts = excluded.clip_index()[1]
    assert len(plain) == 500 and len(excluded) == 500 - 275
    assert not ((starts >= 175) & (starts < 325)).any() and not (starts >= 375).any()


def test_info_lint_cli(lost_store, tmp_path):
    out = tmp_path / "lint.json"
    r = subprocess.run([sys.executable, "-m", "driver.cli", "info", str(lost_store), "--lint", "--lint-json", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "saturated_steer" in r.stdout and "no_progress" in r.stdout and "2 flagged windows" in r.stdout
    assert json.loads(out.read_text())["flagged"]["lost"] == 275
