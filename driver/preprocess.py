"""The one preprocessing function: uint8 camera/store frames to model input (training, replay, car).

Frames arrive as uint8 ``(..., V, H, W, 3)`` RGB with V views in the lab's time-major order
([cam0 t-1, cam1 t-1, cam0 t, cam1 t]). Model input is float ``(..., 3V, H, W)`` scaled as the lab did,
``x / 255 - 0.5``, with channel ``3v + c`` holding colour c of view v. With ``channels_last`` the result
is laid out NHWC in memory (the fast layout for CPU convolutions) while keeping the logical NCHW shape.
:func:`frames_to_input_numpy` is the same map in numpy, bit for bit, for ONNX Runtime on a torch-free car.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def frames_to_input(frames: torch.Tensor, channels_last: bool = True, dtype: torch.dtype | None = None
                    ) -> torch.Tensor:
    """uint8 (..., V, H, W, 3) → float (..., 3V, H, W) in [-0.5, 0.5] (``dtype`` default float32)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 RGB, got {frames.dtype}")
    if frames.dim() < 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (..., V, H, W, 3), got {tuple(frames.shape)}")
    *lead, v, h, w, _ = frames.shape
    if channels_last:
        # (..., V, H, W, 3) -> (..., H, W, V, 3) -> (..., H, W, 3V) contiguous, viewed as (..., 3V, H, W)
        x = frames.movedim(-4, -2).reshape(*lead, h, w, 3 * v).movedim(-1, -3)
    else:
        x = frames.movedim(-1, -3).reshape(*lead, 3 * v, h, w)
    return x.to(dtype).div_(255.0).sub_(0.5)


def frames_to_input_numpy(frames: np.ndarray) -> np.ndarray:
    """:func:`frames_to_input` (NCHW, float32) in numpy: uint8 (..., V, H, W, 3) → (..., 3V, H, W)."""
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 RGB, got {frames.dtype}")
    if frames.ndim < 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (..., V, H, W, 3), got {tuple(frames.shape)}")
    *lead, v, h, w, _ = frames.shape
    x = np.moveaxis(frames, -1, -3).reshape(*lead, 3 * v, h, w)
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0) - np.float32(0.5)


def prepare_frame(frame, height: int, width: int, name: str = "frame"):
    """A camera image (H'×W'×3 uint8 RGB, any size) as the model's H×W×3: centre-crop to the model's
    aspect ratio, then area-resize (as the lab downsampled 376×672 to 94×168). Frames already at the
    model's size pass through untouched, so stored training frames and live frames meet the same path.
    """
    import cv2

    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (H, W, 3) uint8 RGB, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {frame.dtype}; expected uint8 RGB")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{name} has shape {frame.shape}; expected (H, W, 3) RGB")
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(frame)
    if h < 2 or w < 2:
        raise ValueError(f"{name} is {h}x{w}; too small to resize to {height}x{width}")
    target = width / height
    if w / h > target:  # too wide: crop the sides
        cw = round(h * target)
        frame = frame[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    elif w / h < target:  # too tall: crop top and bottom
        ch = round(w / target)
        frame = frame[(h - ch) // 2 : (h - ch) // 2 + ch]
    interp = cv2.INTER_AREA if frame.shape[0] >= height else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(frame), (width, height), interpolation=interp)
