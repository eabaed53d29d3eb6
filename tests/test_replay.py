"""Open-loop replay (metrics, end to end, state resets) and closed-loop warp replay."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from driver.datasets.clips import MODES
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import Store
from driver.datasets.synthetic import write_synthetic_runs
from driver.models import InputSpec, create_model
from driver.policy import Policy, load_policy
from driver.sim import replay_metrics as rm
from driver.sim.record import SimRecordConfig, record_runs
from driver.sim.replay import ReplayConfig, format_replay_report, replay
from driver.sim.warp_replay import (
    Reference,
    WarpReplayConfig,
    drive_reference,
    format_warp_report,
    warp_replay,
)
from driver.training.checkpoint import UNITS, model_payload, preprocess_info, save_checkpoint

H, W = 48, 64


def make_checkpoint(path, arch: str, seed: int = 0) -> str:
    """A checkpoint exactly as ``driver train`` lays it out, minus the training state (untrained weights)."""
    torch.manual_seed(seed)
    spec = InputSpec(height=H, width=W, cameras=1, stack=1, n_modes=len(MODES), horizon=1)
    model = create_model(arch, spec)
    payload = {**model_payload(model), "config": {"channels_last": True, "arch": arch},
               "preprocess": preprocess_info(spec, ("left",), MODES), "units": UNITS}
    save_checkpoint(path, payload)
    return str(path)


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    paths = record_runs(SimRecordConfig(out=d / "runs", runs=2, seconds=2, height=H, width=W, seed=0, noise=0.1))
    report = ingest(IngestConfig(sources=[str(p) for p in paths], out=str(d / "store.zarr")))
    assert report.ok
    return d / "store.zarr"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt", "squeezenet")


# -- metrics on synthetic predictions of known error ------------------------------------------------------

def _human(n=400, seed=0):
    t = np.arange(n)
    return 49 + 25 * np.sin(t / 15.0) + 5 * np.sin(t / 3.7 + np.random.default_rng(seed).uniform(0, 6))


def test_constant_offset_gives_mae_and_bias():
    h = _human()
    s = rm.error_stats(h + 3, h)
    assert s["mae"] == pytest.approx(3) and s["bias"] == pytest.approx(3) and s["mse"] == pytest.approx(9)
    assert rm.error_stats(h - 2, h)["bias"] == pytest.approx(-2)
    valid = np.zeros(len(h), bool)
    valid[:10] = True
    p = h.copy()
    p[10:] += 50  # errors on unscored frames do not count
    assert rm.error_stats(p, h, valid)["mae"] == pytest.approx(0)


def test_shifted_prediction_gives_its_lag_and_chunks_are_respected():
    h = _human()
    pred = np.concatenate([np.full(5, h[0]), h[:-5]])  # model late by 5 frames: pred[t] = human[t-5]
    assert rm.best_lag(pred, h, max_lag=20) == 5
    early = np.concatenate([h[3:], np.full(3, h[-1])])
    assert rm.best_lag(early, h, max_lag=20) == -3
    assert rm.best_lag(h, h, max_lag=20) == 0


def test_roughness_and_bins():
    h = _human()
    assert rm.roughness(np.full(100, 60.0)) == 0.0
    assert rm.roughness(np.array([49, 51, 49, 51.0])) == pytest.approx(2.0)
    # pairs across a chunk boundary or with an invalid frame are skipped
    assert rm.roughness(np.array([49, 59, 59.0]), chunk=np.array([0, 1, 1])) == 0.0
    bins = rm.errors_by_steer_bin(h + 4, h)
    assert [b["bin"] for b in bins] == ["0-5", "5-15", "15-30", "30+"]
    assert sum(b["count"] for b in bins) == len(h)
    assert all(b["mae"] == pytest.approx(4) for b in bins if b["count"])
    ids = rm.chunk_ids(np.array([0, 0, 0, 1, 1]), np.array([0, 0.03, 0.3, 0.33, 0.36]), 0.1)
    assert ids.tolist() == [0, 0, 1, 2, 2]


def test_baselines_r2_and_the_constant_predictor():
    h = _human()
    perfect = rm.baseline_stats(h, h, constant=49.0)
    assert perfect["r2"] == pytest.approx(1.0) and perfect["const_mae"] == pytest.approx(np.abs(49.0 - h).mean())
    assert rm.baseline_stats(np.full(len(h), h.mean()), h)["r2"] == pytest.approx(0.0)  # the human's own mean
    assert rm.baseline_stats(h + 100, h)["r2"] < 0 and rm.baseline_stats(h, h)["const_mae"] is None
    assert rm.baseline_stats(np.full(5, 60.0), np.full(5, 60.0))["r2"] is None  # a target that never varies


def test_replay_scores_against_the_training_mean(sim_store, tmp_path):
    path = make_checkpoint(tmp_path / "stats.pt", "squeezenet")
    ckpt = torch.load(path, weights_only=True)
    ckpt["label_stats"] = {"mean": [0.0, 0.5], "var": [0.1, 0.1], "mean_run_units": [49.0, 74.0]}
    save_checkpoint(path, ckpt)
    report = replay(ReplayConfig(model=path, data=str(sim_store), out=str(tmp_path / "o"), video=False, plots=False))
    o = report.overall
    human = np.concatenate([Store(sim_store).series(r, "motor") for r in Store(sim_store).runs])
    valid = np.concatenate([Store(sim_store).series(r, "valid") for r in Store(sim_store).runs])
    assert o["constant"] == [49.0, 74.0] or o["constant"] == (49.0, 74.0)
    # reported to 4 decimals
    assert o["throttle"]["const_mae"] == pytest.approx(np.abs(74.0 - human[valid]).mean(), abs=5e-5)
    assert all(m["steer"]["r2"] is not None for m in report.per_run.values())
    assert "R²" in format_replay_report(report) and "training mean (steer 49.0, throttle 74.0)" in \
        format_replay_report(report)


def test_worst_moments_sorted_and_separated():
    h = np.full(100, 49.0)
    p = h.copy()
    p[[10, 11, 50, 80]] = [60, 70, 55, 90]
    assert rm.worst_moments(p, h, k=3) == [80, 11, 10]
    assert rm.worst_moments(p, h, k=3, min_separation=5) == [80, 11, 50]


# -- open-loop replay end to end ---------------------------------------------------------------------------

def test_replay_end_to_end(sim_store, checkpoint, tmp_path):
    out = tmp_path / "out"
    report = replay(ReplayConfig(model=checkpoint, data=str(sim_store), out=str(out), max_video_frames=40,
                                 worst=8))
    o = report.overall
    for key in ("steer", "throttle", "steer_by_bin", "lag_frames", "lag_s", "roughness_model", "roughness_human"):
        assert key in o
    for key in ("mse", "mae", "bias", "rmse"):
        assert o["steer"][key] is not None and o["throttle"][key] is not None
    assert set(report.per_run) == set(Store(sim_store).runs)
    assert o["scored"] == sum(m["scored"] for m in report.per_run.values()) > 0
    errs = [w["abs_error"] for w in report.worst]
    assert 0 < len(errs) <= 8 and errs == sorted(errs, reverse=True)
    d = json.loads((out / "report.json").read_text())
    assert d["overall"]["steer"]["mae"] == o["steer"]["mae"]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 * len(report.per_run)
    assert all(cv2.imread(str(p)) is not None for p in pngs)
    mp4 = next(out.glob("*.mp4"))
    cap = cv2.VideoCapture(str(mp4))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) > 0
    ok, frame = cap.read()
    assert ok and frame.shape[1] >= 3 * W
    cap.release()
    assert (out / "worst.csv").read_text().startswith("run,frame,time_s,human,model,abs_error")
    text = format_replay_report(report)
    assert "ALL" in text and "steer MAE" in text


def test_replay_runtime_onnx_matches_torch(sim_store, tmp_path):
    """`driver replay --runtime onnx` on an exported recurrent model: the same commands as PyTorch, frame by frame."""
    from driver.export import OnnxExportConfig, export_onnx

    ckpt = make_checkpoint(tmp_path / "gru.pt", "squeezenet_gru", seed=3)
    onnx_path = tmp_path / "gru.onnx"
    export_onnx(ckpt, OnnxExportConfig(out=str(onnx_path), parity_steps=2, parity_sequences=1))
    reports = {}
    for model, runtime in ((ckpt, "torch"), (str(onnx_path), "onnx"), (ckpt, "onnx")):  # .pt exported in memory
        reports[model, runtime] = replay(ReplayConfig(model=model, data=str(sim_store), out=str(tmp_path / runtime),
                                                      runtime=runtime, video=False, plots=False))
    ref = reports[ckpt, "torch"]
    for (_, runtime), report in reports.items():
        assert report.config["runtime"] == runtime
        for run, trace in report.traces.items():
            np.testing.assert_allclose(trace.pred_steer, ref.traces[run].pred_steer, atol=1e-3)  # run units
            np.testing.assert_allclose(trace.pred_motor, ref.traces[run].pred_motor, atol=1e-3)
            assert trace.resets == ref.traces[run].resets > 0
        assert report.overall["steer"]["mae"] == pytest.approx(ref.overall["steer"]["mae"], abs=1e-3)


class CountingPolicy(Policy):
    def reset(self):
        self.resets = getattr(self, "resets", -1) + 1  # Policy.__init__ calls reset once
        super().reset()


def test_replay_resets_at_segments_and_gaps_with_a_recurrent_policy(tmp_path):
    paths = write_synthetic_runs(tmp_path / "runs", 1, n_frames=60, height=H, width=W, stereo=False, seed=1)
    ingest(IngestConfig(sources=[str(p) for p in paths], out=str(tmp_path / "store.zarr")))
    store = Store(tmp_path / "store.zarr")
    run = store.runs[0]
    chunks = rm.chunk_ids(store.series(run, "segment"), store.series(run, "timestamp"), 0.1)
    n_segments = len(store.run_meta(run)["segments"])
    assert n_segments >= 2 and chunks.max() + 1 >= n_segments
    ckpt = make_checkpoint(tmp_path / "gru.pt", "squeezenet_gru")
    base = load_policy(ckpt)
    assert base.is_recurrent
    from driver.training.checkpoint import load_checkpoint

    policy = CountingPolicy(base.model, load_checkpoint(ckpt))
    report = replay(ReplayConfig(model=ckpt, data=str(tmp_path / "store.zarr"), out=str(tmp_path / "o"),
                                 video=False, plots=False), policy=policy)
    assert policy.resets == int(chunks.max()) + 1 == report.overall["resets"]
    # the same frames replayed from a fresh state give the same outputs: state really was reset
    again = replay(ReplayConfig(model=ckpt, data=str(tmp_path / "store.zarr"), out=str(tmp_path / "o2"),
                                video=False, plots=False))
    np.testing.assert_allclose(again.traces[run].pred_steer, report.traces[run].pred_steer, atol=1e-4)


def test_replay_config_validates():
    with pytest.raises(ValueError, match="max_video_frames"):
        ReplayConfig(model="m", data="d", max_video_frames=0)
    with pytest.raises(ValueError, match="max_lag"):
        ReplayConfig(model="m", data="d", max_lag=-1)


# -- closed-loop warp replay -------------------------------------------------------------------------------

class Fixed:
    """A controller that always outputs the same normalised steering."""

    def __init__(self, steer: float):
        self.steer, self.resets, self.calls = steer, 0, 0

    def reset(self):
        self.resets += 1

    def act(self, frame, right=None, mode=None):
        self.calls += 1
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        return SimpleNamespace(steer_norm=self.steer, motor_norm=0.4)


def straight_reference(n=300, fps=30.0, speed=1.5) -> Reference:
    t = np.arange(n) / fps
    return Reference(x=speed * t, y=np.zeros(n), yaw=np.zeros(n), speed=np.full(n, speed), time_s=t,
                     chunk=np.zeros(n, np.int64), source="pose", speed_source="speed")


def _frames(i):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    return img, None


def test_perfect_controller_on_a_straight_road_is_fully_autonomous():
    from driver.sim.warp import CameraModel

    cfg = WarpReplayConfig(model="-", data="-")
    res = drive_reference(Fixed(0.0), _frames, straight_reference(), cfg, CameraModel())
    assert res.interventions == 0 and res.autonomy == 100.0
    assert np.abs(res.d).max() < 1e-9 and res.elapsed_s == pytest.approx(299 / 30)


def test_hard_steering_controller_needs_interventions():
    from driver.sim.warp import CameraModel

    cfg = WarpReplayConfig(model="-", data="-", threshold_m=0.3)
    ctl = Fixed(0.15)  # full lock trips the heading limit first; this drifts sideways
    res = drive_reference(ctl, _frames, straight_reference(), cfg, CameraModel())
    assert res.interventions >= 3 and res.autonomy < 0
    assert ctl.resets == 1 + res.interventions
    assert np.all(np.abs(res.d) <= 0.3 + 1e-9) and res.d.min() < -0.1  # steering right drifts right (d < 0)


def test_latency_delays_the_drift():
    from driver.sim.warp import CameraModel

    fast = drive_reference(Fixed(0.5), _frames, straight_reference(60), WarpReplayConfig("-", "-"), CameraModel())
    slow = drive_reference(Fixed(0.5), _frames, straight_reference(60),
                           WarpReplayConfig("-", "-", latency_frames=10), CameraModel())
    assert abs(slow.d[30]) < abs(fast.d[30])


class ReplayHuman:
    """Outputs the recorded (executed) steering of the run, frame by frame: the human as a controller."""

    def __init__(self, steer_norm: np.ndarray):
        self.steer, self.i = steer_norm, 0

    def reset(self):
        pass

    def act(self, frame, right=None, mode=None):
        s = float(self.steer[self.i])
        self.i += 1
        return SimpleNamespace(steer_norm=s)


def test_warp_replay_on_a_recorded_store(sim_store, checkpoint, tmp_path):
    store = Store(sim_store)
    run = store.runs[0]
    # the human's own commands drive along the recorded path (the reference is the recorded pose)
    human = ReplayHuman(store.series(run, "sim_executed_steer").astype(np.float64))
    rep = warp_replay(WarpReplayConfig(model="-", data=str(sim_store), runs=[run]), policy=human)
    assert rep.interventions == 0 and rep.autonomy == pytest.approx(100.0)
    assert rep.per_run[run]["reference"] == "pose" and rep.overall["mean_abs_d_m"] < 0.1
    # the real policy through the real entry point
    rep = warp_replay(WarpReplayConfig(model=checkpoint, data=str(sim_store), out=str(tmp_path)))
    d = rep.to_dict()
    assert set(d["per_run"]) == set(store.runs) and "autonomy_pct" in d["overall"]
    assert math.isfinite(rep.autonomy) and rep.interventions >= 0
    assert (tmp_path / "warp_report.json").is_file()
    assert "ALL" in format_warp_report(rep)


def test_integrated_reference_when_no_pose(tmp_path):
    """Runs without pose extras: the path is integrated from encoder speed and steering; the human's own
    steering then reproduces it exactly."""
    paths = write_synthetic_runs(tmp_path / "runs", 1, n_frames=60, height=H, width=W, stereo=False, seed=2)
    ingest(IngestConfig(sources=[str(p) for p in paths], out=str(tmp_path / "store.zarr")))
    store = Store(tmp_path / "store.zarr")
    run = store.runs[0]
    from driver.units import run_to_norm

    human = ReplayHuman(np.asarray(run_to_norm(store.series(run, "steer").astype(np.float64))))
    rep = warp_replay(WarpReplayConfig(model="-", data=str(tmp_path / "store.zarr")), policy=human)
    assert rep.per_run[run]["reference"] == "integrated" and rep.per_run[run]["speed_source"] == "encoder"
    assert rep.interventions == 0 and rep.overall["mean_abs_d_m"] < 1e-6
