"""Sim recording writes lab-format runs that pass inspect_run and ingest with high validity."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_format import inspect_run
from driver.sim.record import EXTRAS, SimRecordConfig, record_runs

from driver.units import run_to_norm


def series(path, name):
    with h5py.File(path, "r") as f:
        return np.concatenate([f["segments"][s][name][()] for s in sorted(f["segments"], key=int)])


@pytest.fixture(scope="module")
def noisy_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("simruns")
    return record_runs(SimRecordConfig(out=out, runs=2, seconds=4, height=48, width=64, stereo=True, noise=0.2))


def test_runs_pass_inspect_and_ingest(noisy_runs, tmp_path):
    for p in noisy_runs:
        info = inspect_run(p)
        assert info.cameras == ("left", "right") and (info.height, info.width) == (48, 64)
        assert info.labels == {"direct": 1, "sim": 1}
        assert set(EXTRAS) <= {e.name for e in info.extras}
        assert info.n_frames == 120
    report = ingest(IngestConfig(sources=[str(p) for p in noisy_runs], out=str(tmp_path / "store.zarr")))
    assert report.ok, report.failures
    for o in report.outcomes:
        assert o.valid / o.frames > 0.95
    t = series(noisy_runs[0], "left_timestamp")
    assert np.allclose(np.diff(t)[np.diff(t) < 0.5], 1 / 30)


def test_dart_label_differs_from_executed_with_noise(noisy_runs):
    label = run_to_norm(series(noisy_runs[0], "steer"))
    executed = series(noisy_runs[0], "sim_executed_steer")
    assert np.abs(label - executed).mean() > 0.02
    assert (series(noisy_runs[0], "motor") >= 53).all()


def test_label_equals_executed_without_noise(tmp_path):
    (p,) = record_runs(SimRecordConfig(out=tmp_path, runs=1, seconds=1, height=24, width=32, noise=0.0))
    label = run_to_norm(series(p, "steer"))
    assert np.allclose(label, series(p, "sim_executed_steer"), atol=1e-4)
    assert inspect_run(p).cameras == ("left",)


def test_recording_is_deterministic(tmp_path):
    cfg = {"runs": 1, "seconds": 0.5, "height": 24, "width": 32, "seed": 4}
    (a,) = record_runs(SimRecordConfig(out=tmp_path / "a", **cfg))
    (b,) = record_runs(SimRecordConfig(out=tmp_path / "b", **cfg))
    assert np.array_equal(series(a, "left"), series(b, "left"))
    assert np.array_equal(series(a, "steer"), series(b, "steer"))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("fps", 5, r"fps=5 must be in \(10, 240\]"), ("noise", -1, "noise=-1 must be in 0..1"),
    ("split", "test", "split='test' must be one of train, eval"), ("runs", 0, "runs=0 must be in"),
])
def test_config_validation_names_field_and_range(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        SimRecordConfig(out=tmp_path, **{field: value})
