"""Clip augmentations on uint8 frames: horizontal flip (with camera swap) and colour jitter, and the
per-item random numbers that drive them.

Both run in place with OpenCV on the frames of a clip as they are read, so a clip whose stacked views
share frames augments each frame once:

- the mirror is ``cv2.flip`` (a copy of a reversed-stride view, bit for bit);
- the jitter is one affine map per channel, ``y = round(gain_c * (contrast * (x - mean) + mean +
  brightness))`` clipped to 0..255, applied with ``cv2.transform`` (float32 arithmetic, rounding to the
  nearest level) at several GB/s. ``mean`` is the mean of the clip's distinct frames.

Randomness is a pure function of (seed, epoch, index): :func:`item_uniforms` hashes the three with
BLAKE2b (a few microseconds, where seeding a numpy Generator per item costs ~20).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import cv2
import numpy as np

_U53 = 2.0**-53


def item_uniforms(seed: int, epoch: int, index: int) -> tuple[float, ...]:
    """Eight independent uniforms in [0, 1) for item ``index`` of ``epoch`` under ``seed`` (BLAKE2b)."""
    digest = hashlib.blake2b(struct.pack("<3q", seed, epoch, index), digest_size=64).digest()
    return tuple((v >> 11) * _U53 for v in struct.unpack("<8Q", digest))


@dataclass(frozen=True)
class Jitter:
    """One random brightness, contrast and per-channel gain (a lighting change) for a whole clip.

    ``strength`` s scales the ranges: brightness ±40·s levels, contrast ×(1±0.5·s), channel gains
    ×(1±0.2·s). The same transform applies to every frame and camera, so motion cues stay intact.
    """

    brightness: float
    contrast: float
    gains: tuple[float, float, float]

    @classmethod
    def draw(cls, strength: float, u) -> Jitter:
        """From five uniforms in [0, 1) (e.g. ``item_uniforms(...)[1:6]``)."""
        return cls((u[0] * 80 - 40) * strength, 1.0 + (u[1] - 0.5) * strength,
                   tuple(1.0 + (v * 0.4 - 0.2) * strength for v in u[2:5]))

    def matrix(self, mean: float) -> np.ndarray:
        """The (3, 4) ``cv2.transform`` matrix of this jitter about the clip mean ``mean``."""
        g = np.asarray(self.gains, dtype=np.float64)
        m = np.zeros((3, 4), dtype=np.float64)
        m[[0, 1, 2], [0, 1, 2]] = g * self.contrast
        m[:, 3] = g * ((1.0 - self.contrast) * mean + self.brightness)
        return m.astype(np.float32)


def frames_mean(parts: list[np.ndarray]) -> float:
    """The mean of every value of ``parts`` (uint8 arrays), exact (integer sums in float64)."""
    total = sum(sum(cv2.sumElems(_rows(p))) for p in parts)  # per-channel sums, added
    return total / sum(p.size for p in parts)


def _rows(frames: np.ndarray) -> np.ndarray:
    """A 3-D (rows, W, 3) view of contiguous (..., W, 3) frames, as OpenCV takes them."""
    return frames.reshape(-1, frames.shape[-2], frames.shape[-1])


def jitter_(parts: list[np.ndarray], jitter: Jitter, mean: float | None = None) -> None:
    """Apply ``jitter`` in place to ``parts``: C-contiguous (..., W, 3) uint8 arrays of one clip
    (``mean`` defaults to theirs)."""
    m = jitter.matrix(frames_mean(parts) if mean is None else mean)
    for p in parts:
        rows = _rows(p)
        cv2.transform(rows, m, dst=rows)


def mirror_(frames: np.ndarray) -> np.ndarray:
    """Mirror every (H, W, C) image of a uint8 array left-right, in place; returns it."""
    if not frames.flags.c_contiguous:
        frames[...] = frames[..., ::-1, :].copy()
        return frames
    rows = _rows(frames)
    cv2.flip(rows, 1, dst=rows)
    return frames


def jitter_colors(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of (..., W, 3) uint8 ``frames`` with one random :class:`Jitter` (drawn from ``rng``)."""
    out = np.array(frames, order="C", copy=True)
    jitter_([out], Jitter.draw(strength, rng.random(5)))
    return out


def flip_clip(frames: np.ndarray, n_cameras: int) -> np.ndarray:
    """Mirror (T, V, H, W, 3) frames left-right and swap left/right cameras within each stacked view.

    The mirrored left image is what a right camera would see of the mirrored world, so cameras swap.
    The caller negates the normalised steering targets (symmetric about 0).
    """
    if n_cameras == 2:
        order = np.arange(frames.shape[1]).reshape(-1, 2)[:, ::-1].reshape(-1)
        out = np.ascontiguousarray(frames[:, order])
    else:
        out = np.array(frames, order="C", copy=True)
    return mirror_(out)
