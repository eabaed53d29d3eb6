"""Pictures and videos of closed-loop drives, per world:

* ``track_<world>.png``: top-down map (north up): road, centre line, driven path coloured by speed (blue
  slow .. red fast), slides in white, interventions as crosses coloured by cause;
* ``speed_<world>.png``: speed along the track, model vs the clean expert, corners shaded;
* ``track_<world>.mp4``: the camera view with the commanded steering (red bar), throttle (green) or brake
  (red) and the speed as text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from .scoring import ClosedLoopResult, EpisodeResult

log = logging.getLogger(__name__)

MAP_PX = 800  # longest side of the top-down map
CAUSE_BGR = {"off_road": (0, 0, 255), "slid": (255, 0, 255), "wrong_way": (0, 165, 255), "stopped": (0, 0, 0)}


def _stem(ep: EpisodeResult) -> str:
    return "".join(c if c.isalnum() else "_" for c in ep.world.replace("/", "_"))


def top_down_map(ep: EpisodeResult) -> np.ndarray:
    """BGR image (north up): road, centre line, path coloured by speed, slides, interventions by cause."""
    tr = ep.track
    h, w = tr.lateral_raster.shape
    k = max(1, int(np.ceil(max(h, w) / MAP_PX)))
    lat = np.abs(tr.lateral_raster[::k, ::k])
    img = np.full((*lat.shape, 3), (70, 140, 80), np.uint8)
    img[lat < tr.lane_width / 2] = (120, 120, 120)
    img[lat < 0.02 * k] = (60, 220, 240)
    px_per_m = 1.0 / (tr.texel * k)

    def to_px(xy: np.ndarray) -> np.ndarray:
        return np.round((xy - tr.origin) * px_per_m).astype(np.int32)

    if len(ep.path) > 1:
        pts = to_px(ep.path)
        top = max(float(ep.speed.max()), 1e-3)
        for i in range(1, len(pts)):
            f = float(np.clip(ep.speed[i] / top, 0, 1))
            colour = (255, 255, 255) if ep.sliding[i] else (int(255 * (1 - f)), 40, int(255 * f))
            cv2.line(img, tuple(int(v) for v in pts[i - 1]), tuple(int(v) for v in pts[i]), colour, 2, cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in pts[0]), 6, (0, 200, 0), -1)
    for p, cause in zip(to_px(ep.intervention_xy), ep.intervention_causes, strict=True):
        cv2.drawMarker(img, (int(p[0]), int(p[1])), CAUSE_BGR[cause], cv2.MARKER_TILTED_CROSS, 14, 3)
    img = np.ascontiguousarray(img[::-1])  # raster rows grow with y: flip so north is up
    pace = "" if ep.pace is None else f"  pace {ep.pace:.2f}"
    lines = [f"{ep.world}  autonomy {ep.autonomy:.1f}%{pace}",
             "  ".join(f"{c} {n}" for c, n in ep.causes.items() if n) or "no interventions"]
    for i, text in enumerate(lines):
        cv2.putText(img, text, (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def plot_speed_profile(ep: EpisodeResult, path: Path) -> Path:
    """Speed along the track (first lap) of the model and of the clean expert; corners shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    try:
        s = np.arange(len(ep.track.s)) * ep.track.ds
        corner = np.abs(ep.track.curvature) >= ep.corner_curvature
        ax.fill_between(s, 0, 1, where=corner, transform=ax.get_xaxis_transform(), color="0.9", lw=0,
                        label=f"corner (|κ| ≥ {ep.corner_curvature:g}/m)")

        def lap1(e: EpisodeResult):
            wraps = np.flatnonzero(np.diff(e.position) < -e.track.length / 2)
            end = int(wraps[0]) + 1 if len(wraps) else len(e.position)
            return e.position[:end], e.speed[:end]

        if ep.reference is not None:
            ax.plot(*lap1(ep.reference), color="tab:green", lw=1.5, label="expert")
        pos, speed = lap1(ep)
        ax.plot(pos, speed, color="tab:red", lw=1.2, label="model")
        for p, cause in zip(ep.intervention_xy, ep.intervention_causes, strict=True):
            x = ep.track.locate(float(p[0]), float(p[1])).progress
            ax.axvline(x, color="k", lw=0.8, ls=":")
            ax.text(x, 0.02, cause, rotation=90, fontsize=7, transform=ax.get_xaxis_transform())
        ax.set_xlim(0, ep.track.length)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("distance along the track (m)")
        ax.set_ylabel("speed (m/s)")
        pace = "" if ep.pace is None else f", pace {ep.pace:.2f}"
        ax.set_title(f"{ep.world}: speed profile, first lap{pace}", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _video_frame(rgb: np.ndarray, steer: float, motor: float, speed: float, scale: int) -> np.ndarray:
    big = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    bgr = np.ascontiguousarray(big[..., ::-1])
    h, w = bgr.shape[:2]
    cx, y = w // 2, h - 8
    cv2.line(bgr, (cx, y), (int(cx + float(np.clip(steer, -1, 1)) * (w // 2 - 4)), y), (0, 0, 255), 4)
    cv2.line(bgr, (cx, y - 6), (cx, y + 4), (255, 255, 255), 1)
    m = float(np.clip(motor, -1, 1))  # throttle (green) grows up, brake (red) grows down, from the middle
    x0, mid, span = w - 12, h // 2, h // 2 - 10
    cv2.line(bgr, (x0, mid), (x0, int(mid - m * span)), (0, 200, 0) if m >= 0 else (0, 0, 255), 6)
    cv2.putText(bgr, f"{speed:.1f} m/s", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return bgr


def write_video(frames: list[np.ndarray], ep: EpisodeResult, path: Path, fps: float) -> Path | None:
    """MP4 (mp4v) of RGB ``frames`` with ``ep``'s commands, upscaled to >= 320 px wide; None without frames."""
    if not frames:
        return None
    scale = max(1, int(np.ceil(320 / frames[0].shape[1])))

    def frame(i: int) -> np.ndarray:
        ok = i < len(ep.steer)
        return _video_frame(frames[i], float(ep.steer[i]) if ok else 0.0, float(ep.motor[i]) if ok else 0.0,
                            float(ep.speed[i - 1]) if 0 < i <= len(ep.speed) else 0.0, scale)

    first = frame(0)
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: cv2.VideoWriter could not open an mp4v writer (is the folder writable?)")
    try:
        for i in range(len(frames)):
            writer.write(first if i == 0 else frame(i))
    finally:
        writer.release()
    return path


def write_closed_loop_media(result: ClosedLoopResult, out_dir: str | Path, fps: float = 30.0) -> list[Path]:
    """Write ``track_<world>.png``, ``speed_<world>.png`` and ``track_<world>.mp4`` per world."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for ep in result.episodes:
        png = out / f"track_{_stem(ep)}.png"
        if not cv2.imwrite(str(png), top_down_map(ep)):
            raise OSError(f"{png}: cv2.imwrite failed (is the folder writable?)")
        written.append(png)
        written.append(plot_speed_profile(ep, out / f"speed_{_stem(ep)}.png"))
        mp4 = write_video(ep.frames, ep, out / f"track_{_stem(ep)}.mp4", fps)
        if mp4 is not None:
            written.append(mp4)
    log.info("wrote %d media files to %s", len(written), out)
    return written
