"""``driver drive`` end to end against the fake MCU (vehicle/firmware host build) on a real pty.

The session runs as a real subprocess where signals matter (SIGTERM, SIGKILL) and for the main scenario;
other faults call ``drive()`` in-process against the same fake MCU. Timing margins are generous and
nothing asserts wall-clock speed.
"""

from __future__ import annotations

import os
import signal
import time

import h5py
import numpy as np
import pytest

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_format import inspect_run
from driver.policy import load_policy
from driver.vehicle.carlink import Mode, StateFlags
from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import drive
from tests.test_drive_fixtures import DriveProcess, H, W, drive_assets, wait_until  # noqa: F401 - fixture
from tests.test_fake_mcu import AUTO, MANUAL, RC_NEUTRAL, FakeMcu, expected_us, host_mcu_bin  # noqa: F401 - fixture

LOOSE = {"camera_timeout_ms": 2000.0, "deadline_ms": 5000.0, "status_every_s": 1.0, "warmup": 2,
         "ack_timeout_ms": 500.0}
START_S = 60.0  # python + torch import on a loaded machine


@pytest.fixture
def mcu(host_mcu_bin):  # noqa: F811
    fake = FakeMcu(host_mcu_bin)
    yield fake
    fake.close()


def sending(mcu: FakeMcu, start: int = 0) -> bool:
    """The MCU has logged an ack of a host CMD since log line ``start``."""
    return any(line.get("ack", 0) > 0 for line in mcu.lines[start:])


@pytest.mark.slow
def test_drive_end_to_end(host_mcu_bin, drive_assets, tmp_path):  # noqa: F811
    # a generous watchdog: on a loaded CI machine one slow tick must not latch FAILSAFE mid-handover
    # (the watchdog itself is tested in test_fake_mcu.py and by the SIGKILL test below)
    mcu = FakeMcu(host_mcu_bin, watchdog_ms=3000)  # a 1.08 s send was seen at load 13
    proc = DriveProcess(port=mcu.port, model=str(drive_assets["model"]), camera=f"file:{drive_assets['long_video']}",
                        record_dir=str(tmp_path / "runs"), seconds=8.0, max_throttle=1.0, steer_slew_per_s=0.0,
                        gap_frames=1000, **LOOSE)
    try:
        wait_until(lambda: sending(mcu), START_S, "CMDs from the drive process")
        start = len(mcu.lines)
        mcu.rc(*RC_NEUTRAL, AUTO)  # the human hands over
        mcu.wait_log(lambda s: s["mode"] == Mode.AUTO, start=start)
        # line noise: never accepted, the loop keeps going
        mcu.write_raw(b"\x00" + bytes(range(1, 200)) + b"\x00\x05\x01\x00")
        mcu.wait_log(lambda s: s["rx_bad"] > 0, start=start)
        override = len(mcu.lines)
        mcu.rc(1500, 1700, AUTO)  # HG-DAgger: the human corrects the model
        mcu.wait_log(lambda s: s["flags"] & StateFlags.OVERRIDE, start=override)
        time.sleep(1.5)  # some ticks with the human correcting (the MCU logs changes only)
        mcu.rc(*RC_NEUTRAL, AUTO)
        assert proc.wait(60) == 0, proc.log_text()[-3000:]
    finally:
        proc.kill()
        mcu.close()
    report = proc.report
    assert report["reason"] == "duration" and report["estop_state"] == "FAILSAFE"
    assert report["ticks"] == report["commands_sent"] > 0
    assert report["ticks"] + report["frames_skipped"] <= report["frames_grabbed"]
    assert report["acks"] >= report["ticks"] - 10 and report["model_ticks"] > 0
    assert "capture_to_send" in proc.log_text() and "ms p50/p99" in proc.log_text()
    # every AUTO output the MCU produced (not overridden) is one of the model's commands on the recorded frames
    path = report["run_path"]
    with h5py.File(path) as f:
        g = f["segments/0"]
        frames, state, steer, motor = g["left"][()], g["state"][()], g["steer"][()], g["motor"][()]
        rc_motor, controller = g["rc_motor"][()], g["controller"][()]
    policy = load_policy(drive_assets["model"])
    actions = [policy.act(f) for f in frames]
    wanted = {(expected_us(a.steer_permille), expected_us(a.motor_permille)) for a in actions}
    auto = [(s["out_steer_us"], s["out_thr_us"]) for s in mcu.lines[start:]
            if s["mode"] == Mode.AUTO and not s["flags"] & StateFlags.OVERRIDE]
    assert auto and set(auto) <= wanted
    # the recording: model-driven frames (6), the human's correction (5) labelled with the human's throttle
    assert {1.0, 5.0, 6.0} <= set(state.tolist())
    corrected = state == 5
    np.testing.assert_allclose(motor[corrected], rc_motor[corrected], atol=0.01)
    assert np.all(rc_motor[corrected] > 60) and np.all(controller[corrected] == 0)
    assert np.all(controller[state == 6] == 1) and np.all((steer >= 0) & (steer <= 99))
    out = tmp_path / "store.zarr"
    result = ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(out)))
    assert result.ok, result.failures


def test_sigterm_is_a_clean_stop_with_estop(mcu, drive_assets, tmp_path):  # noqa: F811
    proc = DriveProcess(port=mcu.port, model=str(drive_assets["model"]), camera=f"file:{drive_assets['long_video']}",
                        record_dir=str(tmp_path), **LOOSE)
    try:
        wait_until(lambda: sending(mcu), START_S, "CMDs from the drive process")
        mcu.rc(*RC_NEUTRAL, AUTO)
        mcu.wait_log(lambda s: s["mode"] == Mode.AUTO)
        wait_until(lambda: len(list(tmp_path.glob("*.h5"))) == 1, 10.0, "the session file")
        start = len(mcu.lines)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.log_text()[-3000:]
    finally:
        proc.kill()
    assert (proc.report["reason"], proc.report["message"]) == ("signal", "SIGTERM")
    line = mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE, start=start)
    assert line["out_thr_us"] == 1500 and not line["flags"] & StateFlags.HOST_TIMEOUT  # ESTOP, not the watchdog
    with h5py.File(proc.report["run_path"]) as f:
        assert f.attrs["complete"] == 1
    assert inspect_run(proc.report["run_path"]).n_frames == proc.report["ticks"]


def test_sigkill_leaves_the_mcu_watchdog_and_a_readable_run(mcu, drive_assets, tmp_path):  # noqa: F811
    proc = DriveProcess(port=mcu.port, model=str(drive_assets["model"]), camera=f"file:{drive_assets['long_video']}",
                        record_dir=str(tmp_path), **LOOSE)
    try:
        wait_until(lambda: sending(mcu), START_S, "CMDs from the drive process")
        mcu.rc(*RC_NEUTRAL, AUTO)
        mcu.wait_log(lambda s: s["mode"] == Mode.AUTO)
        path = None

        def committed() -> bool:
            nonlocal path
            files = list(tmp_path.glob("*.h5"))
            if not files:
                return False
            path = files[0]
            try:
                with h5py.File(path, "r", locking=False) as f:
                    return int(f.attrs["frames_committed"]) > 0
            except OSError:
                return False

        wait_until(committed, 20.0, "a flushed second of recording")
        start = len(mcu.lines)
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    line = mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE, start=start)
    assert line["out_thr_us"] == 1500 and line["flags"] & StateFlags.HOST_TIMEOUT
    assert inspect_run(path).n_frames > 0  # what was flushed is a valid run


def in_process(mcu, model, camera, **overrides):
    config = DriveConfig(**{"port": mcu.port, "model": str(model), "camera": camera, "record_dir": "", **LOOSE,
                            "warmup": 0, **overrides})
    return drive(config)


def test_nan_model_and_frozen_camera_end_in_estop(mcu, drive_assets):  # noqa: F811
    report = in_process(mcu, drive_assets["nan_model"], f"file:{drive_assets['video']}")
    assert (report.exit_code, report.reason, report.commands_sent) == (1, "output_invalid", 0)
    assert report.estop_state == "FAILSAFE"
    mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE)
    mcu.rc(*RC_NEUTRAL, AUTO)  # the human re-arms: through AUTO and back to MANUAL
    time.sleep(0.2)
    mcu.rc(*RC_NEUTRAL, MANUAL)
    mcu.wait_log(lambda s: s["mode"] == Mode.MANUAL)
    start = len(mcu.lines)
    report = in_process(mcu, drive_assets["model"], f"file:{drive_assets['still']}", frozen_frames=5)
    assert (report.exit_code, report.reason) == (1, "camera_frozen") and report.commands_sent >= 5
    mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE, start=start)


def test_mcu_vanishing_and_coming_back(mcu, drive_assets, host_mcu_bin):  # noqa: F811
    # the MCU stops answering (SIGSTOP): acks are lost → ESTOP queued on the line → exit 1
    import threading

    def stop_later():
        wait_until(lambda: sending(mcu), 30.0, "CMDs")
        mcu.proc.send_signal(signal.SIGSTOP)

    threading.Thread(target=stop_later, daemon=True).start()
    report = in_process(mcu, drive_assets["model"], f"file:{drive_assets['long_video']}", ack_timeout_ms=100.0)
    assert (report.exit_code, report.reason) == (1, "acks_lost")
    start = len(mcu.lines)
    mcu.proc.send_signal(signal.SIGCONT)  # it comes back and reads the ESTOP the host left on the line
    mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE, start=start)
    # a new session against the same MCU works: reconnecting is restarting `driver drive`
    report = in_process(mcu, drive_assets["model"], f"file:{drive_assets['video']}", seconds=1.0)
    assert (report.exit_code, report.reason) == (0, "duration") and report.acks > 0
    # the MCU process dies (port hangup): a link error, a clear exit
    time.sleep(0.3)  # let the last session's final STATE lines arrive
    start = len(mcu.lines)
    threading.Thread(target=lambda: (wait_until(lambda: sending(mcu, start), 30.0), mcu.kill()), daemon=True).start()
    report = in_process(mcu, drive_assets["model"], f"file:{drive_assets['long_video']}")
    assert report.exit_code == 1 and report.reason in ("link_error", "acks_lost"), report
