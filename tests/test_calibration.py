"""Calibration end to end: the host's port of the MCU's pulse map against the C core, the CAL exchange
(carlink v1.1) with v1.0 on either side, and a calibrated car recorded as 0/49/99 in run units."""

from __future__ import annotations

import ctypes
import os
import random
import termios
import threading
import time
import tty

import h5py
import numpy as np
import pytest

from driver.vehicle.calibration import Calibration, Endpoints
from driver.vehicle.carlink import (
    Cal,
    CalFlags,
    CalRequest,
    Cmd,
    CmdFlags,
    FrameDecoder,
    Hello,
    Info,
    MsgType,
    State,
    crc16,
    encode,
)
from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import drive
from driver.vehicle.fake_mcu import FIRMWARE_DIR, FakeMcu
from driver.vehicle.link import CarLink
from tests.test_drive_fixtures import drive_assets, wait_until  # noqa: F401 - fixture
from tests.test_fake_mcu import AUTO, MANUAL, host_mcu_bin  # noqa: F401 - fixture

STEER_CAL = (1100, 1480, 1880)  # the uneven endpoints
THR_CAL = (1050, 1520, 1900)


class _Endpoints(ctypes.Structure):
    _fields_ = [("min_us", ctypes.c_uint16), ("neutral_us", ctypes.c_uint16), ("max_us", ctypes.c_uint16)]


@pytest.fixture(scope="module")
def c_core(tmp_path_factory):
    """vehicle/firmware/carlink_proto.c as a shared library (make lib)."""
    import shutil
    import subprocess

    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed to build the protocol core")
    build = tmp_path_factory.mktemp("libcarlink")
    subprocess.run(["make", "-s", "-C", str(FIRMWARE_DIR), "lib", f"BUILD={build}"], check=True)
    lib = ctypes.CDLL(str(build / "libcarlink.so"))
    lib.proto_permille_to_us.argtypes = [ctypes.POINTER(_Endpoints), ctypes.c_int16]
    lib.proto_permille_to_us.restype = ctypes.c_uint16
    lib.carlink_crc16.argtypes = [ctypes.c_char_p, ctypes.c_uint8]
    lib.carlink_crc16.restype = ctypes.c_uint16
    return lib


def test_python_map_is_the_c_map_for_every_value(c_core):
    rng = random.Random(14)
    sets = [(1000, 1500, 2000), STEER_CAL, THR_CAL, (800, 801, 2200), (800, 2199, 2200), (1499, 1500, 1501)]
    for _ in range(40):
        lo = rng.randrange(800, 2198)
        mid = rng.randrange(lo + 1, 2199)
        sets.append((lo, mid, rng.randrange(mid + 1, 2201)))
    values = list(range(-1000, 1001)) + [-32768, -1001, 1001, 32767]
    for lo, mid, hi in sets:
        ends = Endpoints(lo, mid, hi)
        c_ends = _Endpoints(lo, mid, hi)
        got = [ends.permille_to_us(v) for v in values]
        want = [c_core.proto_permille_to_us(ctypes.byref(c_ends), v) for v in values]
        assert got == want, (lo, mid, hi)
        # the host's inverse lands every pulse the MCU makes back on its command, within half a microsecond
        for v in range(-1000, 1001, 7):
            step = (hi - mid if v >= 0 else mid - lo) / 1000.0  # µs per per-mille on this side
            assert abs(ends.us_to_norm(ends.permille_to_us(v)) * 1000 - v) <= 0.5 / step + 1e-9
    for data in (b"123456789", bytes(range(64)), b""):
        assert c_core.carlink_crc16(data, len(data)) == crc16(data)


def test_cal_message_round_trip_and_checks():
    msg = Cal(1, *STEER_CAL, *THR_CAL, 120, CalFlags.STORED)
    decoded = FrameDecoder().feed(b"\x00" + encode(msg))
    assert decoded == [msg]
    cal = Calibration.from_cal(msg)
    assert (cal.steer, cal.throttle, cal.steer_deadband_us, cal.source) == (Endpoints(*STEER_CAL),
                                                                             Endpoints(*THR_CAL), 120, "stored")
    assert FrameDecoder().feed(b"\x00" + encode(CalRequest())) == [CalRequest(2)]
    with pytest.raises(ValueError, match="min < neutral < max"):
        Calibration.from_cal(Cal(1, 1500, 1400, 1900, *THR_CAL, 100, CalFlags.STORED))
    json_form = cal.to_json()
    assert '"min_us": 1100' in json_form and '"source": "stored"' in json_form


def test_link_reads_the_calibration_of_a_calibrated_mcu(host_mcu_bin):  # noqa: F811
    with FakeMcu(host_mcu_bin, steer_cal=STEER_CAL, thr_cal=THR_CAL) as mcu, \
            CarLink(mcu.port, estop_on_close=False) as link:
        assert link.calibration == Calibration(Endpoints(*STEER_CAL), Endpoints(*THR_CAL), 100, "stored")
        assert link.latest_state is None or link.latest_state.rx_bad == 0
    with FakeMcu(host_mcu_bin) as mcu, CarLink(mcu.port, estop_on_close=False) as link:
        assert link.calibration == Calibration(source="firmware-default")


def test_v11_host_with_v10_firmware_assumes_the_defaults(host_mcu_bin, caplog):  # noqa: F811
    with FakeMcu(host_mcu_bin, minor=0) as mcu, CarLink(mcu.port, estop_on_close=False) as link:
        assert link.calibration == Calibration(source="assumed-default")
        assert "does not report its calibration" in caplog.text
        ack = link.wait_ack(link.send(0.0, 0.0, auto=False), timeout_s=2.0)
        assert ack is not None and ack.state.rx_bad == 2  # the two CAL_REQs it did not know: nothing else


def test_v10_host_with_v11_firmware_sees_only_v10_frames(host_mcu_bin):  # noqa: F811
    """A v1.0 host never sends CAL_REQ, so the v1.1 MCU never sends it anything new."""
    v10 = FrameDecoder(accept=(MsgType.STATE, MsgType.INFO))  # what a v1.0 host decodes
    got: list = []

    def read_until(predicate, timeout_s: float = 2.0, resend: bytes = b"") -> None:
        deadline, next_send = time.monotonic() + timeout_s, 0.0
        while not predicate() and time.monotonic() < deadline:
            if resend and time.monotonic() >= next_send:  # a v1.0 host retries HELLO like CarLink does
                os.write(fd, resend)
                next_send = time.monotonic() + 0.2
            try:
                got.extend(v10.feed(os.read(fd, 4096)))
            except BlockingIOError:
                time.sleep(0.01)

    with FakeMcu(host_mcu_bin, steer_cal=STEER_CAL) as mcu:
        fd = os.open(mcu.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd)
            termios.tcflush(fd, termios.TCIFLUSH)  # as every host does on open: drop what queued up unread
            read_until(lambda: any(isinstance(m, Info) for m in got), resend=b"\x00" + encode(Hello(1)))
            for seq in range(1, 6):
                os.write(fd, encode(Cmd(seq, 0, 0, CmdFlags.NONE)))
                time.sleep(0.02)
            read_until(lambda: any(isinstance(m, State) and m.ack == 5 for m in got))
        finally:
            os.close(fd)
    assert any(isinstance(m, Info) and m.proto_version == 1 for m in got)
    assert any(isinstance(m, State) and m.ack == 5 and m.rx_bad == 0 for m in got)
    assert v10.drops.total == 0  # no frame a v1.0 host would not know


def test_calibrated_car_records_full_left_centre_full_right_as_0_49_99(host_mcu_bin, drive_assets, tmp_path):  # noqa: F811
    """The human sweeps the sticks to the calibrated ends (MANUAL), then hands over (AUTO): the recorded run
    has 0/49/99, and the model's own commands come back from the MCU's pulses as sent."""
    mcu = FakeMcu(host_mcu_bin, steer_cal=STEER_CAL, thr_cal=THR_CAL, watchdog_ms=1000)
    sweep = [(STEER_CAL[0], THR_CAL[0]), (STEER_CAL[1], THR_CAL[1]), (STEER_CAL[2], THR_CAL[2])]

    def human() -> None:
        wait_until(lambda: any(line.get("ack", 0) > 0 for line in mcu.lines), 60.0, "CMDs from the drive loop")
        for steer, thr in sweep:
            mcu.rc(steer, thr, MANUAL)
            mcu.wait_log(lambda s, w=(steer, thr): (s["out_steer_us"], s["out_thr_us"]) == w)
            time.sleep(0.5)
        mcu.rc(STEER_CAL[1], THR_CAL[1], AUTO)

    thread = threading.Thread(target=human, daemon=True)
    thread.start()
    try:
        report = drive(DriveConfig(port=mcu.port, model=str(drive_assets["model"]),
                                   camera=f"file:{drive_assets['long_video']}", record_dir=str(tmp_path),
                                   seconds=4.0, max_throttle=1.0, steer_slew_per_s=0.0, warmup=0, gap_frames=1000,
                                   camera_timeout_ms=2000.0, deadline_ms=5000.0, ack_timeout_ms=500.0))
        thread.join(timeout=30)
    finally:
        mcu.close()
    assert (report.exit_code, report.reason) == (0, "duration"), report
    assert "1100/1480/1880" in report.calibration and "stored" in report.calibration
    with h5py.File(report.run_path) as f:
        g = f["segments/0"]
        steer, motor, out_steer = g["steer"][()], g["motor"][()], g["out_steer_us"][()]
        out_thr, rc_steer, cmd_steer = g["out_thr_us"][()], g["rc_steer"][()], g["cmd_steer"][()]
        state = g["state"][()]
        assert '"min_us": 1100' in f.attrs["calibration"]
    for (steer_us, thr_us), units in zip(sweep, (0.0, 49.0, 99.0), strict=True):
        rows = (out_steer == steer_us) & (out_thr == thr_us) & (state == 1)
        assert rows.any(), f"no MANUAL rows at {steer_us}/{thr_us} µs"
        np.testing.assert_allclose(steer[rows], units, atol=1e-4)
        np.testing.assert_allclose(motor[rows], units, atol=1e-4)
        np.testing.assert_allclose(rc_steer[rows], units, atol=1e-4)
    auto = state == 6  # the model drives: each MCU pulse, read back, is one of the commands sent (< 0.2 units)
    assert auto.sum() > 5
    assert np.abs(steer[auto][:, None] - cmd_steer[None, :]).min(axis=1).max() < 0.2
