"""Camera sources behind one interface, and the grabber thread that keeps only the newest frame.

A :class:`CameraSource` yields RGB uint8 frames, blocking until the next one; :class:`LatestFrame` runs it
in a thread and keeps only the newest frame with its monotonic capture time, so the control loop never
works on a queued, old frame (OpenCV's V4L2 backend queues 4 buffers; vehicle_and_sim.md §3)::

    with open_camera(CameraConfig("file:drive.mp4", fps=30)) as cam, LatestFrame(cam) as grabber:
        frame = grabber.wait_newer(last_seq=0, timeout_s=0.25)   # None: nothing new in time
        frame.left, frame.right, frame.seq, frame.t_capture

Specs (``--camera``): ``0`` or ``/dev/video0`` (V4L2/USB), ``file:PATH`` (a video file, paced to its fps),
``replay:STORE:RUN`` (a recorded run from a store, at its recorded timing) and ``sim`` / ``sim:SEED``
(the simulator, :mod:`driver.vehicle.sim_car`). Implementations live in :mod:`driver.vehicle.cameras`.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from driver.errors import DriverError

log = logging.getLogger(__name__)


class CameraError(DriverError, OSError):
    """A camera that cannot be opened or failed while running; the message names the source."""


class EndOfStream(Exception):  # noqa: N818 - a signal, not an error
    """A finite source (video file, replayed run) has no more frames."""


@dataclass(frozen=True)
class Frame:
    """One capture: RGB uint8 ``left`` (and ``right`` for stereo), its number and monotonic capture time."""

    left: np.ndarray
    right: np.ndarray | None
    seq: int
    t_capture: float

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.t_capture


@dataclass(frozen=True)
class CameraConfig:
    """Which camera and how: ``camera`` as in the module docstring; 0 for width/height = the source's own.

    Every field's trailing comment is its ``driver drive --flag`` help: ``DriveConfig`` inherits these fields
    (one declaration each). Whether the simulator renders two views is the model's business, not the camera's
    settings: ``open_camera(config, stereo=...)``.
    """

    camera: str = "0"  # 0 or /dev/videoN (V4L2), file:VIDEO, replay:STORE:RUN, sim or sim:SEED
    fps: float = 30.0  # camera frame rate asked for (and the pace of file/replay/sim cameras)
    width: int = 0  # camera width asked for (0: the device's own)
    height: int = 0  # camera height asked for (0: the device's own)
    fourcc: str = "MJPG"  # V4L2 pixel format asked for
    side_by_side: bool = False  # the camera delivers left|right in one image (ZED-style stereo)
    loop_video: bool = False  # file camera: start over at the end instead of stopping

    def __post_init__(self) -> None:
        if not self.camera:
            raise ValueError("camera must be a device index/path, file:PATH, replay:STORE:RUN or sim")
        if not (0 <= self.width <= 8192 and 0 <= self.height <= 8192):
            raise ValueError(f"camera width={self.width}, height={self.height} must be in 0..8192 (0 = as delivered)")
        if not 1.0 <= self.fps <= 240.0:
            raise ValueError(f"fps={self.fps} must be in 1..240")
        if len(self.fourcc) != 4:
            raise ValueError(f"fourcc={self.fourcc!r} must be 4 characters, e.g. MJPG or YUYV")

    @property
    def kind(self) -> str:
        head = self.camera.split(":", 1)[0]
        if head in ("file", "replay", "sim"):
            return head
        return "v4l2"


class CameraSource(ABC):
    """A source of RGB frames. ``read()`` blocks until the next frame; use as a context manager."""

    name: str = "camera"

    @abstractmethod
    def open(self) -> None:
        """Open the device/file; raises :class:`CameraError` naming the source."""

    @abstractmethod
    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The next (left, right-or-None) RGB uint8 frame; raises EndOfStream or CameraError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""

    def __enter__(self) -> CameraSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_side_by_side(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A left|right image as two contiguous halves."""
    half = image.shape[1] // 2
    return np.ascontiguousarray(image[:, :half]), np.ascontiguousarray(image[:, half : 2 * half])


class Pacer:
    """Sleeps so that successive ``wait()`` calls are ``period_s`` apart (absolute deadlines, no drift)."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._next: float | None = None

    def wait(self, period_s: float | None = None) -> None:
        """Sleep until ``period_s`` (default: the pacer's period) after the previous call's deadline."""
        now = time.monotonic()
        if self._next is None or now - self._next > 1.0:  # first frame, or fell far behind: restart the clock
            self._next = now
            return
        self._next += self.period_s if period_s is None else period_s
        time.sleep(max(0.0, self._next - now))


class LatestFrame:
    """Grabber thread over a source: keeps only the newest frame, stamped with ``time.monotonic()``.

    ``freeze()`` is a test hook: the thread keeps running but stops publishing (a hung driver).
    """

    def __init__(self, source: CameraSource) -> None:
        self.source = source
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._frozen = threading.Event()
        self.error: BaseException | None = None
        self.ended = False
        self.grabbed = 0
        self._thread = threading.Thread(target=self._run, name=f"grabber {source.name}", daemon=True)

    def start(self) -> LatestFrame:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                left, right = self.source.read()
            except EndOfStream:
                self._finish(None, ended=True)
                return
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which names it
                self._finish(exc, ended=False)
                return
            t = time.monotonic()
            if self._frozen.is_set():
                continue
            with self._cond:
                self._seq += 1
                self.grabbed += 1
                self._frame = Frame(left, right, self._seq, t)
                self._cond.notify_all()

    def _finish(self, error: BaseException | None, ended: bool) -> None:
        with self._cond:
            self.error, self.ended = error, ended
            self._cond.notify_all()
        if error is not None:
            log.error("camera %s failed: %s", self.source.name, error)

    def freeze(self) -> None:
        self._frozen.set()

    def latest(self) -> Frame | None:
        with self._cond:
            return self._frame

    def wait_newer(self, last_seq: int, timeout_s: float) -> Frame | None:
        """The newest frame with ``seq > last_seq``, waiting up to ``timeout_s``; None if none came.

        Raises :class:`EndOfStream` when a finite source ran out and :class:`CameraError` when it failed.
        """
        with self._cond:
            self._cond.wait_for(lambda: (self._frame is not None and self._frame.seq > last_seq)
                                or self.error is not None or self.ended, timeout=timeout_s)
            if self._frame is not None and self._frame.seq > last_seq:
                return self._frame
            if self.error is not None:
                raise CameraError(f"camera {self.source.name}: {self.error}") from self.error
            if self.ended:
                raise EndOfStream(self.source.name)
            return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def __enter__(self) -> LatestFrame:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_camera(config: CameraConfig, actuator=None, stereo: bool = False) -> CameraSource:
    """The source for ``config.camera`` (not yet opened). ``actuator`` feeds the simulator's car and ``stereo``
    asks it for two views (sim only)."""
    from . import cameras

    spec, kind = config.camera, config.kind
    if kind == "file":
        return cameras.VideoFileCamera(spec[len("file:"):], config)
    if kind == "replay":
        parts = spec.split(":")
        if len(parts) < 3 or not parts[-1]:
            raise ValueError(f"camera={spec!r}: expected replay:STORE:RUN")
        return cameras.ReplayCamera(":".join(parts[1:-1]), parts[-1], config)
    if kind == "sim":
        from .sim_car import SimCamera

        seed = spec.split(":", 1)[1] if ":" in spec else "0"
        if not seed.isdigit():
            raise ValueError(f"camera={spec!r}: expected sim or sim:SEED with an integer seed")
        return SimCamera(config, seed=int(seed), actuator=actuator, stereo=stereo)
    return cameras.V4l2Camera(config)
