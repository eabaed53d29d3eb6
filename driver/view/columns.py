"""Helpers shared by the views: whole series in one ``send_columns`` call, frames as JPEG."""

from __future__ import annotations

import cv2
import numpy as np

from . import require_rerun

STATE_NAMES = {1: "human", 2: "lock", 3: "net steer", 4: "calibrate", 5: "override", 6: "network", 7: "net motor",
               -1: "error"}


def series(rec, path: str, frame: np.ndarray, values: np.ndarray, time_s: np.ndarray | None = None) -> None:
    """Log ``values`` at global frame indices ``frame`` (and ``time_s``) as one scalar column."""
    rr = require_rerun()
    indexes = [rr.TimeColumn("frame", sequence=np.asarray(frame, np.int64))]
    if time_s is not None:
        indexes.append(rr.TimeColumn("time", duration=np.asarray(time_s, np.float64)))
    rec.send_columns(path, indexes=indexes, columns=rr.Scalars.columns(scalars=np.asarray(values, np.float64)))


def state_changes(rec, path: str, frame: np.ndarray, labels: list[str]) -> None:
    """A StateChange lane: one entry where the label changes."""
    rr = require_rerun()
    for i, label in enumerate(labels):
        if i == 0 or label != labels[i - 1]:
            rec.set_time("frame", sequence=int(frame[i]))
            rec.log(path, rr.StateChange(state=label))


def jpeg(rgb: np.ndarray, quality: int = 85):
    """An RGB frame as a Rerun EncodedImage (JPEG): ~10x smaller recordings than raw pixels."""
    rr = require_rerun()
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return rr.EncodedImage(contents=buf.tobytes(), media_type="image/jpeg")
