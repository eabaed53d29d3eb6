"""Clip augmentations on uint8 frames: horizontal flip (with camera swap) and colour jitter.

Both run in place on contiguous buffers with OpenCV, and give bit for bit the frames of the original
numpy versions (a reversed-stride copy for the flip; float32 arithmetic over the whole clip for the
jitter), so items stay a pure function of (seed, epoch, index) across this speed-up:

- the mirror is one ``cv2.flip`` over all rows of all frames;
- the jitter is a per-channel 256-entry table computed with exactly the old float32 operations and
  applied with ``cv2.LUT``. Its one clip-wide input, the float32 mean, is numpy's pairwise float32 sum
  reproduced exactly: every block of at most 65,536 uint8 values sums exactly in float32 (below 2**24),
  so only the additions above those blocks round, and they are done in numpy's order.
"""

from __future__ import annotations

import cv2
import numpy as np

_EXACT_BLOCK = 65536  # 65,536 * 255 < 2**24: float32 sums of this many uint8 values are exact


def _pairwise_sum(flat: np.ndarray, lo: int, n: int) -> np.float32:
    """numpy's float32 pairwise sum (``PW_BLOCKSIZE`` 128, halves rounded down to a multiple of 8)."""
    if n <= _EXACT_BLOCK:
        return np.float32(cv2.sumElems(flat[lo : lo + n])[0])
    half = n // 2
    half -= half % 8
    return np.float32(_pairwise_sum(flat, lo, half) + _pairwise_sum(flat, lo + half, n - half))


def clip_mean(frames: np.ndarray) -> np.float32:
    """``frames.astype(np.float32).mean(dtype=np.float32)`` bit for bit, without the float copy."""
    flat = np.ascontiguousarray(frames).reshape(-1, 1)
    return _pairwise_sum(flat, 0, flat.shape[0]) / np.float32(flat.shape[0]) if flat.size else np.float32("nan")


def jitter_table(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The (1, 256, 3) uint8 table of one random brightness, contrast and per-channel gain."""
    brightness = rng.uniform(-40, 40) * strength
    contrast = 1.0 + rng.uniform(-0.5, 0.5) * strength
    gains = 1.0 + rng.uniform(-0.2, 0.2, size=3) * strength
    mean = clip_mean(frames)
    x = np.arange(256, dtype=np.float32)[:, None]
    x = (x - mean) * contrast + mean + brightness
    x = x * gains.astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)[None]


def jitter_colors_(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """:func:`jitter_colors` in place on a (..., W, 3) uint8 array; returns it."""
    table = jitter_table(frames, strength, rng)
    if not frames.flags.c_contiguous:
        frames[...] = cv2.LUT(np.ascontiguousarray(frames).reshape(-1, frames.shape[-2], 3), table).reshape(
            frames.shape)
        return frames
    rows = frames.reshape(-1, frames.shape[-2], 3)
    cv2.LUT(rows, table, dst=rows)
    return frames


def jitter_colors(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One random brightness, contrast and per-channel gain for the whole clip (lighting changes).

    ``strength`` s scales the ranges: brightness ±40·s levels, contrast ×(1±0.5·s), channel gains
    ×(1±0.2·s). The same transform applies to every frame and camera, so motion cues stay intact.
    """
    return jitter_colors_(np.array(frames, order="C", copy=True), strength, rng)


def mirror_(frames: np.ndarray) -> np.ndarray:
    """Mirror every (H, W, C) image of a uint8 array left-right, in place; returns it."""
    if not frames.flags.c_contiguous:
        frames[...] = frames[..., ::-1, :].copy()
        return frames
    rows = frames.reshape(-1, frames.shape[-2], frames.shape[-1])
    cv2.flip(rows, 1, dst=rows)
    return frames


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
