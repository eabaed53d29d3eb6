"""The real and replay camera sources: a V4L2/USB device, a video file and a run replayed from a store."""

from __future__ import annotations

import logging
import os

import numpy as np

from .camera import CameraConfig, CameraError, CameraSource, EndOfStream, Pacer, split_side_by_side

log = logging.getLogger(__name__)


def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _opencv_quiet(cv2):
    """OpenCV's own log at ERROR only while opening: its WARN lines repeat what our one-line error says."""
    import contextlib

    logging_ = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_ is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def quiet():
        old = logging_.getLogLevel()
        logging_.setLogLevel(logging_.LOG_LEVEL_ERROR)
        try:
            yield
        finally:
            logging_.setLogLevel(old)

    return quiet()


class _SplitMixin:
    config: CameraConfig

    def _views(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.config.side_by_side:
            return split_side_by_side(rgb)
        return rgb, None


class V4l2Camera(_SplitMixin, CameraSource):
    """A V4L2/USB camera through ``cv2.VideoCapture(..., CAP_V4L2)``.

    FOURCC, size and fps are set in that order and read back (drivers silently substitute modes); a
    mismatch is logged as a warning. ``CAP_PROP_BUFFERSIZE=1`` keeps the driver queue short.
    """

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.device: int | str = int(config.camera) if config.camera.isdigit() else config.camera
        self.name = f"v4l2:{config.camera}"
        self._cap = None
        self.actual: dict[str, float | str] = {}

    def open(self) -> None:
        import cv2

        node = f"/dev/video{self.device}" if isinstance(self.device, int) else self.device
        if not os.path.exists(node):
            raise CameraError(f"camera {self.config.camera!r}: {node} does not exist (is the camera plugged in? "
                              "list them with `v4l2-ctl --list-devices`)")
        with _opencv_quiet(cv2):
            cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise CameraError(f"cannot open camera {self.config.camera!r} with V4L2 (is it a video device? "
                              "list them with `v4l2-ctl --list-devices`)")
        c = self.config
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*c.fourcc))
        if c.width and c.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
        cap.set(cv2.CAP_PROP_FPS, c.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        self.actual = {"fourcc": "".join(chr((code >> 8 * i) & 0xFF) for i in range(4)),
                       "width": cap.get(cv2.CAP_PROP_FRAME_WIDTH), "height": cap.get(cv2.CAP_PROP_FRAME_HEIGHT),
                       "fps": cap.get(cv2.CAP_PROP_FPS)}
        log.info("camera %s: %s %dx%d @ %.1f fps", c.camera, self.actual["fourcc"], self.actual["width"],
                 self.actual["height"], self.actual["fps"])
        wanted = {"fourcc": c.fourcc, "width": c.width or self.actual["width"],
                  "height": c.height or self.actual["height"], "fps": c.fps}
        for key, want in wanted.items():
            got = self.actual[key]
            if (got != want) if isinstance(want, str) else abs(float(got) - float(want)) > 0.5:
                log.warning("camera %s: asked for %s=%s, the driver gave %s (see v4l2-ctl --list-formats-ext)",
                            c.camera, key, want, got)
        self._cap = cap

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cap is None:
            raise CameraError(f"camera {self.config.camera!r} is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            raise CameraError(f"camera {self.config.camera!r} returned no frame (unplugged?)")
        return self._views(_bgr_to_rgb(image))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileCamera(_SplitMixin, CameraSource):
    """A video file decoded with OpenCV, paced in real time to ``config.fps`` (files are not paced by OpenCV).

    With ``config.loop_video`` it starts over at the end; otherwise the end raises :class:`EndOfStream`.
    """

    def __init__(self, path: str, config: CameraConfig) -> None:
        if not path:
            raise ValueError("camera=file:PATH needs a path")
        self.path, self.config = path, config
        self.name = f"file:{path}"
        self._cap = None
        self._pacer = Pacer(1.0 / config.fps)

    def open(self) -> None:
        import cv2

        if not os.path.isfile(self.path):
            raise CameraError(f"camera file {self.path!r} does not exist")
        with _opencv_quiet(cv2):
            cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise CameraError(f"cannot decode {self.path!r} with OpenCV")
        self._cap = cap

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        import cv2

        if self._cap is None:
            raise CameraError(f"camera file {self.path!r} is not open")
        ok, image = self._cap.read()
        if not ok and self.config.loop_video:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        if not ok:
            raise EndOfStream(self.path)
        self._pacer.wait()
        return self._views(_bgr_to_rgb(image))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ReplayCamera(CameraSource):
    """A run from a store (``driver ingest`` output), replayed at its recorded frame timing.

    Frames come out exactly as stored (both cameras for a stereo run), so a model driving from a replayed
    run sees the pixels it would see in training.
    """

    def __init__(self, store: str, run: str, config: CameraConfig) -> None:
        self.store_path, self.run, self.config = store, run, config
        self.name = f"replay:{store}:{run}"
        self._i = 0
        self._pacer = Pacer(1.0 / config.fps)

    def open(self) -> None:
        from driver.datasets.store import Store, StoreError

        try:
            store = Store(self.store_path)
            meta = store.run_meta(self.run)
            self._left = store.frames(self.run, "left")
            self._right = store.frames(self.run, "right") if "right" in meta["cameras"] else None
            t = np.asarray(store.series(self.run, "timestamp"), dtype=np.float64)
        except (StoreError, KeyError) as exc:
            raise CameraError(f"camera {self.name}: {exc}") from exc
        period = 1.0 / self.config.fps
        dt = np.diff(t, prepend=t[0] - period) if len(t) else np.zeros(0)
        # recorded spacing, but never pause for more than 1 s on a gap nor spin on a repeated timestamp
        self._dt = np.where(np.isfinite(dt) & (dt > 0), np.minimum(dt, 1.0), period)
        self._n = len(t)

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._i >= self._n:
            if not self.config.loop_video or self._n == 0:
                raise EndOfStream(self.name)
            self._i = 0
        i = self._i
        self._i += 1
        self._pacer.wait(float(self._dt[i]))
        left = np.asarray(self._left[i])
        return left, (np.asarray(self._right[i]) if self._right is not None else None)
