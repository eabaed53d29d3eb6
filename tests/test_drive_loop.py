"""The drive loop in-process with the in-process MCU (SimLink): checks, limits, recording, preprocessing."""

from __future__ import annotations

import math
import threading

import h5py
import numpy as np
import pytest

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_format import inspect_run
from driver.datasets.store import Store
from driver.policy import load_policy
from driver.preprocess import prepare_frame
from driver.vehicle.calibration import Calibration, Endpoints
from driver.vehicle.camera import CameraConfig, CameraError, LatestFrame, open_camera
from driver.vehicle.carlink import Mode
from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import DriveLoop, drive
from driver.vehicle.limits import HostLimits, LimitsConfig
from driver.vehicle.recorder import EXTRAS, SessionRecorder, truncate_to_committed
from driver.vehicle.safety import CHECKS, Act, Health, SafetyConfig, checks_table_markdown, evaluate
from driver.vehicle.sim_car import SimLink
from tests.test_drive_fixtures import FPS, H, W, decode_video, drive_assets  # noqa: F401 - fixture

LOOSE = {"camera_timeout_ms": 2000.0, "deadline_ms": 5000.0, "status_every_s": 60.0, "warmup": 0}


def run_loop(tmp_path, model, camera: str, record: bool = True, freeze_after: int = 0, policy=None, **overrides):
    """A DriveLoop over SimLink and ``camera``; returns (report, run path, loop)."""
    port = "" if camera.startswith("sim") else "unused: SimLink stands in for the MCU"
    config = DriveConfig(**{"model": str(model), "camera": camera, "port": port, **LOOSE, **overrides})
    policy = policy or load_policy(model)
    link = SimLink()
    link.open()
    source = open_camera(config.camera_config)
    source.open()
    grabber = LatestFrame(source).start()
    recorder = SessionRecorder(tmp_path / "rec" / "s.h5", H, W, False) if record else None
    loop = DriveLoop(config, policy, link, grabber, recorder)
    if freeze_after:
        def freezer():
            while loop.report.ticks < freeze_after:
                threading.Event().wait(0.01)
            grabber.freeze()
        threading.Thread(target=freezer, daemon=True).start()
    try:
        report = loop.run()
    finally:
        grabber.stop()
        source.close()
        path = recorder.close() if recorder else None
    return report, path, loop


def test_file_camera_to_the_end_records_what_the_model_saw(tmp_path, drive_assets):  # noqa: F811
    report, path, loop = run_loop(tmp_path, drive_assets["model"], f"file:{drive_assets['video']}",
                                  max_throttle=1.0, steer_slew_per_s=0.0, gap_frames=1000)
    assert (report.exit_code, report.reason) == (0, "end_of_stream")
    assert report.ticks == report.commands_sent == report.acks > 0 and report.lost_acks == 0
    assert report.estop_state == "FAILSAFE"
    decoded = decode_video(drive_assets["video"])
    with h5py.File(path) as f:
        g = f["segments/0"]
        seqs, frames = g["frame_seq"][()], g["left"][()]
        model_steer, cmd_steer, state = g["model_steer"][()], g["cmd_steer"][()], g["state"][()]
    assert np.all(np.diff(seqs) > 0) and len(seqs) == report.ticks
    fresh = load_policy(drive_assets["model"])
    for i, seq in enumerate(seqs):
        # the frame the model got is the training path's frame for the same image
        assert np.array_equal(frames[i], prepare_frame(decoded[seq - 1], H, W))
        action = fresh.act(frames[i])
        assert math.isclose(model_steer[i], action.steer, abs_tol=1e-3)
    np.testing.assert_allclose(cmd_steer, model_steer, atol=1e-3)  # no limits: sent = model output
    assert set(state.tolist()) == {6.0}  # SimLink: AUTO, the model drives
    # the session ingests as is, and the store gives back the same pixels
    out = tmp_path / "store.zarr"
    assert ingest(IngestConfig(sources=[str(path)], out=str(out))).ok
    store = Store(out)
    run = store.runs[0]
    assert np.array_equal(store.frames(run)[len(seqs) - 1], frames[-1])
    assert set(store.series(run, "controller").tolist()) == {1}
    assert store.labels(run).get("caffe") == 1

    # ... and replays as a camera: replay:STORE:RUN gives the stored frames back in order
    report2, path2, _ = run_loop(tmp_path / "again", drive_assets["model"], f"replay:{out}:{run}", gap_frames=1000)
    assert report2.reason == "end_of_stream"
    with h5py.File(path2) as f:
        again = f["segments/0/left"][()]
        seq2 = f["segments/0/frame_seq"][()]
    assert np.array_equal(again, frames[seq2 - 1])


def test_drive_runtime_onnx_sends_what_pytorch_would(tmp_path, drive_assets):  # noqa: F811
    """`driver drive --runtime onnx`: ONNX Runtime drives the loop and sends PyTorch's commands within tolerance."""
    model = drive_assets["model"]
    report, path, _ = run_loop(tmp_path, model, f"file:{drive_assets['video']}", runtime="onnx",
                               policy=load_policy(model, runtime="onnx", threads=1), max_throttle=1.0,
                               steer_slew_per_s=0.0, gap_frames=1000)
    assert (report.exit_code, report.reason) == (0, "end_of_stream") and report.commands_sent > 0
    with h5py.File(path) as f:
        frames, model_steer = f["segments/0/left"][()], f["segments/0/model_steer"][()]
    torch_policy = load_policy(model)
    steer = [torch_policy.act(frame).steer for frame in frames]
    np.testing.assert_allclose(model_steer, steer, atol=1e-3)


def test_frozen_camera_fires_its_check(tmp_path, drive_assets):  # noqa: F811
    report, _, _ = run_loop(tmp_path, drive_assets["model"], f"file:{drive_assets['still']}", record=False,
                            frozen_frames=5)
    assert (report.exit_code, report.reason) == (1, "camera_frozen")
    assert report.estop_state == "FAILSAFE"


def test_stale_camera_fires_its_check(tmp_path, drive_assets):  # noqa: F811
    report, _, _ = run_loop(tmp_path, drive_assets["model"], f"file:{drive_assets['video']}", record=False,
                            freeze_after=5, camera_timeout_ms=300.0)
    assert (report.exit_code, report.reason) == (1, "camera_stale")
    assert report.ticks >= 5 and report.estop_state == "FAILSAFE"


def test_nan_output_and_exceptions_end_in_estop(tmp_path, drive_assets):  # noqa: F811
    report, _, _ = run_loop(tmp_path, drive_assets["nan_model"], "sim", record=False, width=W, height=H)
    assert (report.exit_code, report.reason, report.commands_sent) == (1, "output_invalid", 0)

    class Broken:
        modes, stereo, cameras, height, width = (), False, ("left",), H, W

        def act(self, *a):
            raise RuntimeError("boom")

        def reset(self):
            pass

    report, _, loop = run_loop(tmp_path, drive_assets["model"], "sim", record=False, policy=Broken(), width=W,
                               height=H)
    assert (report.exit_code, report.reason) == (1, "exception") and "boom" in report.message
    assert loop.link.latest_state.mode == Mode.FAILSAFE


def test_sim_camera_car_follows_the_link(tmp_path, drive_assets):  # noqa: F811
    report = drive(DriveConfig(model=str(drive_assets["model"]), camera="sim:3", width=W, height=H, seconds=1.0,
                               record_dir="", **LOOSE))
    assert (report.exit_code, report.reason) == (0, "duration") and report.ticks > 0
    assert report.model_ticks == report.ticks and report.run_path is None
    sim = report.sim  # how well the car drove, scored as `driver sim drive` scores it
    assert sim["track_seed"] == 3 and sim["seconds"] > 0 and sim["interventions"] >= 0
    assert sim["autonomy_pct"] <= 100.0 and 0 <= sim["mean_abs_cte_m"] <= sim["max_abs_cte_m"]


def test_limits_slew_and_cap():
    lim = HostLimits(LimitsConfig(max_throttle=0.3, min_throttle=-0.5, steer_slew_per_s=2.0))
    assert lim.apply(1.0, 0.9, t=0.0) == (1.0, 0.3)  # first command: no slew history
    steer, thr = lim.apply(-1.0, -0.9, t=0.1)  # 0.1 s at 2/s: at most 0.2
    assert math.isclose(steer, 0.8) and thr == -0.5
    lim.reset()
    assert lim.apply(-1.0, 0.0, t=0.2)[0] == -1.0


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_throttle"):
        DriveConfig(model="m.pt", port="/dev/null", max_throttle=2.0)
    with pytest.raises(ValueError, match="port"):
        DriveConfig(model="m.pt", camera="0")
    with pytest.raises(ValueError, match="camera_timeout_ms"):
        DriveConfig(model="m.pt", camera="sim", camera_timeout_ms=0)
    with pytest.raises(ValueError, match="unknown drive options \\[.speed.\\]"):
        DriveConfig.from_dict({"model": "m.pt", "camera": "sim", "speed": 3})
    with pytest.raises(ValueError, match="fps"):
        CameraConfig("0", fps=0)


def test_every_check_is_in_the_table_and_fires():
    cfg = SafetyConfig()
    cases = {"signal": Health(signal="SIGTERM"), "duration": Health(time_up=True),
             "end_of_stream": Health(end_of_stream=True), "exception": Health(exception="x"),
             "link_error": Health(link_error="gone"), "acks_lost": Health(lost_acks=5),
             "camera_error": Health(camera_error="x"), "camera_stale": Health(no_frame=True),
             "camera_frozen": Health(identical_frames=15), "output_invalid": Health(output_bad="nan"),
             "loop_overrun": Health(overruns=10), "frame_gap": Health(frames_skipped=4),
             "mode_to_auto": Health(mode_to_auto=True), "mcu_failsafe": Health(mcu_failsafe="HOST_TIMEOUT"),
             "mcu_mode_unknown": Health(mcu_mode_unknown="mode 7"), "wheel_stale": Health(wheel_age_ms=101.0),
             "wheel_stuck": Health(wheel_stuck_ms=1500.0)}
    assert set(cases) == {c.name for c in CHECKS}
    for name, health in cases.items():
        assert [c.name for c in evaluate(health, cfg)] == [name]
    assert evaluate(Health(), cfg) == []
    assert {c.act for c in CHECKS} == set(Act)
    table = checks_table_markdown()
    assert all(f"`{c.name}`" in table for c in CHECKS)


def test_recorder_survives_a_torn_flush(tmp_path):
    rec = SessionRecorder(tmp_path / "r.h5", 8, 8, stereo=False, flush_s=100)
    for i in range(5):
        rec.add(np.full((8, 8, 3), i, np.uint8), None, steer=49, motor=49, state=1, timestamp=float(i),
                **dict.fromkeys(EXTRAS, 0))
    rec.flush()
    with h5py.File(tmp_path / "r.h5", "a") as f:  # a kill halfway through the next flush
        f["segments/0/left"].resize(7, axis=0)
    rec._file.close()
    assert truncate_to_committed(tmp_path / "r.h5") == 5
    assert inspect_run(tmp_path / "r.h5").n_frames == 5


def test_pulses_and_missing_camera():
    cal = Endpoints()
    assert (cal.us_to_norm(1000), cal.us_to_norm(1500), cal.us_to_norm(2000), cal.us_to_run(1500)) == (-1, 0, 1, 49)
    assert cal.norm_to_us(0.5) == 1750
    uneven = Endpoints(1100, 1480, 1880)  # the calibrated car: ends are 0 and 99, neutral 49
    assert (uneven.us_to_run(1100), uneven.us_to_run(1480), uneven.us_to_run(1880)) == (0, 49, 99)
    with pytest.raises(ValueError, match="min < neutral < max"):
        Endpoints(1500, 1400, 2000)
    assert Calibration().source == "assumed-default"
    cam = open_camera(CameraConfig("/dev/does-not-exist"))
    with pytest.raises(CameraError, match="does-not-exist"):
        cam.open()
    with pytest.raises(CameraError, match="nope"):
        open_camera(CameraConfig("file:/nope.avi")).open()
