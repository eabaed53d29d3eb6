"""Pictures, video and tables of an open-loop replay.

Per run: ``<run>_timeseries.png`` (human vs model steering and throttle over time, unscored frames
shaded) and ``<run>_errors.png`` (histograms of model − human). One run as ``<run>_overlay.mp4``: its
frames upscaled, human (green) and model (red) steering drawn as two needles from the bottom centre and
two bars, with the numbers as text. The worst moments go to ``worst.csv``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from driver.units import run_to_norm

if TYPE_CHECKING:
    from driver.datasets.store import Store

    from .replay import ReplayConfig, ReplayReport, RunTrace

log = logging.getLogger(__name__)

HUMAN_BGR = (60, 200, 60)
MODEL_BGR = (40, 40, 230)
NEEDLE_DEG = 60.0  # needle angle at full steering lock (run units 0 or 99)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def plot_timeseries(trace: RunTrace, path: Path) -> Path:
    """Human vs model steering and throttle over time; frames not scored are shaded grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    t = trace.time_s
    for ax, human, model, name in ((axes[0], trace.human_steer, trace.pred_steer, "steer"),
                                   (axes[1], trace.human_motor, trace.pred_motor, "throttle")):
        ax.plot(t, human, color="tab:green", lw=1.2, label="human")
        ax.plot(t, model, color="tab:red", lw=1.0, label="model")
        ax.axhline(49, color="k", lw=0.5, ls=":")
        if (~trace.valid).any():
            ax.fill_between(t, 0, 99, where=~trace.valid, color="0.85", step="mid", label="not scored")
        ax.set_ylim(0, 99)
        ax.set_ylabel(f"{name} (run units)")
        ax.legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("time (s)")
    axes[0].set_title(f"{trace.run}: open-loop replay")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_errors(trace: RunTrace, path: Path) -> Path:
    """Histograms of model − human steering and throttle over the scored frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    v = trace.valid
    for ax, err, name in ((axes[0], trace.pred_steer[v] - trace.human_steer[v], "steer"),
                          (axes[1], trace.pred_motor[v] - trace.human_motor[v], "throttle")):
        if err.size:
            lim = max(1.0, float(np.abs(err).max()))
            ax.hist(err, bins=41, range=(-lim, lim), color="tab:blue")
            ax.axvline(float(err.mean()), color="tab:red", lw=1, label=f"bias {err.mean():+.2f}")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"{name} error, model − human (run units)")
        ax.set_ylabel("frames")
    fig.suptitle(f"{trace.run}: error histograms ({int(v.sum())} scored frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _needle(img: np.ndarray, steer: float, color: tuple[int, int, int], length: int) -> None:
    h, w = img.shape[:2]
    ang = math.radians(np.clip(run_to_norm(float(steer)), -1, 1) * NEEDLE_DEG)  # + = right
    base = (w // 2, h - 4)
    tip = (int(base[0] + length * math.sin(ang)), int(base[1] - length * math.cos(ang)))
    cv2.line(img, base, tip, color, 3, cv2.LINE_AA)


def overlay_frame(rgb: np.ndarray, human: float, model: float, scale: int, text: str) -> np.ndarray:
    """One BGR video frame: the camera image ×``scale``, two steering needles, two bars, and ``text``."""
    big = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    img = np.ascontiguousarray(big[..., ::-1])
    h, w = img.shape[:2]
    _needle(img, human, HUMAN_BGR, h // 3)
    _needle(img, model, MODEL_BGR, h // 3)
    cx = w // 2
    for k, (val, col) in enumerate(((human, HUMAN_BGR), (model, MODEL_BGR))):
        y = 8 + 10 * k
        x = int(cx + np.clip(run_to_norm(float(val)), -1, 1) * (w // 2 - 4))
        cv2.line(img, (cx, y), (x, y), col, 6)
    cv2.line(img, (cx, 2), (cx, 24), (255, 255, 255), 1)
    for k, line in enumerate(text.split("\n")):
        cv2.putText(img, line, (6, 44 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def write_overlay_video(trace: RunTrace, store: Store, path: Path, max_frames: int, camera: str = "left") -> Path:
    """MP4 (mp4v) of the first ``max_frames`` frames of the run with human/model steering drawn on."""
    frames = store.frames(trace.run, camera)
    n = min(len(trace.valid), max_frames)
    if n == 0:
        raise ValueError(f"run {trace.run!r} has no frames for a video")
    h0, w0 = store.run_meta(trace.run)["height"], store.run_meta(trace.run)["width"]
    scale = max(3, math.ceil(480 / w0))
    size = (w0 * scale, h0 * scale)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(round(trace.fps, 3)), size)
    if not writer.isOpened():
        raise OSError(f"{path}: cv2.VideoWriter could not open an mp4v writer (is the folder writable?)")
    try:
        for start in range(0, n, 256):
            block = frames.read(start, min(256, n - start))
            for j, rgb in enumerate(block):
                i = start + j
                hs, ms = float(trace.human_steer[i]), float(trace.pred_steer[i])
                text = (f"{trace.run} f{i} {trace.time_s[i]:.2f}s{'' if trace.valid[i] else ' (not scored)'}\n"
                        f"human {hs:5.1f}  model {ms:5.1f}  err {ms - hs:+5.1f}")
                writer.write(overlay_frame(rgb, hs, ms, scale, text))
    finally:
        writer.release()
    return path


def write_worst_csv(worst: list[dict], path: Path) -> Path:
    cols = ["run", "frame", "time_s", "human", "model", "abs_error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({c: r[c] for c in cols} for r in worst)
    return path


def write_replay_media(report: ReplayReport, store: Store, out: Path, config: ReplayConfig) -> list[Path]:
    """Plots per run (if ``config.plots``), the overlay video (if ``config.video``) and ``worst.csv``."""
    written: list[Path] = []
    for name, trace in report.traces.items():
        if config.plots:
            written.append(plot_timeseries(trace, out / f"{_safe(name)}_timeseries.png"))
            written.append(plot_errors(trace, out / f"{_safe(name)}_errors.png"))
    if config.video and report.traces:
        run = config.video_run or next(iter(report.traces))
        if run not in report.traces:
            raise ValueError(f"video_run={run!r} is not among the replayed runs {list(report.traces)}")
        written.append(write_overlay_video(report.traces[run], store, out / f"{_safe(run)}_overlay.mp4",
                                           config.max_video_frames))
    written.append(write_worst_csv(report.worst, out / "worst.csv"))
    log.info("replay media: %d files in %s", len(written), out)
    return written
