"""MP4 frames in and out with PyAV (FFmpeg's libraries, bundled in its wheels).

PyAV is used because it decodes every codec LeRobot writes (AV1 through libdav1d, H.264, HEVC) from
the wheel alone, with FFmpeg's frame threads, and converts to RGB in swscale; OpenCV's bundled FFmpeg
cannot be counted on for AV1, and torchcodec needs a torch build matching it. Decode speeds measured
against OpenCV on the same files are in docs/benchmarks.md (bench/import_speed.py).
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction

import numpy as np

from .errors import ImportFormatError

log = logging.getLogger(__name__)


def _av():
    try:
        import av
    except ImportError:
        raise ImportFormatError("PyAV", "is not installed: pip install 'driver[lerobot]' (or pip install av) "
                                "to read and write LeRobot videos") from None
    return av


class VideoClip:
    """Frames ``from_s + t[k]`` of one MP4 file, decoded in order; a new ``start`` seeks.

    ``times`` are the frames' times in seconds relative to ``from_s``; each decoded frame is matched to
    the nearest one within half a frame period, and a frame the video lacks is an error naming the file.
    """

    def __init__(self, path: str, from_s: float, times: np.ndarray, fps: float, height: int, width: int):
        self.path, self.from_s, self.times, self.fps = path, float(from_s), np.asarray(times, np.float64), fps
        self.height, self.width = height, width
        self._container = None
        self._frames = None  # iterator of (index, rgb) from the current position
        self._next = 0

    def _open(self, start: int) -> None:
        av = _av()
        self.close()
        if not os.path.isfile(self.path):
            raise ImportFormatError(self.path, "video file is missing")
        try:
            self._container = av.open(self.path)
            stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError) as e:
            raise ImportFormatError(self.path, f"not a readable video: {e}") from None
        stream.thread_type = "AUTO"
        target = self.from_s + self.times[start]
        if target > 0.5 / self.fps:
            self._container.seek(int(max(0.0, target - 0.5 / self.fps) / stream.time_base), stream=stream,
                                 backward=True, any_frame=False)
        self._frames = self._decode(stream, start)
        self._next = start

    def _decode(self, stream, start: int):
        av = _av()
        tol = 0.5 / self.fps
        k = start
        try:
            for frame in self._container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base) - self.from_s
                if t < self.times[k] - tol:
                    continue  # before the wanted frame (decoded from the keyframe)
                if t > self.times[k] + tol:
                    raise ImportFormatError(self.path, f"has no frame at {self.from_s + self.times[k]:.4f} s "
                                            f"(frame {k} of the episode); the next is at {t + self.from_s:.4f} s")
                yield k, frame.to_ndarray(format="rgb24")
                k += 1
                if k == len(self.times):
                    return
        except av.FFmpegError as e:
            raise ImportFormatError(self.path, f"decoding failed at frame {k} of the episode: {e}") from None
        raise ImportFormatError(self.path, f"ends after frame {k} of the episode, which has {len(self.times)}")

    def read(self, start: int, count: int, out: np.ndarray) -> None:
        if self._frames is None or start != self._next:
            self._open(start)
        for j in range(count):
            k, rgb = next(self._frames)
            if rgb.shape != (self.height, self.width, 3):
                raise ImportFormatError(self.path, f"frames are {rgb.shape[0]}x{rgb.shape[1]} but info.json says "
                                        f"{self.height}x{self.width}")
            out[j] = rgb
            self._next = k + 1

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None


class VideoWriter:
    """Appends RGB frames to one MP4 stream at a constant ``fps`` (frame k at k / fps seconds)."""

    def __init__(self, path: str, fps: int, height: int, width: int, codec: str = "libsvtav1", crf: int = 30,
                 gop: int = 2, preset: int = 12):
        av = _av()
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its settings to stderr unless told: errors only
        self.path, self.fps, self.frames = path, fps, 0
        options = {"g": str(gop), "crf": str(crf)}
        if codec == "libsvtav1":
            options["preset"] = str(preset)
        try:
            self._container = av.open(path, "w")
            self._rate = Fraction(fps).limit_denominator(1000)
            self._stream = self._container.add_stream(codec, rate=self._rate, options=options)
        except (av.FFmpegError, ValueError) as e:
            raise ValueError(f"cannot encode {codec} video to {path}: {e}") from None
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._av = av

    def write(self, frames: np.ndarray) -> None:
        for rgb in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames
            frame.time_base = 1 / self._rate
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
