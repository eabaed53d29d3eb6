"""Every drive session is a run in the lab HDF5 format (docs/run-format.md), flushed to disk every second.

Rows are buffered in memory by the loop (cheap) and written by a background thread once per
``flush_s``: all datasets are resized together, written, the ``frames_committed`` attribute is updated and
the file is flushed, so a crashed or killed host loses at most the last second. The file is written
directly under its final name (``driver ingest`` picks up ``*.h5``); the ``complete`` attribute turns 1
on a normal close. If a kill ever lands inside a flush and leaves series of different lengths,
:func:`truncate_to_committed` cuts them back to the last committed row.

Columns: ``left`` (and ``right``) are the frames *as the model saw them* (after ``prepare_frame``), so the
ingested run trains with exactly the driven pixels. ``steer``/``motor`` are what the car did (the MCU's
``out_*_us`` in run units: the human's sticks in MANUAL and OVERRIDE, the model's command in AUTO,
neutral throttle in FAILSAFE), converted with the MCU's own calibration; the raw pulse widths are kept
too, and the calibration is the file's ``calibration`` attribute (JSON), so a run can always be
re-converted. The extras are listed in :data:`EXTRAS`; a session that reads the wheel encoder (carlink
v1.2) adds :data:`WHEEL_EXTRAS` (``encoder`` in m/s, what training's speed input reads) and the file's
``wheel_m_per_tick`` attribute.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import h5py
import numpy as np

log = logging.getLogger(__name__)

# extra per-frame series: name -> (dtype, meaning)
EXTRAS: dict[str, tuple[str, str]] = {
    "controller": ("int8", "who drove this frame: 0 human (or nobody, FAILSAFE), 1 the model"),
    "rc_steer": ("float32", "the human's steering stick, run units"),
    "rc_motor": ("float32", "the human's throttle stick, run units"),
    "cmd_steer": ("float32", "steering sent in the CMD after host limits, run units"),
    "cmd_motor": ("float32", "throttle sent in the CMD after host limits, run units"),
    "model_steer": ("float32", "the model's raw steering output, run units"),
    "model_motor": ("float32", "the model's raw throttle output, run units"),
    "auto_request": ("uint8", "1 if the CMD asked to drive (AUTO_REQUEST)"),
    "mcu_mode": ("int8", "STATE mode: 0 MANUAL, 1 AUTO, 2 FAILSAFE, -1 no STATE yet"),
    "mcu_flags": ("uint8", "STATE flags: 1 RC_LOST, 2 HOST_TIMEOUT, 4 OVERRIDE"),
    "mcu_t_ms": ("int64", "MCU clock of the STATE used, ms"),
    "rc_mode_us": ("int32", "the mode channel pulse width, µs"),
    "out_steer_us": ("int32", "the steering pulse the MCU output, µs (steer before conversion)"),
    "out_thr_us": ("int32", "the ESC pulse the MCU output, µs (motor before conversion)"),
    "rc_steer_us": ("int32", "the receiver's steering pulse, µs"),
    "rc_thr_us": ("int32", "the receiver's throttle pulse, µs"),
    "frame_seq": ("int64", "camera frame number (gaps = frames the loop skipped)"),
    "capture_to_send_ms": ("float32", "frame capture → CMD written, ms"),
}

# with a wheel encoder read (carlink v1.2, ``wheel_m_per_tick`` set)
WHEEL_EXTRAS: dict[str, tuple[str, str]] = {
    "encoder": ("float32", "the car's speed from the wheel encoder, m/s (driver.vehicle.wheel_speed)"),
    "encoder_ticks": ("int64", "encoder ticks counted since the session's first ODOM"),
}

# lab state codes (docs/run-format.md) for the MCU's modes
STATE_HUMAN, STATE_LOCK, STATE_OVERRIDE, STATE_NETWORK, STATE_ERROR = 1, 2, 5, 6, -1


class SessionRecorder:
    """Appends one row per tick to ``path``; ``close()`` returns the path (None if nothing was recorded)."""

    def __init__(self, path: str | os.PathLike, height: int, width: int, stereo: bool,
                 labels: dict[str, int] | None = None, attrs: dict[str, object] | None = None,
                 flush_s: float = 1.0, wheel: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stereo, self.flush_s = stereo, flush_s
        self.labels = dict(labels or {})
        self.rows = 0
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._buf: list[dict] = []
        self._file = h5py.File(self.path, "w")
        self._file.attrs["complete"] = 0
        self._file.attrs["frames_committed"] = 0
        for k, v in (attrs or {}).items():
            self._file.attrs[k] = v
        g = self._file.create_group("segments/0")
        cams = ("left", "right") if stereo else ("left",)
        for cam in cams:
            g.create_dataset(cam, shape=(0, height, width, 3), maxshape=(None, height, width, 3),
                             dtype=np.uint8, chunks=(1, height, width, 3))
        for name in ("steer", "motor", "state"):
            g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(256,))
        g.create_dataset("left_timestamp", shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(256,))
        for name, (dtype, _) in (EXTRAS | (WHEEL_EXTRAS if wheel else {})).items():
            g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(256,))
        self._group = g
        self._write_labels()
        self._file.flush()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        self._last_t = -np.inf

    def add(self, left: np.ndarray, right: np.ndarray | None, *, steer: float, motor: float, state: int,
            timestamp: float, **extras: float) -> None:
        """Buffer one row (frames are referenced, not copied: the loop never writes into them)."""
        if timestamp <= self._last_t:  # the run format needs strictly increasing timestamps
            timestamp = self._last_t + 1e-6
        self._last_t = timestamp
        row = {"left": left, "steer": steer, "motor": motor, "state": state, "left_timestamp": timestamp, **extras}
        if self.stereo:
            row["right"] = right
        with self._lock:
            self._buf.append(row)
        if extras.get("controller") == 1 and not self.labels.get("caffe"):
            self.labels["caffe"] = 1  # the lab's flag: a network drove during this run

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - recording must never stop the car; logged, retried next second
                log.exception("recording to %s failed", self.path)

    def _write_labels(self) -> None:
        lab = self._file.require_group("labels")
        for name, value in self.labels.items():
            if name in lab:
                lab[name][0] = int(value)
            else:
                lab.create_dataset(name, data=np.array([int(value)], dtype=np.uint8))

    def flush(self) -> None:
        """Write the buffered rows and flush the file (called every ``flush_s`` by the thread)."""
        with self._lock:
            rows, self._buf = self._buf, []
        if not rows:
            return
        with self._io_lock:
            g, n, k = self._group, self.rows, len(rows)
            for name in g:
                ds = g[name]
                ds.resize(n + k, axis=0)
                if name in ("left", "right"):
                    ds[n:] = np.stack([r[name] for r in rows])
                else:
                    ds[n:] = np.array([r.get(name, 0) for r in rows], dtype=ds.dtype)
            self.rows = n + k
            self._write_labels()
            self._file.attrs["frames_committed"] = self.rows
            self._file.flush()

    def close(self) -> Path | None:
        """Stop the thread, write the rest, mark the run complete. Removes an empty file (not a valid run)."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.flush()
        with self._io_lock:
            self._file.attrs["complete"] = 1
            self._file.close()
        if self.rows == 0:
            self.path.unlink(missing_ok=True)
            log.info("nothing recorded; removed %s", self.path)
            return None
        log.info("recorded %d frames to %s", self.rows, self.path)
        return self.path


def session_path(record_dir: str | os.PathLike, prefix: str = "drive") -> Path:
    """``record_dir/drive_YYYYmmdd_HHMMSS.h5`` (a suffix is added if that exists)."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    base = Path(record_dir) / f"{prefix}_{stamp}.h5"
    i = 1
    while base.exists():
        base = Path(record_dir) / f"{prefix}_{stamp}_{i}.h5"
        i += 1
    return base


def truncate_to_committed(path: str | os.PathLike) -> int:
    """Cut every series of a session file back to its ``frames_committed`` rows; returns that count."""
    with h5py.File(path, "r+") as f:
        n = int(f.attrs.get("frames_committed", 0))
        g = f["segments/0"]
        for name in g:
            if g[name].shape[0] != n:
                g[name].resize(n, axis=0)
    return n
