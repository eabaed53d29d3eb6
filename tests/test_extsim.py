"""The external-simulator benchmark's own logic, without the simulator: the expert's geometry, the camera
warp, the run conversion (units, timestamps) through the real writer and `driver ingest`, and the scores.
What needs highway-env is in test_extsim_sim.py (skipped when the bench-only extra is not installed)."""

from __future__ import annotations

import json
import math
import time

import cv2
import numpy as np
import pytest

from bench.extsim import geometry as geo
from bench.extsim.closed_loop import EVAL_SEEDS, ClosedLoopConfig, Episode, summarize
from bench.extsim.record import (
    EXTRAS,
    LABELS,
    SPLIT_SEEDS,
    RecordConfig,
    commands_to_run_units,
    frame_times,
    segment_arrays,
)
from bench.extsim.run_benchmark import (
    INGEST_FLAGS,
    RECIPES,
    BenchConfig,
    LoadSampler,
    constant_scores,
    table,
    train_base_args,
    train_budget_args,
    valid_labels,
)
from bench.extsim.scores import constant_r_squared, r_squared, r_squared_from_mse
from driver.cli import main as driver_main
from driver.datasets.run_format import inspect_run
from driver.datasets.run_writer import write_run
from driver.datasets.store import Store

# ---- geometry: + = right everywhere, in highway-env's y-down world -------------------------------


def test_wrap_angle_scalar_and_array():
    assert geo.wrap_angle(3 * math.pi / 2) == pytest.approx(-math.pi / 2)
    assert geo.wrap_angle(-0.25) == pytest.approx(-0.25)
    np.testing.assert_allclose(geo.wrap_angle(np.array([2 * math.pi + 0.1, -2 * math.pi - 0.1])), [0.1, -0.1])


def test_car_frame_forward_and_right():
    # heading 0 points along +x; the car's right is +y (down on highway-env's screen)
    assert geo.to_car_frame(0, 0, 0.0, 2, 0) == pytest.approx((2, 0))
    assert geo.to_car_frame(0, 0, 0.0, 0, 3) == pytest.approx((0, 3))
    # heading +90° points along +y; its right is -x
    assert geo.to_car_frame(1, 1, math.pi / 2, 0, 1) == pytest.approx((0, 1))


@pytest.mark.parametrize("radius, side", [(15.0, 1), (25.0, -1)])
def test_pursuit_on_a_circle_gives_its_curvature(radius, side):
    # circle tangent to the heading at the origin, centre on the car's right (side 1) or left (side -1)
    for theta in (0.1, 0.4, 0.9):
        tx, ty = radius * math.sin(theta), side * radius * (1 - math.cos(theta))
        assert geo.pursuit_curvature(0, 0, 0.0, tx, ty) == pytest.approx(side / radius)


def test_steering_inverts_the_rear_axle_arc():
    for kappa in (-0.1, -0.02, 0.0, 0.05):
        delta = geo.steering_for_curvature(kappa, 5.0)
        assert math.tan(delta) / 5.0 == pytest.approx(kappa)
        assert math.copysign(1, delta) == math.copysign(1, kappa) or kappa == 0
    assert geo.rear_axle(10, 0, 0.0, 5.0) == pytest.approx((7.5, 0))


def test_curvature_profile_of_a_circle_and_across_pi():
    r, ds = 20.0, 1.0
    headings = np.arange(0, 40) * ds / r + 3.0  # crosses +pi: wrapping must not create a spike
    np.testing.assert_allclose(geo.curvature_profile(headings, ds), 1 / r)
    np.testing.assert_allclose(geo.curvature_profile(-headings, ds), -1 / r)
    assert geo.curvature_profile(np.array([0.0]), 1.0).size == 0
    with pytest.raises(ValueError, match="spacing"):
        geo.curvature_profile(headings, 0.0)


def test_speed_plan_brakes_for_curves_ahead():
    d = np.arange(30.0)
    straight = np.zeros(30)
    assert geo.target_speed(straight, d, 4, 10, 3, 3) == 10
    curve_now = np.full(30, 1 / 15)
    assert geo.target_speed(curve_now, d, 4, 10, 3, 3) == pytest.approx(math.sqrt(3 * 15))
    ahead = [geo.target_speed(np.where(d >= k, 1 / 15, 0.0), d, 4, 10, 3, 3) for k in (0, 3, 6, 12, 29)]
    assert ahead == sorted(ahead) and ahead[0] < ahead[-1] <= 10  # farther curves allow more speed now
    assert ahead[1] == pytest.approx(math.sqrt(45 + 2 * 3 * 3))  # braking envelope from 3 m away
    assert geo.target_speed(np.full(30, 10.0), d, 4, 10, 3, 3) == 4  # clamped to v_min
    with pytest.raises(ValueError, match="values"):
        geo.target_speed(straight, d[:5], 4, 10, 3, 3)
    with pytest.raises(ValueError, match="v_min"):
        geo.target_speed(straight, d, 0, 10, 3, 3)


def test_speed_command_is_proportional_and_limited():
    assert geo.speed_command(8, 10, 1.5, 5) == 3
    assert geo.speed_command(10, 8, 1.5, 5) == -3
    assert geo.speed_command(0, 10, 1.5, 5) == 5 and geo.speed_command(10, 0, 1.5, 5) == -5


def test_heading_up_camera_warp():
    car, out = (50.0, 60.0), (40, 40)
    for heading in (0.0, 0.7, -2.0, math.pi):
        m = geo.heading_up_affine(car, heading, 4.0, out, 2.0, (20, 30))
        d = np.array([math.cos(heading), math.sin(heading)])
        r = np.array([-math.sin(heading), math.cos(heading)])

        def warp(p, m=m):
            return m[:, :2] @ np.asarray(p) + m[:, 2]

        np.testing.assert_allclose(warp(car), (20, 30), atol=1e-9)  # the car sits where asked
        np.testing.assert_allclose(warp(np.array(car) + 8 * d), (20, 26), atol=1e-9)  # ahead = up, scaled 1/2
        np.testing.assert_allclose(warp(np.array(car) + 8 * r), (24, 30), atol=1e-9)  # its right = right


def test_heading_up_warp_moves_real_pixels():
    """Through cv2.warpAffine: a bright dot ahead of a car heading +y (down the source image) lands above
    the car in the output."""
    src = np.zeros((100, 100, 3), np.uint8)
    src[79:82, 49:52] = 255  # 30 px below the car at (50, 50): ahead of a car with heading +90°
    m = geo.heading_up_affine((50, 50), math.pi / 2, 1.0, (60, 60), 1.0, (30, 45))
    out = cv2.warpAffine(src, m, (60, 60))
    rows, cols = np.nonzero(out[..., 0] > 128)
    assert (rows.mean(), cols.mean()) == pytest.approx((15, 30))


# ---- run conversion -------------------------------------------------------------------------------


def test_commands_map_to_run_units():
    steer, motor = commands_to_run_units(np.array([-1.0, 0.0, 1.0, 1.7, -0.5]), np.array([0.0, -1.0, 1.0, -3, 0.5]))
    np.testing.assert_allclose(steer, [0, 49, 99, 99, 24.5])  # + right, 49 straight
    np.testing.assert_allclose(motor, [49, 0, 99, 0, 74])  # acceleration: 49 coasting, below braking
    assert steer.dtype == np.float32 and motor.dtype == np.float32


def test_frame_times_at_the_sim_rate():
    t = frame_times(1000.0, 4, 15.0)
    np.testing.assert_allclose(np.diff(t), 1 / 15)
    assert t[0] == 1000.0
    with pytest.raises(ValueError, match="fps"):
        frame_times(0, 3, 0)


def _segment(n, seed, start=1000.0, fps=15.0):
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(n)]
    series = {"steer": rng.uniform(-1, 1, n).tolist(), "accel": np.linspace(-1, 1, n).tolist()}
    series.update({k: rng.normal(size=n).tolist() for k in EXTRAS})
    return segment_arrays(frames, series, start, fps)


def test_segment_errors_name_the_problem():
    frames = [np.zeros((16, 16, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match="missing"):
        segment_arrays(frames, {"steer": [0, 0, 0]}, 0, 15)
    series = {k: [0.0] * 3 for k in ("steer", "accel", *EXTRAS)}
    series["encoder"] = [0.0] * 2
    with pytest.raises(ValueError, match="encoder"):
        segment_arrays(frames, series, 0, 15)


@pytest.fixture(scope="module")
def converted_runs(tmp_path_factory):
    """Two runs written as the recorder writes them (two segments, a 1 s gap), ingested with the
    benchmark's own `driver ingest` flags."""
    d = tmp_path_factory.mktemp("extsim_runs")
    for i in range(2):
        segs = [_segment(40, 2 * i), _segment(25, 2 * i + 1, start=1000.0 + 40 / 15 + 1.0)]
        write_run(d / f"extsim_train_{i:07d}.h5", segs, labels=LABELS)
    store = d / "s.zarr"
    assert driver_main(["ingest", str(d), "--out", str(store), *INGEST_FLAGS]) == 0
    return d, store


def test_converted_runs_pass_the_run_format_and_keep_braking_frames(converted_runs):
    d, store_path = converted_runs
    info = inspect_run(d / "extsim_train_0000000.h5")
    assert info.cameras == ("left",) and (info.height, info.width) == (16, 16)
    assert info.labels == LABELS and sorted(e.name for e in info.extras) == sorted(EXTRAS)
    store = Store(store_path)
    run = "extsim_train_0000000"
    motor = store.series(run, "motor")
    assert motor.min() == 0 and (motor < 49).sum() > 20  # braking is recorded below neutral ...
    valid = store.series(run, "valid").astype(bool)
    assert valid.all()  # ... and kept: every frame of these runs is a training frame


def test_valid_labels_and_constant_predictor(converted_runs):
    _, store_path = converted_runs
    labels = valid_labels(store_path)
    assert set(labels) == {"extsim_train_0000000", "extsim_train_0000001", "ALL"}
    assert len(labels["ALL"]["steer"]) == 2 * 65
    const = constant_scores(labels, labels)
    for k in ("steer", "motor"):
        assert const["mean_run_units"][k] == pytest.approx(labels["ALL"][k].mean())
        assert const["overall"][k] == pytest.approx(0.0, abs=1e-9)  # the mean of the same labels: R² = 0
        assert all(v[k] <= 1e-9 for v in const["per_run"].values())


def test_record_seeds_are_disjoint_from_held_out_and_closed_loop_seeds(tmp_path):
    train = RecordConfig(out=str(tmp_path), runs=1000, split="train")
    test = RecordConfig(out=str(tmp_path), runs=1000, split="test")
    seeds = {"train": {train.run_seed(i) for i in range(1000)}, "test": {test.run_seed(i) for i in range(1000)},
             "eval": set(ClosedLoopConfig(episodes=1000).episode_seeds())}
    assert not (seeds["train"] & seeds["test"]) and not (seeds["eval"] & (seeds["train"] | seeds["test"]))
    assert min(seeds["eval"]) == EVAL_SEEDS and min(seeds["test"]) == SPLIT_SEEDS["test"]
    assert test.run_path(2).name == "extsim_test_1000002.h5"
    with pytest.raises(ValueError, match="split"):
        RecordConfig(out=str(tmp_path), split="val")
    with pytest.raises(ValueError, match="runs=0"):
        RecordConfig(out=str(tmp_path), runs=0)


# ---- scores ---------------------------------------------------------------------------------------


def test_r_squared_reference_points():
    y = np.array([40.0, 45, 50, 55, 60])
    assert r_squared(y, y) == 1.0
    assert r_squared(y, np.full(5, y.mean())) == pytest.approx(0.0)
    assert constant_r_squared(49.0, y) < 0  # a constant that is not the held-out mean scores below 0
    assert r_squared_from_mse(np.var(y) / 4, y) == pytest.approx(0.75)
    assert math.isnan(r_squared(np.full(3, 49.0), np.full(3, 49.0)))  # no variance: undefined
    assert math.isnan(r_squared_from_mse(None, y))
    with pytest.raises(ValueError, match="values"):
        r_squared(y, y[:3])


def test_expert_hands_lag_the_steering_and_forget_on_reset():
    from bench.extsim.expert import Expert, ExpertSpec

    lagging = Expert(ExpertSpec(steer_lag_s=0.15))
    alpha = 1 - math.exp(-1 / (15.0 * 0.15))  # the share of the gap closed each command at 15 Hz
    assert lagging.lagged(0.0, 15.0) == 0.0  # the first command after a start is the pure-pursuit angle
    steps = [lagging.lagged(1.0, 15.0) for _ in range(3)]
    assert steps == pytest.approx([1 - (1 - alpha) ** k for k in (1, 2, 3)])  # a step input, approached
    lagging.reset()
    assert lagging.lagged(-0.5, 15.0) == -0.5
    plain = Expert()  # the benchmark's expert: no memory
    assert [plain.lagged(x, 15.0) for x in (0.0, 1.0, -0.3)] == [0.0, 1.0, -0.3]
    with pytest.raises(ValueError, match="steer_lag_s=3.0 must be in 0..2 s"):
        ExpertSpec(steer_lag_s=3.0)
    with pytest.raises(ValueError, match="steer_lag=-0.1 must be in 0..2 s"):
        RecordConfig(out="x", steer_lag=-0.1)


def test_runs_on_disk_must_come_from_the_same_expert(tmp_path):
    from bench.extsim.record import record_runs

    for i, lag in enumerate((0.15, 0.15)):
        meta = {"expert": {"steer_lag_s": lag}}
        write_run(tmp_path / f"extsim_train_{i:07d}.h5", [_segment(5, i)], labels=LABELS,
                  attrs={"extsim": json.dumps(meta)})
    assert len(record_runs(RecordConfig(out=str(tmp_path), runs=2, steer_lag=0.15))) == 2  # kept, nothing recorded
    with pytest.raises(ValueError, match=r"extsim_train_0000000.h5 was recorded with the expert's steering lag 0.15 s, "
                                         r"not 0.0 s"):
        record_runs(RecordConfig(out=str(tmp_path), runs=2))


def test_error_structure_tells_slow_from_fast_error():
    from bench.extsim.error_structure import error_structure

    rng = np.random.default_rng(0)
    white = [rng.normal(size=900) for _ in range(3)]  # a model that misreads single frames
    fast = error_structure(white, fps=15.0)
    assert abs(fast["autocorr_1"]) < 0.1 and fast["slow_share"] < 0.15  # a 15-frame mean keeps ~1/15 of it
    drift = [np.sin(np.arange(900) / 60.0) + 0.1 * w for w in white]  # a belief held for seconds
    slow = error_structure(drift, fps=15.0)
    assert slow["autocorr_8"] > 0.9 and slow["slow_share"] > 0.9


def test_pairs_tell_alike_errors_from_opposite_ones(capsys):
    from bench.extsim.error_structure import print_pairs

    rng = np.random.default_rng(0)
    human = rng.normal(size=500)
    error = rng.normal(scale=0.1, size=500)
    print_pairs(["a", "b", "c"], [human + error, human + error, human - error], human)
    rows = {tuple(cells[1:3]): cells[3:5] for line in capsys.readouterr().out.splitlines()
            if (cells := [c.strip() for c in line.split("|")])[1:2] in (["a"], ["b"])}
    r2 = 1 - np.mean(error ** 2) / np.var(human)
    assert rows[("a", "b")] == ["1.000", f"{r2:.4f}"]  # the same errors: averaging gains nothing
    assert rows[("a", "c")] == ["-1.000", "1.0000"] == rows[("b", "c")]  # opposite errors cancel


def _episode(seed, weighted, distance, interventions=0, survived=45.0):
    return Episode(seed, 45.0, 600.0, survived, weighted, distance, interventions, 0.2, 8.0)


def test_closed_loop_summary_against_the_expert():
    expert = [_episode(1, 300, 400), _episode(2, 100, 200)]
    model = [_episode(1, 150, 300, interventions=1, survived=20.0), _episode(2, 50, 150)]
    s = summarize(model, expert)
    assert s.score == pytest.approx(200 / 400) and s.pace == pytest.approx(450 / 600)
    assert s.autonomy_pct == pytest.approx((1 - 6 / 90) * 100) and s.interventions == 1
    assert s.completed == 0.5
    assert summarize(expert, expert).score == 1.0
    assert summarize(model).score is None  # no reference: no score
    with pytest.raises(ValueError, match="same seeds"):
        summarize(model, expert[::-1])


def test_table_and_budget_flags():
    rows = [{"model": "expert (labels)", "steer_r2": 1.0, "throttle_r2": 1.0,
             "closed_loop": summarize([_episode(1, 3, 4)], [_episode(1, 3, 4)])},
            {"model": "pilotnet (pilotnet)", "error": "not in this build"}]
    text = table(rows)
    assert text.splitlines()[0].startswith("| model | steer R² | throttle R² | closed-loop score | sim reward/step |")
    expert = summarize([_episode(1, 3, 4)], [_episode(1, 3, 4)]).sim_return_per_step
    assert f"| expert (labels) | 1.000 | 1.000 | 1.000 | {expert:.3f} | 100.0% |" in text
    assert text.splitlines()[-1].endswith("not in this build")
    assert train_budget_args(600) == ["--budget", "10m"]
    assert {"default", "pilotnet"} <= set(RECIPES) and RECIPES["default"] == []


def test_every_recipe_is_a_valid_train_command_and_parallel_runs_take_one_thread(tmp_path):
    from driver.cli import build_parser
    from driver.config_flags import given_values
    from driver.training.config import TrainConfig, resolve_config

    for parallel in (False, True):
        cfg = BenchConfig(work=str(tmp_path), models=sorted(RECIPES), parallel=parallel)
        for model in RECIPES:
            args = build_parser().parse_args(["train", *train_base_args(cfg, model), *train_budget_args(1800)])
            config = resolve_config(None, given_values(args, TrainConfig))
            assert config.threads == (1 if parallel else 0) and config.budget == "30m"
            own_seed = model.rsplit("_s", 1)[-1]  # default_s2 -> "2"; default -> "default"
            assert config.seed == (int(own_seed) if own_seed.isdigit() else cfg.seed)  # a recipe's own seed wins
            assert config.cameras == "left" and config.data == str(tmp_path / "train.zarr")
    flags = {m: resolve_config(None, given_values(build_parser().parse_args(["train", *RECIPES[m]]), TrainConfig))
             for m in RECIPES}
    assert flags["default"] == TrainConfig()  # the default recipe is driver train's own
    assert flags["default_flip_clip"].flip_scope == "clip" and flags["pilotnet"].arch == "pilotnet"


def test_load_sampler_summarises_the_load_average():
    with LoadSampler(every_s=0.01) as load:
        while len(load.samples) < 3:
            time.sleep(0.01)
    s = load.summary()
    assert s["samples"] >= 3 and 0 <= s["min"] <= s["median"] <= s["max"]


def test_missing_simulator_names_the_extra(monkeypatch):
    import sys

    from bench.extsim.env import ExtSimError, import_highway_env

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setitem(sys.modules, "highway_env", None)
    with pytest.raises(ExtSimError, match=r"pip install -e '\.\[extsim\]'"):
        import_highway_env()
    import os

    assert os.environ["SDL_VIDEODRIVER"] == "offscreen"  # 'dummy' would make highway-env draw nothing
