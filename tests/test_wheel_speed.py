"""carlink v1.2 wheel speed: ODOM frames from the firmware's encoder count, the host's m/s estimate, and a
speed-input model driving on it (the sim's in-process MCU and the fake MCU on a real pty), with the two
checks that keep a broken encoder from misreporting: ``wheel_stale`` and ``wheel_stuck``."""

import threading
import time

import h5py
import numpy as np
import pytest
import torch

from driver.errors import SpeedRequired
from driver.models import InputSpec, create_model
from driver.policy import Policy
from driver.training.checkpoint import model_payload, preprocess_info
from driver.vehicle import link as link_module
from driver.vehicle.carlink import MESSAGES, CalFlags, FrameDecoder, MsgType, Odom, encode
from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import DriveLoop, drive
from driver.vehicle.fake_mcu import AUTO_US, MANUAL_US, FakeMcu
from driver.vehicle.link import CarLink
from driver.vehicle.sim_car import SIM_M_PER_TICK, SimLink
from driver.vehicle.wheel_speed import WheelSpeed
from tests.test_fake_mcu import host_mcu_bin  # noqa: F401 - the session fixture that builds host_mcu

SPEC = InputSpec(48, 64, cameras=1, stack=1, n_modes=0, horizon=1)
LOOSE = {"camera_timeout_ms": 2000.0, "deadline_ms": 5000.0, "status_every_s": 60.0, "warmup": 0,
         "width": 64, "height": 48}


def speed_policy(motor: float = 0.4) -> tuple[Policy, list]:
    """A real speed-input GRU whose head ignores its input and asks (steer 0, ``motor``); it records the
    speed every act() was given."""
    torch.manual_seed(0)
    model = create_model("squeezenet_gru", SPEC, hidden_size=8, speed_input=True)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, motor]))
    ckpt = {**model_payload(model), "config": {"channels_last": False},
            "preprocess": preprocess_info(SPEC, ("left",), ())}
    policy = Policy(model.eval(), ckpt)
    seen: list = []
    act = policy.act

    def recording_act(frame, right=None, mode=None, speed=None):
        seen.append(speed)
        return act(frame, right, mode, speed=speed)

    policy.act = recording_act
    return policy, seen


def status(mcu: FakeMcu) -> dict[str, int]:
    """A fresh status line from the fake MCU."""
    start = len(mcu.lines)
    mcu.control("status")
    return mcu.wait_log(lambda s: True, start=start)


def hand_over_when_driven(mcu: FakeMcu) -> threading.Thread:
    """The human flips the switch to AUTO once the host's CMDs arrive (a switch in AUTO before that is a host
    timeout, which latches FAILSAFE)."""

    def run() -> None:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and status(mcu)["ack"] == 0:
            time.sleep(0.05)
        mcu.rc(1500, 1500, AUTO_US)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def odom(t_ms: int, ticks: int, tick_ms: int) -> Odom:
    return Odom(t_ms & 0xFFFFFFFF, ticks & 0xFFFFFFFF, tick_ms & 0xFFFFFFFF)


def test_odom_frame_round_trip_and_the_cal_flag():
    msg = Odom(123456, 0xFFFFFFFF, 123400)
    assert FrameDecoder().feed(b"\x00" + encode(msg)) == [msg]
    assert MESSAGES[MsgType.ODOM] is Odom and Odom.FORMAT.size == 12
    assert len(encode(msg)) <= 18  # 1 type + 12 payload + 2 CRC + COBS overhead + delimiter
    old_host = FrameDecoder(accept=(MsgType.STATE, MsgType.INFO, MsgType.CAL))  # a v1.1 host's decoder
    assert old_host.feed(b"\x00" + encode(msg)) == [] and old_host.drops.unknown_type == 1
    assert CalFlags.ENCODER == 0x02 and CalFlags(0x03) == CalFlags.STORED | CalFlags.ENCODER


def test_speed_from_edges_on_the_mcu_clock():
    wheel = WheelSpeed(0.01)  # 100 ticks a metre
    assert wheel.observe(odom(1000, 50, 990)) == 0.0  # the first ODOM is the baseline
    # 1 m/s = 100 ticks/s: one tick every 10 ms, ODOMs every 20 ms
    for k in range(1, 20):
        t = 1000 + 20 * k
        wheel.observe(odom(t + 3, 50 + 2 * k, t))
    assert wheel.speed == pytest.approx(1.0, rel=1e-9) and wheel.ticks_total == 38
    # no edge for 50 ms: at most one tick in that time (0.2 m/s), then nothing after STOP_MS
    wheel.observe(odom(1380 + 50, 88, 1380))
    assert wheel.speed == pytest.approx(0.01 / 0.05)
    wheel.observe(odom(1380 + 501, 88, 1380))
    assert wheel.speed == 0.0
    # a slow wheel, one tick every 200 ms: read from the two newest edges (0.05 m/s), not zero
    slow = WheelSpeed(0.01)
    slow.observe(odom(0, 0, 0))
    for k in range(1, 6):
        slow.observe(odom(200 * k + 10, k, 200 * k))
    assert slow.speed == pytest.approx(0.05)
    # the MCU's counters wrap at 2^32
    wrap = WheelSpeed(0.02)
    wrap.observe(odom(2**32 - 30, 2**32 - 5, 2**32 - 40))
    for k in range(1, 10):
        wrap.observe(odom(2**32 - 30 + 20 * k, 2**32 - 5 + 4 * k, 2**32 - 30 + 20 * k))
    assert wrap.speed == pytest.approx(4 * 0.02 / 0.020) and wrap.ticks_total == 36
    with pytest.raises(ValueError, match=r"wheel_m_per_tick=0 must be in \(0, 10\]"):
        WheelSpeed(0)


def test_v12_firmware_sends_odom_only_to_a_v12_host_and_counts_real_time(host_mcu_bin, monkeypatch):  # noqa: F811
    with FakeMcu(host_mcu_bin, wheel=250.0) as mcu, CarLink(mcu.port) as link:
        assert link.has_encoder
        first = link.latest_odom or (time.sleep(0.1), link.latest_odom)[1]
        time.sleep(0.6)
        last = link.latest_odom
        # 250 ticks/s on the MCU's own clock (host scheduling does not enter the count)
        rate = (last.ticks - first.ticks) / ((last.tick_ms - first.tick_ms) / 1000.0)
        assert rate == pytest.approx(250.0, rel=0.1)
        assert link.counters.rx_drops == 0 and link.latest_odom_age_s < 0.5
        mcu.wheel(0.0)
        time.sleep(0.3)
        stopped = link.latest_odom
        time.sleep(0.1)
        assert link.latest_odom.ticks == stopped.ticks and link.latest_odom.t_ms > stopped.t_ms
    # a v1.1 host never asks (CAL_REQ minor 1): no ODOM, nothing dropped, no encoder
    monkeypatch.setattr(link_module, "PROTO_MINOR", 1)
    with FakeMcu(host_mcu_bin, wheel=250.0) as mcu, CarLink(mcu.port) as link:
        time.sleep(0.2)
        assert not link.has_encoder and link.latest_odom is None and link.counters.rx_drops == 0
    monkeypatch.undo()
    # v1.1 firmware, and v1.2 firmware built without an encoder: no encoder either
    for kwargs in ({"wheel": 250.0, "minor": 1}, {}):
        with FakeMcu(host_mcu_bin, **kwargs) as mcu, CarLink(mcu.port) as link:
            time.sleep(0.2)
            assert not link.has_encoder and link.latest_odom is None and link.counters.rx_drops == 0


def test_a_speed_model_drives_the_sim_car_on_its_wheel_speed(tmp_path):
    policy, seen = speed_policy(motor=0.4)
    report = drive(DriveConfig(model="speed.pt", camera="sim:2", seconds=2.0, record_dir=str(tmp_path), **LOOSE),
                   policy=policy)
    assert (report.exit_code, report.reason) == (0, "duration") and report.ticks > 10
    assert seen[0] == 0.0 and all(s is not None and s >= 0 for s in seen)
    with h5py.File(report.run_path) as f:
        g = f["segments/0"]
        speed, ticks = g["encoder"][:], g["encoder_ticks"][:]
        assert f.attrs["wheel_m_per_tick"] == SIM_M_PER_TICK
    assert len(speed) == report.ticks and np.all(np.diff(ticks) >= 0) and ticks[-1] > 0
    assert speed.max() > 0.2  # the car got going on throttle 0.4, and the model was told
    assert seen[-1] == pytest.approx(float(speed[-1]))


def run_sim_loop(config: DriveConfig, policy, link: SimLink):
    """DriveLoop over the sim camera and ``link`` with the sim car's wheel attached; (report, camera)."""
    from driver.vehicle.camera import LatestFrame, open_camera
    from driver.vehicle.sim_car import actuator_from_link

    link.open()
    source = open_camera(config.camera_config, actuator=actuator_from_link(link))
    source.open()
    link.attach_wheel(lambda: source.wheel_m, lambda: source.sim_s)
    grabber = LatestFrame(source).start()
    try:
        report = DriveLoop(config, policy, link, grabber).run()
    finally:
        grabber.stop()
        source.close()
    return report, source


def test_the_encoder_estimate_follows_the_sim_car():
    """DriveLoop over the sim camera and SimLink: the wheel speed the model gets is the car's speed, late by
    about the estimate's window."""
    policy, seen = speed_policy(motor=0.3)
    config = DriveConfig(model="speed.pt", camera="sim:1", seconds=3.0, record_dir="", **LOOSE)
    report, source = run_sim_loop(config, policy, SimLink())
    assert report.reason == "duration"
    car_speed = np.array([p[3] for p in source.pose_log])
    assert car_speed[-1] > 0.5 and seen[-1] == pytest.approx(car_speed[-1], rel=0.15)


def test_a_speed_model_is_refused_when_the_speed_cannot_be_read(host_mcu_bin, tmp_path):  # noqa: F811
    policy, _ = speed_policy()
    # metres per tick unknown: refused before the port is opened (this port does not exist)
    with pytest.raises(SpeedRequired, match="wheel_m_per_tick is not set"):
        drive(DriveConfig(model="speed.pt", port="/dev/does-not-exist", camera="sim", seconds=1.0, record_dir="",
                          **LOOSE), policy=policy)
    # an MCU without an encoder: refused after the handshake, naming the port, nothing sent
    with FakeMcu(host_mcu_bin) as mcu:
        with pytest.raises(SpeedRequired, match=f"the MCU on {mcu.port} reports no wheel encoder"):
            drive(DriveConfig(model="speed.pt", port=mcu.port, camera="sim", seconds=1.0, record_dir="",
                              wheel_m_per_tick=0.01, **LOOSE), policy=policy)
        assert status(mcu)["ack"] == 0  # no CMD ever reached the MCU


def test_an_encoder_that_counts_nothing_under_throttle_ends_in_neutral(host_mcu_bin, tmp_path):  # noqa: F811
    """The fake's encoder stands still while the model drives (an unplugged encoder): ``wheel_stuck``."""
    policy, seen = speed_policy(motor=0.5)
    with FakeMcu(host_mcu_bin, rc=(1500, 1500, MANUAL_US), watchdog_ms=3000, wheel=0.0) as mcu:
        hand_over = hand_over_when_driven(mcu)
        report = drive(DriveConfig(model="speed.pt", port=mcu.port, camera="sim", seconds=20.0,
                                   record_dir=str(tmp_path), wheel_m_per_tick=0.01, wheel_stuck_ms=400.0,
                                   **LOOSE), policy=policy)
        hand_over.join()
        assert (report.exit_code, report.reason) == (1, "wheel_stuck") and "no encoder tick" in report.message
        assert report.estop_state == "FAILSAFE"
        mcu.wait_log(lambda s: s["mode"] == 2 and s["out_thr_us"] == 1500)  # neutral throttle on the MCU
    assert set(seen) == {0.0}
    with h5py.File(report.run_path) as f:
        assert np.all(f["segments/0/encoder"][:] == 0.0)


class QuietEncoderLink(SimLink):
    """The in-process MCU whose ODOMs stop after ``after`` reads (a v1.2 MCU whose encoder frames stop)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.reads = after, 0

    @property
    def latest_odom_age_s(self) -> float:
        self.reads += 1
        return 0.0 if self.reads <= self.after else 1.0


def test_odom_frames_that_stop_end_the_session():
    policy, _ = speed_policy()
    config = DriveConfig(model="speed.pt", camera="sim:0", seconds=20.0, record_dir="", **LOOSE)
    link = QuietEncoderLink(after=5)
    report, _ = run_sim_loop(config, policy, link)
    assert (report.exit_code, report.reason) == (1, "wheel_stale") and report.ticks == 5
    assert report.message == "no ODOM for 1000 ms" and link.latest_state.mode.name == "FAILSAFE"


def test_link_check_counts_the_encoder(host_mcu_bin):  # noqa: F811
    from driver.vehicle.link_check import LinkCheckConfig, check_link, format_link_report

    with FakeMcu(host_mcu_bin, wheel=200.0) as mcu:
        report = check_link(LinkCheckConfig(port=mcu.port, seconds=0.6, wheel_m_per_tick=0.01))
    assert report.ok and report.encoder and report.wheel_seconds > 0.3
    assert report.wheel_ticks == pytest.approx(200.0 * report.wheel_seconds, rel=0.2)
    assert report.wheel_top_speed == pytest.approx(2.0, rel=0.2)
    assert f"wheel encoder: {report.wheel_ticks} ticks in" in format_link_report(report)
    with FakeMcu(host_mcu_bin) as mcu:
        report = check_link(LinkCheckConfig(port=mcu.port, seconds=0.2))
    assert not report.encoder and "wheel encoder: none reported" in format_link_report(report)
