"""Validity rules keep braking and coasting, drop a parked car by speed or long neutral stretches, count per rule."""

import numpy as np

from driver.datasets.info import describe_store, info_tables, rule_counts
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_writer import write_run
from driver.datasets.store import Store
from driver.datasets.validity import RULES, ValidityRules, rule_masks, validity_mask

FPS = 50.0


def _drive(motor, speed=None):
    """Series of one segment at 50 Hz: state 1, straight steering."""
    n = len(motor)
    return {"state": np.ones(n), "steer": np.full(n, 49.0), "motor": np.asarray(motor, float),
                "timestamp": np.arange(n) / FPS, "segment": np.zeros(n, int),
                "speed": None if speed is None else np.asarray(speed, float)}


def _valid(d, rules=None):
    return validity_mask(d["state"], d["steer"], d["motor"], d["timestamp"], d["segment"], rules or ValidityRules(),
                         d["speed"])


def test_braking_and_coasting_while_moving_are_kept_a_parked_car_is_dropped():
    # 1 s full throttle from standstill, 1 s coast, 1 s brake to a stop, 2 s parked (motor 49, speed 0)
    motor = np.r_[np.full(50, 99.0), np.full(50, 49.0), np.full(50, 20.0), np.full(100, 49.0)]
    speed = np.r_[np.linspace(0, 2, 50), np.full(50, 2.0), np.linspace(2, 0, 50), np.zeros(100)]
    valid = _valid(_drive(motor, speed))
    assert valid[:148].all()  # driving off from standstill, coasting, and braking while moving
    assert not valid[148:].any()  # stopped (speed <= 0.05) and parked for 2 s (>= stopped_seconds)
    assert not _valid(_drive(motor, speed), ValidityRules(min_motor=53))[50:150].any()  # the lab's rule


def test_a_short_stop_is_kept_and_without_speed_only_long_neutral_stretches_go():
    motor = np.r_[np.full(50, 70.0), np.full(10, 49.0), np.full(50, 70.0)]
    speed = np.r_[np.full(50, 1.0), np.zeros(10), np.full(50, 1.0)]
    assert _valid(_drive(motor, speed)).all()  # 0.2 s stop < stopped_seconds
    no_speed = np.r_[np.full(50, 70.0), np.full(100, 49.5), np.full(200, 60.0), np.full(300, 30.0)]
    valid = _valid(_drive(no_speed))
    assert valid[:150].all()  # a 2 s coast is kept (< neutral_seconds 3 s)
    assert valid[350:].all()  # 6 s of braking is never a parked car without a speed series
    long_neutral = _valid(_drive(np.r_[np.full(50, 70.0), np.full(200, 49.0)]))
    assert long_neutral[:50].all() and not long_neutral[50:].any()  # 4 s neutral: parked


def test_rule_masks_name_what_each_rule_removes():
    d = _drive(np.r_[np.full(60, 70.0), np.full(100, 49.0)], np.r_[np.full(60, 1.0), np.zeros(100)])
    d["state"][:5] = 2
    d["timestamp"][30:] += 0.5  # a gap after frame 29
    masks = rule_masks(d["state"], d["steer"], d["motor"], d["timestamp"], d["segment"], ValidityRules(), d["speed"])
    assert list(masks) == list(RULES)
    counts = {k: int(v.sum()) for k, v in masks.items()}
    assert counts == {"state": 5, "stopped": 100, "min_motor": 0, "pinned_steer": 0, "gap": 1}


def test_old_stores_rules_load():
    old = {"accepted_states": [1], "min_motor": 53.0, "max_gap_s": 0.1, "reject_pinned_steer": True}
    rules = ValidityRules.from_dict(old)
    assert rules.min_motor == 53.0 and rules.stopped_seconds == ValidityRules().stopped_seconds


def test_ingest_uses_the_encoder_and_info_counts_each_rule(tmp_path):
    n = 300
    motor = np.r_[np.full(100, 80.0), np.full(50, 25.0), np.full(150, 49.0)]  # drive, brake, park
    encoder = np.r_[np.full(100, 3.0), np.linspace(3, 0, 50), np.zeros(150)]
    seg = {"left": np.zeros((n, 8, 8, 3), np.uint8), "steer": np.full(n, 49.0), "motor": motor,
           "state": np.ones(n), "left_timestamp": np.arange(n) / FPS, "encoder": encoder}
    (tmp_path / "runs").mkdir()
    write_run(tmp_path / "runs" / "brakes.h5", [seg], {"direct": 1})
    assert ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(tmp_path / "s.zarr"))).ok
    valid = Store(tmp_path / "s.zarr").series("brakes", "valid")
    assert valid[:149].all() and not valid[149:].any()
    summary = describe_store(tmp_path / "s.zarr")
    counts = rule_counts(Store(tmp_path / "s.zarr"), "brakes")
    assert counts["stopped"] == 151 and counts["min_motor"] == 0 and counts["state"] == 0
    text = " ".join(str(cell) for table in info_tables(summary) for col in table.columns for cell in col._cells)
    assert "stopped" in text
