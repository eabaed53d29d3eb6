"""One watchdog story, against the firmware logic on a real pty: what the host does while it waits, and what
it does when the MCU gives up on its own. Each scenario ends with its outcome named.

Timing: the MCU's watchdog and the faults are sized so that only the fault itself can decide the outcome on
a loaded machine (a stall or a run of lost frames many times the watchdog; keepalives with hundreds of ms to
spare); nothing asserts how fast anything ran.
"""

from __future__ import annotations

import threading
import time

import pytest

from driver.policy import load_policy
from driver.vehicle.camera import CameraConfig, CameraSource, LatestFrame
from driver.vehicle.cameras import VideoFileCamera
from driver.vehicle.carlink import Mode, State, StateFlags, encode
from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import DriveLoop, drive
from driver.vehicle.fake_mcu import FakeMcu
from driver.vehicle.link import CarLink
from tests.test_drive_fixtures import drive_assets, wait_until  # noqa: F401 - fixture
from tests.test_fake_mcu import AUTO, RC_NEUTRAL, host_mcu_bin  # noqa: F401 - fixture

LOOSE = {"deadline_ms": 5000.0, "status_every_s": 60.0, "warmup": 0, "ack_timeout_ms": 500.0, "gap_frames": 1000,
         "record_dir": "", "max_lost_acks": 1000}


def hand_over_when_driving(mcu: FakeMcu) -> threading.Thread:
    """The human flips the switch to AUTO once the host's CMDs are being acked."""
    def run() -> None:
        wait_until(lambda: any(line.get("ack", 0) > 0 for line in mcu.lines), 60.0, "CMDs from the drive loop")
        mcu.rc(*RC_NEUTRAL, AUTO)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class StallingCamera(CameraSource):
    """A video file whose camera stops delivering for ``stall_s`` once, after ``after`` frames (a USB hiccup)."""

    def __init__(self, path, config: CameraConfig, after: int, stall_s: float, when=lambda: True) -> None:
        self.inner, self.after, self.stall_s, self.when = VideoFileCamera(str(path), config), after, stall_s, when
        self.name, self.frames, self.stalled = "stalling", 0, False

    def open(self) -> None:
        self.inner.open()

    def read(self):
        self.frames += 1
        if not self.stalled and self.frames > self.after and self.when():
            self.stalled = True
            time.sleep(self.stall_s)
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


class StallingPolicy:
    """The real policy, whose inference hangs once for ``stall_s`` when ``when()`` first holds (a GC pause, a
    page fault storm, another process on the core)."""

    def __init__(self, policy, stall_s: float, when) -> None:
        self.policy, self.stall_s, self.when, self.stalled = policy, stall_s, when, False

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def act(self, *args, **kwargs):
        if not self.stalled and self.when():
            self.stalled = True
            time.sleep(self.stall_s)
        return self.policy.act(*args, **kwargs)


def run_loop(mcu: FakeMcu, config: DriveConfig, source: CameraSource, policy) -> tuple:
    link = CarLink(mcu.port, estop_on_close=False)
    link.open()
    source.open()
    grabber = LatestFrame(source).start()
    try:
        return DriveLoop(config, policy, link, grabber).run(), link
    finally:
        grabber.stop()
        source.close()
        link.close()


def failsafe_after_auto(mcu: FakeMcu) -> dict:
    """The MCU's log line where it went FAILSAFE by its watchdog after having been in AUTO."""
    auto_from = next(i for i, line in enumerate(mcu.lines) if line["mode"] == Mode.AUTO)
    return mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE and s["flags"] & StateFlags.HOST_TIMEOUT,
                        start=auto_from)


def in_auto(mcu: FakeMcu, ticks_after: int = 10):
    """A condition: the MCU has been in AUTO for a few log lines' worth of driving."""
    seen = {"n": 0}

    def check() -> bool:
        if any(line["mode"] == Mode.AUTO for line in mcu.lines):
            seen["n"] += 1
        return seen["n"] > ticks_after
    return check


def test_camera_gap_longer_than_the_watchdog_is_held_by_keepalives(host_mcu_bin, drive_assets):  # noqa: F811
    """Outcome: keepalive CMDs (steering held, neutral throttle) hold the MCU in AUTO through the gap; the
    session goes on and ends clean. The issue's 200 ms gap against a 150 ms watchdog, scaled ×4 in time."""
    mcu = FakeMcu(host_mcu_bin, watchdog_ms=600)
    config = DriveConfig(port=mcu.port, model=str(drive_assets["model"]), camera="file:x", seconds=5.0,
                         camera_timeout_ms=2000.0, **LOOSE)
    source = StallingCamera(drive_assets["long_video"], config.camera_config, after=10, stall_s=0.8,
                            when=in_auto(mcu))
    hand_over_when_driving(mcu)
    try:
        report, link = run_loop(mcu, config, source, load_policy(drive_assets["model"]))
    finally:
        mcu.close()
    assert source.stalled
    assert (report.exit_code, report.reason) == (0, "duration"), report
    assert report.keepalives >= 2  # a third of the 600 ms watchdog apart, through an 800 ms gap
    assert report.model_ticks > 0
    auto_from = next(i for i, line in enumerate(mcu.lines) if line["mode"] == Mode.AUTO)
    end = next(i for i, line in enumerate(mcu.lines) if i > auto_from and line["mode"] == Mode.FAILSAFE)
    assert all(line["mode"] == Mode.AUTO and not line["flags"] & StateFlags.HOST_TIMEOUT
               for line in mcu.lines[auto_from:end])
    assert mcu.lines[end]["flags"] == 0  # FAILSAFE only from the host's closing ESTOP, not from a timeout


def test_inference_stall_past_the_watchdog_is_named_mcu_failsafe(host_mcu_bin, drive_assets):  # noqa: F811
    """Outcome: the loop cannot send while it is stuck, the MCU's watchdog latches FAILSAFE (neutral throttle),
    and the host ends the session as a fault saying why: ``mcu_failsafe``, HOST_TIMEOUT, exit 1."""
    mcu = FakeMcu(host_mcu_bin)  # the default 150 ms watchdog; the stall is 4x that
    config = DriveConfig(port=mcu.port, model=str(drive_assets["model"]), camera=f"file:{drive_assets['long_video']}",
                         seconds=30.0, camera_timeout_ms=2000.0, **LOOSE)
    policy = StallingPolicy(load_policy(drive_assets["model"]), 0.6, in_auto(mcu))
    source = VideoFileCamera(str(drive_assets["long_video"]), config.camera_config)
    hand_over_when_driving(mcu)
    try:
        report, _ = run_loop(mcu, config, source, policy)
        line = failsafe_after_auto(mcu)
    finally:
        mcu.close()
    assert (report.exit_code, report.reason) == (1, "mcu_failsafe"), report
    assert "HOST_TIMEOUT" in report.message and "150 ms" in report.message
    assert line["out_thr_us"] == 1500 and report.estop_state == "FAILSAFE"


def test_thirty_percent_corrupted_frames_end_as_mcu_failsafe(host_mcu_bin, drive_assets):  # noqa: F811
    """30% of the host's frames get a bit flipped on the way (seeded: the same frames every run; seed 37 has
    runs of 4 lost CMDs from frame 99 on, 133 ms > the watchdog at 30 fps). Outcome: lost CMDs are counted
    on both ends, and when the MCU latches FAILSAFE the host names it: ``mcu_failsafe``, exit 1."""
    mcu = FakeMcu(host_mcu_bin, corrupt_rx=30, seed=37)
    hand_over_when_driving(mcu)
    try:
        report = drive(DriveConfig(port=mcu.port, model=str(drive_assets["model"]), seconds=20.0,
                                   camera=f"file:{drive_assets['long_video']}", loop_video=True,
                                   camera_timeout_ms=2000.0, **LOOSE))
        line = failsafe_after_auto(mcu)
    finally:
        mcu.close()
    assert (report.exit_code, report.reason) == (1, "mcu_failsafe"), report
    assert "FAILSAFE from AUTO" in report.message  # HOST_TIMEOUT, or its flag already cleared by a later CMD
    assert report.lost_acks > 0 and line["rx_bad"] > 0 and report.model_ticks > 0


def test_unknown_mcu_mode_is_a_fault(host_mcu_bin, drive_assets):  # noqa: F811
    """A STATE with a valid CRC and mode 7 (a foreign firmware): ``mcu_mode_unknown``, exit 1, never MANUAL."""
    mcu = FakeMcu(host_mcu_bin)
    forged = encode(State(200, 0, 1, 1500, 1500, 1000, 1500, 1500, 7, StateFlags.NONE, 0))

    def forge() -> None:
        wait_until(lambda: any(line.get("ack", 0) > 0 for line in mcu.lines), 60.0, "CMDs from the drive loop")
        mcu.control("tx 00" + forged.hex())

    threading.Thread(target=forge, daemon=True).start()
    try:
        report = drive(DriveConfig(port=mcu.port, model=str(drive_assets["model"]), seconds=20.0,
                                   camera=f"file:{drive_assets['long_video']}", camera_timeout_ms=2000.0, **LOOSE))
    finally:
        mcu.close()
    assert (report.exit_code, report.reason) == (1, "mcu_mode_unknown"), report
    assert "mode 7" in report.message


def test_rc_loss_and_shadow_handover_are_never_a_clean_session(host_mcu_bin, drive_assets):  # noqa: F811
    """The receiver dies while the human drives (MANUAL): FAILSAFE with RC_LOST → ``mcu_failsafe``. And a
    --shadow session whose switch goes to AUTO: the MCU treats it as a dead host; the message says why."""
    for shadow, fault in ((False, "rc off"), (True, f"rc {RC_NEUTRAL[0]} {RC_NEUTRAL[1]} {AUTO}")):
        mcu = FakeMcu(host_mcu_bin)

        def act(fault=fault, mcu=mcu) -> None:
            wait_until(lambda: any(line.get("ack", 0) > 0 for line in mcu.lines), 60.0, "CMDs from the drive loop")
            mcu.control(fault)

        threading.Thread(target=act, daemon=True).start()
        try:
            report = drive(DriveConfig(port=mcu.port, model=str(drive_assets["model"]), seconds=20.0, shadow=shadow,
                                       camera=f"file:{drive_assets['long_video']}", camera_timeout_ms=2000.0, **LOOSE))
        finally:
            mcu.close()
        assert (report.exit_code, report.reason) == (1, "mcu_failsafe"), report
        assert ("--shadow never asks to drive" in report.message) if shadow else ("RC_LOST" in report.message)


@pytest.mark.parametrize("model", ["saturated_model", "nan_model"])
def test_raw_output_is_checked_before_any_clamp(model, drive_assets):  # noqa: F811
    """A model emitting 1e30 used to drive at full lock for a whole session: the raw output is checked first."""
    report = drive(DriveConfig(model=str(drive_assets[model]), camera="sim", width=64, height=48, seconds=5.0,
                               **LOOSE))
    assert (report.exit_code, report.reason, report.commands_sent) == (1, "output_invalid", 0), report
    assert ("beyond ±1.25" in report.message) if model == "saturated_model" else ("not finite" in report.message)
