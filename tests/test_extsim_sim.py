"""The external-simulator benchmark against the real highway-env (the bench-only extra:
``pip install -e '.[extsim]'``); skipped when it is not installed."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("highway_env")

from bench.extsim import closed_loop as cl  # noqa: E402
from bench.extsim import geometry as geo  # noqa: E402
from bench.extsim.env import STEER_LIMIT, RacetrackSim, SimConfig  # noqa: E402
from bench.extsim.expert import Expert  # noqa: E402
from bench.extsim.record import EXTRAS, LABELS, RecordConfig, record_runs  # noqa: E402
from driver.datasets.run_format import inspect_run  # noqa: E402
from tests.limits import SAFETY_S  # noqa: E402

SMALL = SimConfig(height=32, width=32)


@pytest.fixture(scope="module")
def sim():
    s = RacetrackSim(SMALL)
    yield s
    s.close()


def straight(sim) -> tuple:
    return next(i for i in sim.lane_indices() if sim.network.get_lane(i).length > 50 and
                type(sim.network.get_lane(i)).__name__ == "StraightLane")


def test_steering_matches_highway_envs_bicycle_model(sim):
    """Constant steering for the curvature kappa: the real car's rear axle turns at kappa."""
    sim.place(straight(sim), 5.0, 0.0, 0.0, 5.0)
    kappa = 1 / 20
    action = geo.steering_for_curvature(kappa, sim.vehicle.LENGTH) / STEER_LIMIT
    v = sim.vehicle
    rear = [geo.rear_axle(v.position[0], v.position[1], v.heading, v.LENGTH)]
    heading0 = v.heading
    for _ in range(10):
        sim.step(action, 0.0)
        rear.append(geo.rear_axle(v.position[0], v.position[1], v.heading, v.LENGTH))
    arc = np.sum(np.linalg.norm(np.diff(np.array(rear), axis=0), axis=1))
    assert (v.heading - heading0) / arc == pytest.approx(kappa, rel=0.02)  # + = turning right


def test_expert_steers_back_to_the_lane_and_plans_speed(sim):
    expert, lane = Expert(), straight(sim)
    sim.place(lane, 5.0, 1.5, 0.0, 8.0)  # right of the centre line
    assert expert.command(sim)[0] < -0.05
    sim.place(lane, 5.0, -1.5, 0.0, 8.0)
    assert expert.command(sim)[0] > 0.05
    sim.place(lane, 5.0, 0.0, 0.0, 3.0)  # slow at the start of a long straight: accelerate
    assert expert.command(sim)[1] > 0.5
    end = sim.network.get_lane(lane).length - 2.0
    sim.place(lane, end, 0.0, 0.0, 14.0)  # fast right before a curve: brake
    assert expert.command(sim)[1] < -0.5


def test_camera_is_car_fixed_and_heading_up(sim):
    lane = straight(sim)
    for heading in (0.0, 0.5):
        sim.place(lane, 20.0, 0.0, heading, 5.0)
        frame = sim.frame()
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
        r, g, b = (frame[..., i].astype(int) for i in range(3))
        rows, cols = np.nonzero((r > 150) & (g > 150) & (b < 100))  # the yellow ego car
        assert rows.size > 3
        assert rows.mean() == pytest.approx(SMALL.car_row * 32, abs=1.5)
        assert cols.mean() == pytest.approx(16, abs=1.5)
        assert np.ptp(rows) > np.ptp(cols)  # long axis vertical whatever the heading: it points up


def test_recorded_runs_are_lab_format(tmp_path):
    config = RecordConfig(out=str(tmp_path), runs=1, seconds=2.0, split="test", sim=SMALL)
    (path,) = record_runs(config)
    info = inspect_run(path)
    assert info.labels == LABELS and info.cameras == ("left",) and (info.height, info.width) == (32, 32)
    assert sorted(e.name for e in info.extras) == sorted(EXTRAS)
    assert info.n_frames == 30
    np.testing.assert_allclose(np.diff(info.series["left_timestamp"]), 1 / 15, rtol=1e-6)
    assert set(np.unique(info.series["state"])) == {1.0}
    with h5py.File(path, "r") as f:
        meta = json.loads(f.attrs["extsim"])
        speed = f["segments/0/encoder"][()]
        progress = f["segments/0/progress"][()]
    assert meta["simulator"] == "highway-env" and meta["seed"] == 1_000_000 and meta["sim"]["fps"] == 15.0
    assert (speed > 0).all() and speed.max() < 16
    # both at the frame: the car advances by the recorded speed over the next 1/15 s
    assert progress[0] == 0
    np.testing.assert_allclose(np.diff(progress), speed[:-1] / 15, atol=0.05)
    mtime = path.stat().st_mtime_ns
    assert record_runs(config) == [path] and path.stat().st_mtime_ns == mtime  # on disk: kept


def test_off_road_ends_the_segment_and_the_run_goes_on(tmp_path):
    config = RecordConfig(out=str(tmp_path), runs=1, seconds=8.0, noise=1.0, sim=SMALL)
    (path,) = record_runs(config)
    info = inspect_run(path)
    assert len(info.segments) >= 2 and info.n_frames == 120
    ts = info.series["left_timestamp"]
    assert np.diff(ts).max() >= 1.0  # segments separated by the reset gap
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["extsim"])["off_road_resets"] == len(info.segments) - 1


def test_closed_loop_expert_is_the_reference_and_a_bad_driver_is_not(sim):
    loop = cl.ClosedLoopConfig(episodes=1, seconds=6.0, sim=SMALL)
    expert = cl.evaluate(cl.ExpertController(), loop, sim)
    s = cl.summarize(expert, expert)
    assert s.score == 1.0 and s.interventions == 0 and s.completed == 1.0
    assert expert[0].distance > 6.0 * 3  # it drives
    hard_left = cl.summarize(cl.evaluate(cl.ConstantController(-1.0, 0.0), loop, sim), expert)
    assert hard_left.interventions >= 1 and hard_left.score < 0.5 and hard_left.autonomy_pct < 100
    assert math.isfinite(hard_left.pace)


def test_ctrl_c_stops_a_recording_and_leaves_only_whole_runs(tmp_path):
    """Ctrl-C stops a recording at the next simulator step (SDL's handlers are off; the loop checks a flag)."""
    script = Path(__file__).resolve().parents[1] / "bench" / "extsim" / "record.py"
    proc = subprocess.Popen([sys.executable, str(script), "--out", str(tmp_path), "--runs", "200", "--seconds", "4",
                             "--size", "32", "32"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + SAFETY_S
    while not list(tmp_path.glob("*.h5")) and time.monotonic() < deadline:  # at least one whole run first
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=SAFETY_S)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert rc != 0 and b"KeyboardInterrupt" in err, (rc, err[-3000:].decode(errors="replace"))
    runs = sorted(tmp_path.glob("*.h5"))
    assert 1 <= len(runs) < 200 and not list(tmp_path.glob("*.partial"))
    for p in runs:
        assert inspect_run(p).n_frames == 60
