"""Sim recording writes lab-format runs that pass inspect_run and ingest, with honest braking labels and the
wheel-speed (encoder) series."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_format import inspect_run
from driver.datasets.validity import ValidityRules
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
    rules = ValidityRules(min_motor=0.0)  # keep braking frames (the lab's min_motor rule would drop them)
    report = ingest(IngestConfig(sources=[str(p) for p in noisy_runs], out=str(tmp_path / "store.zarr"),
                                 validity=rules))
    assert report.ok, report.failures
    for o in report.outcomes:
        assert o.valid / o.frames > 0.95
    t = series(noisy_runs[0], "left_timestamp")
    assert np.allclose(np.diff(t)[np.diff(t) < 0.5], 1 / 30)


def test_dart_label_differs_from_executed_with_noise(noisy_runs):
    label = run_to_norm(series(noisy_runs[0], "steer"))
    executed = series(noisy_runs[0], "sim_executed_steer")
    assert np.abs(label - executed).mean() > 0.02


def test_encoder_is_the_wheel_speed_and_braking_is_recorded_honestly(tmp_path):
    (p,) = record_runs(SimRecordConfig(out=tmp_path, runs=1, seconds=12, height=24, width=32, seed=3, noise=0.0))
    encoder, speed = series(p, "encoder"), series(p, "speed")
    assert np.allclose(encoder, np.abs(speed)) and encoder.max() > 2.0  # m/s
    motor, state = series(p, "motor"), series(p, "state")
    braking = motor < 49
    assert braking.any() and (state == 1).all()  # a human-state (1) run whose driver brakes
    assert (series(p, "sim_executed_motor")[braking] < 0).all()  # the label is what was done (noise 0)
    t = series(p, "left_timestamp")
    dv = np.diff(speed) / np.diff(t)
    assert (dv[braking[:-1]] < 0).mean() > 0.9  # and the car slowed down under it
    assert set(np.unique(series(p, "sim_sliding"))) <= {0, 1}


def test_throttle_surges_take_the_car_over_the_plan_and_the_labels_brake(tmp_path):
    """``--surge-rate``: the executed motor is raised for a while, the car runs faster than the expert's plan more
    often, and the label there is the clean command, which brakes; the run says how it was recorded."""
    cfg = {"runs": 2, "seconds": 15, "height": 24, "width": 32, "seed": 0, "noise": 0.15, "motor_noise": 0.3}
    plain = record_runs(SimRecordConfig(out=tmp_path / "plain", **cfg))
    surged = record_runs(SimRecordConfig(out=tmp_path / "surged", surge_rate=0.3, **cfg))

    def over_plan(paths):
        over = np.concatenate([series(p, "speed") - series(p, "sim_target_speed") for p in paths])
        return over, np.concatenate([run_to_norm(series(p, "motor")) for p in paths])

    over0, _ = over_plan(plain)
    over1, label1 = over_plan(surged)
    assert (over1 > 0.4).mean() > 1.3 * (over0 > 0.4).mean()
    assert (label1[over1 > 0.4] < 0).mean() > 0.9  # over the plan, the label brakes
    gap = np.concatenate([series(p, "sim_executed_motor") - run_to_norm(series(p, "motor")) for p in surged])
    assert gap.max() > 0.5  # a surge: executed well above the label
    with h5py.File(surged[0], "r") as f:
        meta = json.loads(f.attrs["sim"])
    assert meta["surge_rate_hz"] == 0.3 and meta["surge"] == 0.6


def test_runs_in_other_variants_are_named_and_described(tmp_path):
    paths = record_runs(SimRecordConfig(out=tmp_path, runs=2, seconds=0.5, height=24, width=32, variants=[4],
                                        variant_split="eval", car="kinematic"))
    assert [p.name for p in paths] == ["sim_train_00000_veval00004.h5", "sim_train_00001_veval00004.h5"]
    with h5py.File(paths[1], "r") as f:
        meta = json.loads(f.attrs["sim"])
    assert meta["world"] == "train/1@eval/4" and meta["car_model"] == "kinematic" and meta["variant_seed"] == 4


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
    ("car", "bus", "car='bus' must be one of dynamic, kinematic"), ("variants", [], r"variants=\[\] must be"),
    ("variant_split", "x", "variant_split='x' must be one of train, eval"),
    ("surge_rate", 5, "surge_rate=5 must be in 0..2 surges per second"), ("surge", 0, r"surge=0 must be in \(0, 2\]"),
])
def test_config_validation_names_field_and_range(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        SimRecordConfig(out=tmp_path, **{field: value})
