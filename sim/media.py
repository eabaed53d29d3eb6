"""Pictures and videos of closed-loop drives: a top-down map per track (road, driven path, interventions)
and an MP4 of the camera view with the commanded steering drawn as a bar."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from .closed_loop import ClosedLoopResult, EpisodeResult

log = logging.getLogger(__name__)

MAP_PX = 800  # longest side of the top-down map


def top_down_map(ep: EpisodeResult) -> np.ndarray:
    """BGR image (north up): road in grey, centre line, driven path in blue, interventions as red crosses."""
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
        cv2.polylines(img, [to_px(ep.path).reshape(-1, 1, 2)], False, (200, 60, 20), 2, cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in to_px(ep.path[:1])[0]), 6, (0, 200, 0), -1)
    for p in to_px(ep.intervention_xy):
        cv2.drawMarker(img, (int(p[0]), int(p[1])), (0, 0, 255), cv2.MARKER_TILTED_CROSS, 14, 3)
    img = np.ascontiguousarray(img[::-1])  # raster rows grow with y: flip so north is up
    text = f"track {tr.split}/{tr.seed}  autonomy {ep.autonomy:.1f}%  interventions {ep.interventions}"
    cv2.putText(img, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _video_frame(rgb: np.ndarray, steer: float, scale: int) -> np.ndarray:
    big = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    bgr = np.ascontiguousarray(big[..., ::-1])
    h, w = bgr.shape[:2]
    cx, y = w // 2, h - 8
    cv2.line(bgr, (cx, y), (int(cx + float(np.clip(steer, -1, 1)) * (w // 2 - 4)), y), (0, 0, 255), 4)
    cv2.line(bgr, (cx, y - 6), (cx, y + 4), (255, 255, 255), 1)
    return bgr


def write_video(frames: list[np.ndarray], steer: np.ndarray, path: Path, fps: float) -> Path | None:
    """MP4 (mp4v) of RGB ``frames``, upscaled to at least 320 px wide; None when there are no frames."""
    if not frames:
        return None
    scale = max(1, int(np.ceil(320 / frames[0].shape[1])))
    first = _video_frame(frames[0], float(steer[0]) if len(steer) else 0.0, scale)
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: cv2.VideoWriter could not open an mp4v writer (is the folder writable?)")
    try:
        for i, f in enumerate(frames):
            writer.write(first if i == 0 else _video_frame(f, float(steer[i]) if i < len(steer) else 0.0, scale))
    finally:
        writer.release()
    return path


def write_closed_loop_media(result: ClosedLoopResult, out_dir: str | Path, fps: float = 30.0) -> list[Path]:
    """Write ``track_<split>_<seed>.png`` (top-down) and ``track_<split>_<seed>.mp4`` (camera) per track."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for ep in result.episodes:
        stem = out / f"track_{ep.track.split}_{ep.track.seed:04d}"
        png = stem.with_suffix(".png")
        if not cv2.imwrite(str(png), top_down_map(ep)):
            raise OSError(f"{png}: cv2.imwrite failed (is the folder writable?)")
        written.append(png)
        mp4 = write_video(ep.frames, ep.steer, stem.with_suffix(".mp4"), fps)
        if mp4 is not None:
            written.append(mp4)
    log.info("wrote %d media files to %s", len(written), out)
    return written
