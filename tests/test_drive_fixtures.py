"""Shared helpers for the drive tests (no tests here): tiny checkpoints, videos, a drive subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from driver.models import InputSpec, create_model
from driver.training.checkpoint import model_payload, preprocess_info, save_checkpoint
from tests.limits import SAFETY_S

H, W = 48, 64  # model input
VIDEO_H, VIDEO_W = 96, 128  # camera frames: crop + resize happen for real
FPS = 30.0
SPEC = InputSpec(H, W, cameras=1, stack=1, n_modes=0, horizon=1)

DRIVE_SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import drive
report = drive(DriveConfig.from_dict(json.loads(sys.argv[1])))
print("REPORT " + json.dumps(report.to_dict(), default=str), flush=True)
sys.exit(report.exit_code)
"""


def make_checkpoint(path: Path, nan: bool = False, seed: int = 0, bias: float | None = None) -> Path:
    """An untrained squeezenet at 48×64 mono; ``nan`` (or ``bias``) sets the output layer's bias to NaN (that)."""
    torch.manual_seed(seed)
    model = create_model("squeezenet", SPEC)
    if nan or bias is not None:
        last = [p for name, p in model.named_parameters() if name.endswith("bias")][-1]
        with torch.no_grad():
            last.fill_(float("nan") if nan else bias)
    save_checkpoint(path, {**model_payload(model), "config": {"channels_last": True},
                           "preprocess": preprocess_info(SPEC, ("left",), ())})
    return path


def video_frames(n: int, seed: int = 0, constant: bool = False) -> np.ndarray:
    """``n`` RGB frames VIDEO_H×VIDEO_W: smooth moving patterns (they survive MJPG) unless ``constant``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:VIDEO_H, 0:VIDEO_W].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    out = np.empty((n, VIDEO_H, VIDEO_W, 3), np.uint8)
    for i in range(n):
        t = 0 if constant else i
        for c in range(3):
            out[i, ..., c] = (127 + 120 * np.sin(xx / (9 + 4 * c) + yy / 13 + 0.3 * t + phase[c])).astype(np.uint8)
    return out


def write_video(path: Path, frames: np.ndarray, fps: float = FPS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode_video(path: Path) -> list[np.ndarray]:
    """The file's frames as RGB, decoded the way the file camera decodes them."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture(scope="session")
def drive_assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("drive")
    return {
        "model": make_checkpoint(d / "model.pt"),
        "nan_model": make_checkpoint(d / "nan.pt", nan=True),
        "saturated_model": make_checkpoint(d / "saturated.pt", bias=1e30),  # the full-lock model
        "video": write_video(d / "moving.avi", video_frames(75)),
        "still": write_video(d / "still.avi", video_frames(60, constant=True)),
        "long_video": write_video(d / "long.avi", video_frames(300)),
        "dir": d,
    }


class DriveProcess:
    """``drive(DriveConfig(...))`` in a real subprocess; stdout/stderr collected by threads."""

    def __init__(self, **config) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVE_SCRIPT, json.dumps(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(s, buf), daemon=True)
                         for s, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, buf: list[str]) -> None:
        for line in stream:
            buf.append(line)

    def wait(self, timeout_s: float = SAFETY_S) -> int:
        rc = self.proc.wait(timeout=timeout_s)
        for t in self._threads:
            t.join(timeout=5)
        return rc

    @property
    def report(self) -> dict:
        lines = [x for x in self.out if x.startswith("REPORT ")]
        assert lines, "no report; stderr tail:\n" + "".join(self.err[-30:])
        return json.loads(lines[-1][len("REPORT "):])

    def log_text(self) -> str:
        return "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=SAFETY_S)


def wait_until(predicate, timeout_s: float = SAFETY_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
