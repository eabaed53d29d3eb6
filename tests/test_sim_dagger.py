"""DAgger on a tiny world: runs written in the lab format with expert labels, ingested into the aggregate,
training resumed, the round table written; a killed run continues; car sessions with human corrections
join the same aggregate with their corrections as labels."""

import json
import shutil

import h5py
import numpy as np
import pytest

from driver.cli import main
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import Store
from driver.datasets.validity import ValidityRules
from driver.sim import dagger as dagger_module
from driver.sim.car import CarState, DynamicSpec
from driver.sim.dagger import DaggerConfig, DaggerError, run_dagger
from driver.sim.dagger_collect import STATE_EXPERT, STATE_NETWORK, DaggerWorld, MixRule, collect_run
from driver.sim.expert import Expert
from driver.sim.record import SimRecordConfig, record_runs
from driver.sim.variant import make_world
from driver.training import TrainConfig, load_checkpoint, train
from driver.units import norm_to_run
from driver.vehicle.recorder import STATE_HUMAN, STATE_OVERRIDE, SessionRecorder
from driver.vehicle.recorder import STATE_NETWORK as CAR_NETWORK

H, W = 48, 64


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny store of expert runs and a recurrent model trained on it (the run DAgger starts from)."""
    root = tmp_path_factory.mktemp("dagger")
    paths = record_runs(SimRecordConfig(out=root / "runs", runs=3, seconds=2.0, height=H, width=W))
    store = root / "store.zarr"
    assert ingest(IngestConfig(sources=[str(p) for p in paths], out=str(store),
                               validity=ValidityRules(min_motor=0.0))).ok
    run = train(TrainConfig(data=str(store), arch="squeezenet_gru", stack=1, clip_length=4, horizon=1,
                            target_stride=1, batch_size=4, epochs=1, steps_per_epoch=3, out=str(root / "train"),
                            name="start", progress=False, precision="fp32", val_fraction=0.34, lr=1e-3,
                            arch_kwargs={"hidden_size": 8, "base_width": 16, "width_increment": 16}))
    return root, store, run


def _config(root, store, run, out, **kw):
    base = {"model": str(run.last_checkpoint), "data": str(store), "rounds": 1, "out": str(out), "tracks": 2,
            "seconds": 2.0, "epochs_per_round": 1, "eval_tracks": 1, "eval_laps": 0.1, "max_seconds": 3.0,
            "progress": False, "beta": 0.3}
    return DaggerConfig(**{**base, **kw})


@pytest.mark.slow
def test_dagger_round_trip_writes_ingests_resumes_and_tabulates(start, tmp_path):
    root, store, run = start
    work_store = tmp_path / "store.zarr"  # a copy: the module's store stays as it was for the other tests
    shutil.copytree(store, work_store)
    before = set(Store(work_store).runs)
    out = tmp_path / "dagger"
    report = run_dagger(_config(root, work_store, run, out, rounds=2))
    # lab-format runs: expert labels on every frame, state 6 where the policy drove, 5 where the expert did
    runs = sorted((out / "rounds").glob("*/*.h5"))
    assert [p.parent.name for p in runs] == ["01", "01", "02", "02"]
    with h5py.File(runs[0]) as f:
        g = f["segments/0"]
        state, controller = g["state"][()], g["controller"][()]
        assert set(np.unique(state)) <= {STATE_NETWORK, STATE_EXPERT} and STATE_NETWORK in state
        np.testing.assert_array_equal(controller == 1, state == STATE_NETWORK)
        assert {"encoder", "model_steer", "sim_takeover"} <= set(g)
        assert int(f["labels/dagger"][0]) == 1
        meta = json.loads(f.attrs["sim"])
        assert meta["dagger_round"] == 1 and meta["mix"]["beta"] == pytest.approx(0.3)
    # ingested into the aggregate, with every new frame valid (state 6 frames carry expert labels)
    after = Store(work_store)
    added = set(after.runs) - before
    assert added == {p.stem for p in runs}
    for name in added:
        assert after.series(name, "valid").all(), name
    # training resumed on the aggregate: one more epoch per round, same run, the new runs in its training split
    cfg = json.loads((out / "train" / "config.json").read_text())
    assert cfg["epochs"] == 3 and cfg["data"].endswith("store.zarr")
    split = json.loads((out / "train" / "split.json").read_text())
    assert added <= set(split["train"]) and split["val"] == json.loads((run.run_dir / "split.json").read_text())["val"]
    ckpt = load_checkpoint(out / "train" / "last.pt")
    assert ckpt["training"]["step"] == 9  # 3 steps per epoch: 1 epoch before, 2 rounds of 1
    # the round table, printed and written
    rows = json.loads((out / "dagger_table.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2] and [r["step"] for r in rows] == [None, 6, 9]
    assert rows[1]["beta"] == pytest.approx(0.3) and rows[2]["beta"] == pytest.approx(0.15)
    assert all(r["autonomy_pct"] <= 100 and r["pace"] is not None for r in rows)
    md = (out / "dagger_table.md").read_text()
    assert "| round |" in md and md.count("\n| ") == 4 and report.table in md
    # run again with the same settings: nothing is redone; with other settings: a clear error
    mtimes = {p: p.stat().st_mtime_ns for p in runs}
    run_dagger(_config(root, work_store, run, out, rounds=2))
    assert {p: p.stat().st_mtime_ns for p in runs} == mtimes
    with pytest.raises(DaggerError, match=r"other settings \(tracks 2 -> 3\)"):
        run_dagger(_config(root, work_store, run, out, rounds=2, tracks=3))


@pytest.mark.slow
def test_a_killed_dagger_run_continues_in_the_round_it_was_in(start, tmp_path, monkeypatch):
    root, store, run = start
    shutil.copytree(store, tmp_path / "store.zarr")
    out = tmp_path / "dagger"
    config = _config(root, tmp_path / "store.zarr", run, out)
    real_train = dagger_module._train

    def killed(*a, **kw):
        raise KeyboardInterrupt  # the process is stopped after the round's runs were written and ingested

    monkeypatch.setattr(dagger_module, "_train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_dagger(config)
    progress = json.loads((out / "dagger.json").read_text())
    assert progress["rounds"][1]["ingested"] and "step" not in progress["rounds"][1]
    written = {p: p.stat().st_mtime_ns for p in (out / "rounds" / "01").glob("*.h5")}
    assert len(written) == 2
    monkeypatch.setattr(dagger_module, "_train", real_train)
    # through the command line, as a user would continue it
    assert main(["sim", "dagger", "--model", config.model, "--data", config.data, "--rounds", "1", "--out", str(out),
                 "--tracks", "2", "--seconds", "2", "--eval-tracks", "1", "--eval-laps", "0.1", "--max-seconds", "3",
                 "--beta", "0.3", "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "rounds" / "01").glob("*.h5")} == written
    rows = json.loads((out / "dagger_table.json").read_text())["rounds"]
    assert [r["step"] for r in rows] == [None, 6]
    assert rows[1]["runs_added"] == 2 and rows[1]["frames_added"] == 120  # the counts of runs written before


def test_bad_settings_and_starting_points_fail_with_one_clear_line(start, tmp_path):
    root, store, run = start
    with pytest.raises(ValueError, match=r"release=0.8 must be below takeover=0.7"):
        _config(root, store, run, tmp_path, release=0.8)
    with pytest.raises(ValueError, match=r"beta=1.5 must be a number in 0.0..1.0"):
        _config(root, store, run, tmp_path, beta=1.5)
    with pytest.raises(ValueError, match=r"eval_variants=\['x'\] must be integer seeds"):
        _config(root, store, run, tmp_path, eval_variants=["x"])
    lone = tmp_path / "lone" / "best.pt"
    lone.parent.mkdir()
    lone.write_bytes((run.run_dir / "last.pt").read_bytes())
    with pytest.raises(DaggerError, match=r"has no config.json or last.pt"):
        run_dagger(_config(root, store, run, tmp_path / "out", model=str(lone)))


def test_a_car_session_with_human_corrections_joins_the_aggregate_with_them_as_labels(start, tmp_path):
    """HG-DAgger from the car: a driver drive recording (the real SessionRecorder) ingested into the aggregate
    with only human driving accepted (states 1 and 5): the corrections are the labels, the model's own
    commands (state 6) are not."""
    root, store, run = start
    aggregate = tmp_path / "store.zarr"
    shutil.copytree(store, aggregate)
    rec = SessionRecorder(tmp_path / "car" / "drive_1.h5", H, W, stereo=False, labels={"direct": 1})
    rng = np.random.default_rng(0)
    states = [STATE_HUMAN] * 10 + [CAR_NETWORK] * 10 + [STATE_OVERRIDE] * 10 + [CAR_NETWORK] * 10
    for i, state in enumerate(states):
        human = state != CAR_NETWORK
        steer, motor = (30.0 + i, 70.0) if human else (49.0, 55.0)  # the human's sticks, or the model's command
        rec.add(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), None, steer=steer, motor=motor, state=state,
                timestamp=100.0 + i / 30, controller=0 if human else 1, rc_steer=steer if human else 49.0,
                rc_motor=motor if human else 49.0, model_steer=49.0, model_motor=55.0)
    path = rec.close()
    report = ingest(IngestConfig(sources=[str(path)], out=str(aggregate),
                                 validity=ValidityRules(accepted_states=(1, 5), min_motor=0.0)))
    assert report.ok, report.failures
    s = Store(aggregate)
    assert "drive_1" in s.runs and set(Store(store).runs) < set(s.runs)
    valid = s.series("drive_1", "valid")
    st = np.array(states)
    np.testing.assert_array_equal(valid, st != CAR_NETWORK)
    steer = s.series("drive_1", "steer")
    np.testing.assert_allclose(steer[st == STATE_OVERRIDE], 30.0 + np.arange(20, 30))
    # and training resumes on it: the same path DAgger takes (the run folder, one more epoch)
    shutil.copytree(run.run_dir, tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**cfg, "data": str(aggregate)}))
    resumed = train(resume=tmp_path / "run", overrides={"epochs": 2, "progress": False})
    assert "drive_1" in resumed_runs(tmp_path / "run") and resumed.steps > run.steps


def resumed_runs(run_dir) -> list[str]:
    split = json.loads((run_dir / "split.json").read_text())
    return split["train"] + split["val"]


class SteerLeft:
    """A controller that always steers hard left at a steady throttle: it leaves the road unless stopped."""

    policy = type("Spec", (), {"height": 24, "width": 32, "stereo": False})()

    def reset(self):
        pass

    def act(self, left, right, speed=None):
        return -1.0, 0.4


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_the_expert_takes_over_before_the_road_edge_and_labels_every_frame(tmp_path, beta):
    rule = MixRule(beta=beta)
    path, counts = collect_run(SteerLeft(), DaggerWorld(3, None, "r", 4.0, 30.0, seed=0), rule, tmp_path, {})
    with h5py.File(path) as f:
        g = f["segments/0"]
        state, cte, controller = g["state"][()], g["cte"][()], g["controller"][()]
        steer, executed = g["steer"][()], g["sim_executed_steer"][()]
        pose = np.stack([g["pose_x"][()], g["pose_y"][()], g["pose_yaw"][()], g["speed"][()]], 1)
    half = make_world(3, "train").track.lane_width / 2
    assert counts["resets"] == 0 and len(state) == 120  # one segment: the car never left the road
    assert np.abs(cte).max() < rule.reset_fraction * half
    if beta == 1.0:  # the expert drove every frame
        assert set(state.tolist()) == {STATE_EXPERT} and not controller.any()
    else:  # the policy drove until the car neared the edge, then the expert took over (and handed back)
        assert counts["takeovers"] >= 1 and STATE_NETWORK in state and STATE_EXPERT in state
        np.testing.assert_array_equal(executed[state == STATE_NETWORK], -1.0)
        assert np.abs(cte[state == STATE_NETWORK]).max() < rule.takeover * half + 0.05
    # every frame's label is the expert's clean command at the state the car was in
    expert = Expert(make_world(3, "train").track, DynamicSpec())
    for i in (0, 40, 80, 119):
        x, y, yaw, v = pose[i]
        want = expert.command(CarState(x=x, y=y, yaw=yaw, speed=v))[0]
        assert steer[i] == pytest.approx(norm_to_run(want), abs=0.02)
