"""CarLink against the real firmware logic: vehicle/firmware built for the host, on a real pseudo-terminal.

The fake MCU (``host_mcu``) runs carlink_proto.c with a real-time clock; the test drives its simulated RC
receiver through stdin and reads its output log (mode, flags, out_steer_us, out_thr_us) from stdout.
Timing assertions use the MCU's own clock (``t_ms``) and generous margins, never the host's speed.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from driver.vehicle.carlink import MAX_FRAME, Cmd, CmdFlags, Mode, MsgType, StateFlags, cobs_encode, encode, encode_body
from driver.vehicle.fake_mcu import FakeMcu, build_host_mcu
from driver.vehicle.link import CarLink, LinkError
from driver.vehicle.link_check import LinkCheckConfig, check_link, format_link_report
from tests.limits import SAFETY_S

WATCHDOG_MS = 150
FW_VERSION = 3
WAIT_S = SAFETY_S  # a safety net: waits end as soon as the awaited thing (~tens of ms) happens
RC_NEUTRAL = (1500, 1500)
MANUAL, AUTO = 1000, 2000


def expected_us(permille: int) -> int:
    """Default endpoints 1000..1500..2000: 0.5 us per per-mille, rounded half away from zero."""
    return 1500 + (1 if permille >= 0 else -1) * ((abs(permille) * 500 + 500) // 1000)


@pytest.fixture(scope="session")
def host_mcu_bin(tmp_path_factory):
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed to build the fake MCU (vehicle/firmware, make host)")
    return build_host_mcu(tmp_path_factory.mktemp("firmware"))


class Pacer:
    """The host control loop in miniature: sends the current command at 50 Hz from a thread."""

    def __init__(self, link: CarLink, steer: float = 0.0, throttle: float = 0.0, auto: bool = True) -> None:
        self.link, self.command = link, (steer, throttle, auto)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with self.lock:
                steer, throttle, auto = self.command
                self.link.send(steer, throttle, auto=auto)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@pytest.fixture
def mcu(host_mcu_bin):
    fake = FakeMcu(host_mcu_bin)
    yield fake
    fake.close()


@pytest.fixture
def link(mcu):
    car = CarLink(mcu.port, estop_on_close=False)
    car.open()
    yield car
    car.close()


def enter_auto(mcu: FakeMcu, link: CarLink, steer: float, throttle: float) -> Pacer:
    """Start the host sending, then flip the mode switch to AUTO (the order a driver uses)."""
    pacer = Pacer(link, steer, throttle)
    link.wait_ack(link.send(steer, throttle), timeout_s=WAIT_S)
    mcu.rc(*RC_NEUTRAL, AUTO)
    link.wait_state(lambda s: s.mode == Mode.AUTO and s.rc_mode_us == AUTO, WAIT_S)
    return pacer


def test_handshake(link):
    assert (link.info.proto_version, link.info.fw_version, link.info.watchdog_ms) == (1, FW_VERSION, WATCHDOG_MS)
    state = link.wait_state(lambda s: True, WAIT_S)
    assert state.mode == Mode.MANUAL and state.rc_mode_us == MANUAL


def test_auto_outputs_follow_commands_and_are_acked(mcu, link):
    pacer = enter_auto(mcu, link, 0.0, 0.0)
    try:
        for steer, throttle in [(0.5, 0.25), (-1.0, -0.5), (0.123, 0.0), (2.0, -3.0)]:
            with pacer.lock:
                pacer.command = (steer, throttle, True)
                ack = link.wait_ack(link.send(steer, throttle), timeout_s=WAIT_S)
            assert ack is not None and ack.rtt_s > 0
            want = (expected_us(Cmd.from_norm(0, steer, 0).steer), expected_us(Cmd.from_norm(0, throttle, 0).steer))
            assert ack.state.mode == Mode.AUTO
            assert (ack.state.out_steer_us, ack.state.out_thr_us) == want
            assert mcu.wait_log(lambda s, w=want: (s["out_steer_us"], s["out_thr_us"]) == w)["mode"] == Mode.AUTO
    finally:
        pacer.stop()
    counters = link.counters
    assert counters.acked >= 5 and counters.rx_drops == 0 and counters.mcu_rx_bad == 0
    assert counters.acked + counters.lost_acks <= counters.sent


def test_garbage_on_the_line_is_dropped_and_never_moves_anything(mcu, link):
    pacer = enter_auto(mcu, link, 0.2, 0.1)
    want = (expected_us(200), expected_us(100))
    link.wait_state(lambda s: (s.out_steer_us, s.out_thr_us) == want, WAIT_S)
    start = len(mcu.lines)
    rng = random.Random(6)
    full_throttle = encode(Cmd(1, 1000, 1000, CmdFlags.AUTO_REQUEST))
    try:
        for i in range(40):
            flipped = bytearray(full_throttle)
            bit = rng.randrange(len(flipped) * 8 - 8)  # not the delimiter: one frame, one drop
            flipped[bit // 8] ^= 1 << (bit % 8)
            garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
            with pacer.lock:  # whole frames only: never interleave with the host's own CMDs
                mcu.write_raw(b"\x00" + bytes(flipped) + b"\x00" + garbage + b"\x00")
            if i % 10 == 0:
                time.sleep(0.03)
        state = link.wait_state(lambda s: s.rx_bad >= 40, WAIT_S)
    finally:
        pacer.stop()
    assert state.mode == Mode.AUTO
    during = mcu.lines[start:]
    assert during, "rx_bad changes are logged"
    assert all((s["out_steer_us"], s["out_thr_us"]) == want for s in during if s["mode"] == Mode.AUTO)
    assert all(s["out_thr_us"] <= want[1] for s in during)


def test_mcu_counts_every_drop_reason_like_the_host_decoder(mcu, link):
    base = link.wait_state(lambda s: True, WAIT_S).rx_bad
    cmd_body = bytearray(encode_body(MsgType.CMD, Cmd(1, 0, 0).pack_payload()))
    cmd_body[-1] ^= 0x01
    bad_frames = [
        b"\x05\x01",                                                    # bad COBS
        cobs_encode(b"\x01\x02"),                                       # short
        cobs_encode(bytes(cmd_body)),                                   # bad CRC
        cobs_encode(encode_body(MsgType.CMD, b"\x01\x02\x03\x04\x05")),  # wrong payload length
        cobs_encode(encode_body(MsgType.STATE, bytes(19))),              # a type the MCU does not take
        bytes((MAX_FRAME + 10) * [0x11]),                               # overlong
    ]
    mcu.write_raw(b"\x00" + b"\x00".join(bad_frames) + b"\x00\x00\x00")  # plus idle zeros: not drops
    link.wait_state(lambda s: s.rx_bad == (base + 6) & 0xFF, WAIT_S)
    assert link.wait_ack(link.send(0.0, 0.0, auto=False), timeout_s=WAIT_S).state.rx_bad == (base + 6) & 0xFF


def test_watchdog_failsafe_latches_until_mode_cycles_through_manual(mcu, link):
    pacer = enter_auto(mcu, link, 0.3, 0.5)
    want_steer = expected_us(300)
    link.wait_state(lambda s: s.out_thr_us == expected_us(500), WAIT_S)
    start = len(mcu.lines)
    pacer.stop()
    last_ack = link.last_ack.state
    failsafe = link.wait_state(lambda s: s.mode == Mode.FAILSAFE, WAIT_S)
    assert failsafe.flags & StateFlags.HOST_TIMEOUT
    assert (failsafe.out_steer_us, failsafe.out_thr_us) == (want_steer, 1500)  # steering held, throttle neutral
    line = mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE, start=start)
    assert WATCHDOG_MS <= line["t_ms"] - last_ack.t_ms <= WATCHDOG_MS + 250  # MCU clock, not ours

    pacer = Pacer(link, 0.3, 0.5)  # the host comes back: still latched
    try:
        time.sleep(0.3)
        assert link.latest_state.mode == Mode.FAILSAFE and link.latest_state.out_thr_us == 1500
        mcu.rc(*RC_NEUTRAL, MANUAL)
        link.wait_state(lambda s: s.mode == Mode.MANUAL, WAIT_S)
        mcu.rc(*RC_NEUTRAL, AUTO)
        state = link.wait_state(lambda s: s.mode == Mode.AUTO, WAIT_S)
        assert state.out_thr_us == expected_us(500)
    finally:
        pacer.stop()


def test_estop_latches_failsafe(mcu, link):
    pacer = enter_auto(mcu, link, -0.4, 0.6)
    link.wait_state(lambda s: s.out_thr_us == expected_us(600), WAIT_S)
    with pacer.lock:
        state = link.estop()
    try:
        assert state is not None and state.mode == Mode.FAILSAFE and state.out_thr_us == 1500
        assert state.out_steer_us == expected_us(-400)
        time.sleep(0.3)  # the pacer keeps asking for AUTO
        assert link.latest_state.mode == Mode.FAILSAFE
        mcu.rc(*RC_NEUTRAL, MANUAL)
        link.wait_state(lambda s: s.mode == Mode.MANUAL, WAIT_S)
    finally:
        pacer.stop()


def test_human_override_passes_rc_through(mcu, link):
    pacer = enter_auto(mcu, link, 0.5, 0.5)
    try:
        mcu.rc(1500, 1700, AUTO)  # throttle stick 200 us off neutral
        state = link.wait_state(lambda s: bool(s.flags & StateFlags.OVERRIDE), WAIT_S)
        assert (state.mode, state.out_steer_us, state.out_thr_us) == (Mode.AUTO, 1500, 1700)
        mcu.rc(1380, 1500, AUTO)  # steering beyond its deadband
        state = link.wait_state(lambda s: s.rc_steer_us == 1380, WAIT_S)
        assert state.flags & StateFlags.OVERRIDE and (state.out_steer_us, state.out_thr_us) == (1380, 1500)
        mcu.rc(*RC_NEUTRAL, AUTO)  # hands off: the host drives again
        state = link.wait_state(lambda s: not s.flags & StateFlags.OVERRIDE, WAIT_S)
        assert (state.mode, state.out_steer_us, state.out_thr_us) == (Mode.AUTO, expected_us(500), expected_us(500))
    finally:
        pacer.stop()


def test_rc_loss_is_failsafe_even_in_manual(mcu, link):
    mcu.rc(1600, 1700, MANUAL)
    link.wait_state(lambda s: (s.out_steer_us, s.out_thr_us) == (1600, 1700), WAIT_S)
    mcu.control("rc off")
    state = link.wait_state(lambda s: s.mode == Mode.FAILSAFE, WAIT_S)
    assert state.flags & StateFlags.RC_LOST and (state.out_steer_us, state.out_thr_us) == (1600, 1500)
    mcu.control("rc on")
    link.wait_state(lambda s: s.mode == Mode.MANUAL and s.out_thr_us == 1700, WAIT_S)


HOST_SCRIPT = """
import sys, time
from driver.vehicle.link import CarLink
link = CarLink(sys.argv[1], estop_on_close=False)
link.open()
print("ready", flush=True)
while True:
    link.send(0.0, 0.5)
    time.sleep(0.02)
"""


def test_killed_host_ends_in_failsafe(mcu):
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, mcu.port], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout.readline().strip() == "ready"
        mcu.rc(*RC_NEUTRAL, AUTO)
        start = len(mcu.lines)
        mcu.wait_log(lambda s: s["mode"] == Mode.AUTO and s["out_thr_us"] == expected_us(500), start=start)
        start = len(mcu.lines)
        host.send_signal(signal.SIGKILL)  # no ESTOP, no close: only the MCU watchdog can stop the car
        line = mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE, start=start)
        assert line["out_thr_us"] == 1500 and line["flags"] & StateFlags.HOST_TIMEOUT
    finally:
        host.kill()
        host.wait(timeout=5)


def test_vanished_mcu_is_a_clear_link_error_and_a_restarted_one_reconnects(host_mcu_bin, tmp_path):
    port = tmp_path / "ttyCAR"  # a stable name, like a udev symlink, pointing at the current pty
    first = FakeMcu(host_mcu_bin)
    port.symlink_to(first.port)
    link = CarLink(str(port), estop_on_close=False)
    link.open()
    try:
        first.kill()
        with pytest.raises(LinkError, match="ttyCAR"):
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                link.send(0.0, 0.0, auto=False)
                time.sleep(0.01)
        first.close()

        second = FakeMcu(host_mcu_bin)
        try:
            port.unlink()
            port.symlink_to(second.port)
            assert link.reconnect().proto_version == 1
            assert link.wait_ack(link.send(0.0, 0.0, auto=False), timeout_s=WAIT_S) is not None
        finally:
            link.close()
            second.close()
    finally:
        link.close()


def test_context_manager_sends_estop_on_exception(mcu):
    with pytest.raises(RuntimeError), CarLink(mcu.port) as link:
        enter_auto(mcu, link, 0.0, 0.4).stop()
        start = len(mcu.lines)
        raise RuntimeError("model crashed")
    line = mcu.wait_log(lambda s: s["mode"] == Mode.FAILSAFE, start=start)
    assert line["out_thr_us"] == 1500


def test_check_link_reports_and_never_moves_the_car(mcu):
    mcu.rc(*RC_NEUTRAL, AUTO)  # even with the switch in AUTO the check must not drive
    start = len(mcu.lines)
    report = check_link(LinkCheckConfig(mcu.port, seconds=0.5))
    text = format_link_report(report)
    assert (report.proto_version, report.fw_version, report.watchdog_ms) == (1, FW_VERSION, WATCHDOG_MS)
    # a loaded CI machine may delay an ack past its timeout; the link itself is lossless
    assert report.cmds_sent >= 5 and report.acked >= 0.8 * report.cmds_sent, text
    assert report.ok == (report.lost_acks <= 0.01 * report.cmds_sent)
    assert report.host_rx_drops == 0 and report.mcu_rx_bad == 0, text
    assert report.rtt_p50_ms > 0 and report.rtt_p99_ms >= report.rtt_p50_ms
    assert report.samples and all(s.rc_mode_us == AUTO for s in report.samples)
    assert all(s["out_thr_us"] == 1500 for s in mcu.lines[start:])
    assert "protocol v1" in text and "p99" in text


def test_check_link_names_the_port_when_nothing_answers(tmp_path):
    with pytest.raises(LinkError, match="nope"):
        check_link(LinkCheckConfig(str(tmp_path / "nope"), seconds=0.2))


def test_lost_acks_are_counted_once_in_a_row_and_reset_by_an_ack(mcu, link):
    """The link is the one lost-ack counter (the drive's acks_lost check reads ``lost_in_a_row``)."""
    import os

    assert link.wait_ack(link.send(0.0, 0.0), timeout_s=WAIT_S) is not None
    before = link.counters.lost_acks
    os.kill(mcu.proc.pid, signal.SIGSTOP)  # the MCU stops answering; the CMDs wait on the line
    try:
        for _ in range(4):
            link.send(0.0, 0.0)
            time.sleep(link.ack_timeout_s * 2)
        link.send(0.0, 0.0)  # sending expires the ones older than ack_timeout_s
        lost = link.counters
        assert lost.lost_in_a_row >= 4 and lost.lost_acks - before >= 4
    finally:
        os.kill(mcu.proc.pid, signal.SIGCONT)
    assert link.wait_ack(link.send(0.0, 0.0), timeout_s=WAIT_S) is not None
    assert link.counters.lost_in_a_row == 0 and link.counters.lost_acks >= lost.lost_acks


def test_driver_link_without_hardware_runs_as_documented(host_mcu_bin):
    """README and `driver link --help`: `python -m driver.vehicle.fake_mcu driver link --port {port}`."""
    import os
    from pathlib import Path

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "driver.vehicle.fake_mcu", "--build-dir", str(host_mcu_bin.parent),
                        "driver", "link", "--port", "{port}", "--seconds", "1"], capture_output=True, text=True,
                       env=env, timeout=SAFETY_S)
    assert r.returncode == 0, r.stderr
    assert "fake MCU on /dev/pts/" in r.stderr and "link OK" in r.stdout
