"""The fake MCU: the carlink firmware's own logic (``vehicle/firmware``, built for this machine) on a pty.

Try the car link without hardware, in one line (needs ``make`` and a C compiler)::

    python -m driver.vehicle.fake_mcu driver link --port {port}
    python -m driver.vehicle.fake_mcu --rc 1500,1500,2000 -- driver drive --port {port} --model m.onnx --camera sim

It builds ``host_mcu`` (once, into ``~/.cache/driver/firmware``), starts it on the master side of a fresh
pseudo-terminal, runs the command with ``{port}`` replaced by the slave's path, and stops the fake when the
command ends; the exit code is the command's. The tests drive the same :class:`FakeMcu` class.

``FakeMcu`` controls the simulated RC receiver through the fake's stdin (``rc STEER THR MODE``, ``rc off``,
``rc on``) and parses its log (one ``state ...`` line per change of mode, flags, outputs or ``rx_bad``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"
MANUAL_US, AUTO_US = 1000, 2000  # mode channel pulse widths the fake's receiver sends


def default_build_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "driver" / "firmware"


def build_host_mcu(build_dir: str | os.PathLike | None = None) -> Path:
    """Build (or bring up to date) ``host_mcu`` with make; returns its path. Raises RuntimeError naming what
    is missing."""
    missing = [tool for tool in ("make", os.environ.get("CC", "cc")) if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"building the fake MCU needs {' and '.join(missing)} (e.g. apt-get install make gcc)")
    build = Path(build_dir) if build_dir else default_build_dir()
    result = subprocess.run(["make", "-s", "-C", str(FIRMWARE_DIR), "host", f"BUILD={build}"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {FIRMWARE_DIR}/host_mcu.c failed:\n{result.stderr.strip()}")
    return build / "host_mcu"


def _csv(values) -> str:
    return ",".join(str(int(v)) for v in values)


class FakeMcu:
    """``host_mcu`` on the master side of a fresh pty; ``port`` is the slave path for CarLink.

    ``steer_cal`` / ``thr_cal``: (min, neutral, max) µs endpoints as if calibrated; ``minor=0`` acts as carlink
    v1.0 firmware (no CAL), ``minor=1`` as v1.1 (CAL, never ODOM); ``wheel``: the firmware has a wheel encoder
    turning at this many ticks per second (:meth:`wheel` changes it; None: no encoder); ``corrupt_rx``:
    percent of host frames that get one bit flipped (seeded).
    """

    def __init__(self, binary: str | os.PathLike, rc=(1500, 1500, MANUAL_US), watchdog_ms: int = 150,
                 steer_cal=None, thr_cal=None, minor: int = 2, corrupt_rx: int = 0, seed: int = 1,
                 log_timeout_s: float = 10.0, wheel: float | None = None) -> None:
        master, self._slave = os.openpty()
        tty.setraw(self._slave)  # the fake keeps the slave open so the MCU never sees a hangup
        self.port = os.ttyname(self._slave)
        args = [str(binary), "--fd", str(master), "--watchdog-ms", str(watchdog_ms), "--rc", _csv(rc),
                "--minor", str(minor), "--corrupt-rx", str(corrupt_rx), "--seed", str(seed)]
        if steer_cal:
            args += ["--steer-cal", _csv(steer_cal)]
        if thr_cal:
            args += ["--thr-cal", _csv(thr_cal)]
        if wheel is not None:
            args += ["--wheel", f"{float(wheel):g}"]
        self.proc = subprocess.Popen(args, pass_fds=[master], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        os.close(master)
        self.lines: list[dict[str, int]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        try:
            self.wait_log(lambda s: True, timeout_s=log_timeout_s)
        except AssertionError:
            self.close()
            raise RuntimeError(f"host_mcu did not start: {self.proc.stderr.read().strip()}") from None

    def _read_log(self) -> None:
        for line in self.proc.stdout:
            fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv and kv.split("=")[0] != "rc")
            with self._cond:
                self.lines.append({k: int(v) for k, v in fields.items()})
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def control(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wheel(self, ticks_per_s: float) -> None:
        """The encoder now turns at this rate (needs ``wheel=`` at start)."""
        self.control(f"wheel {float(ticks_per_s):g}")

    def rc(self, steer: int, thr: int, mode: int) -> None:
        """The simulated receiver's pulse widths (µs), sent every 20 ms from now on."""
        self.control(f"rc {steer} {thr} {mode}")

    def wait_log(self, predicate, timeout_s: float = 2.0, start: int = 0) -> dict[str, int]:
        """The first log line from index ``start`` on that satisfies ``predicate``; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if predicate(line):
                        return line
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no MCU log line matched within {timeout_s} s; last {self.lines[-3:]}")
                self._cond.wait(left)

    def write_raw(self, data: bytes) -> None:
        """Bytes onto the line towards the MCU, bypassing CarLink."""
        os.write(self._slave, data)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(timeout=2)
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

    def __enter__(self) -> FakeMcu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _triple(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected three integers A,B,C (µs)")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m driver.vehicle.fake_mcu",
                                description="Run COMMAND against the fake MCU on a pty ({port} in COMMAND is its "
                                "path), e.g.: python -m driver.vehicle.fake_mcu driver link --port {port}")
    p.add_argument("--rc", type=_triple, default=(1500, 1500, MANUAL_US), metavar="S,T,M",
                   help="receiver pulse widths in µs (default 1500,1500,1000: sticks centred, switch in MANUAL; "
                   "mode 2000 = AUTO)")
    p.add_argument("--watchdog-ms", type=int, default=150, help="the MCU's command watchdog (default 150)")
    p.add_argument("--steer-cal", type=_triple, default=None, metavar="MIN,N,MAX",
                   help="calibrated steering endpoints in µs (default: the firmware's 1000,1500,2000)")
    p.add_argument("--thr-cal", type=_triple, default=None, metavar="MIN,N,MAX",
                   help="calibrated throttle endpoints in µs (default: the firmware's 1000,1500,2000)")
    p.add_argument("--wheel", type=float, default=None, metavar="TICKS_PER_S",
                   help="the firmware has a wheel encoder (carlink v1.2) turning at this rate (default: no encoder)")
    p.add_argument("--build-dir", default=None, help=f"where host_mcu is built (default {default_build_dir()})")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to run; {port} is replaced")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give a command to run, e.g. driver link --port {port}")
    try:
        binary = build_host_mcu(args.build_dir)
    except RuntimeError as e:
        print(f"fake_mcu: {e}", file=sys.stderr)  # noqa: T201 - a command-line tool's error
        return 2
    with FakeMcu(binary, rc=args.rc, watchdog_ms=args.watchdog_ms, steer_cal=args.steer_cal,
                 thr_cal=args.thr_cal, wheel=args.wheel) as mcu:
        print(f"fake MCU on {mcu.port}", file=sys.stderr)  # noqa: T201
        return subprocess.call([part.replace("{port}", mcu.port) for part in command])


if __name__ == "__main__":
    sys.exit(main())
