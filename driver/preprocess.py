"""The one preprocessing function: uint8 camera/store frames to model input (training, replay, car).

Frames arrive as uint8 ``(..., V, H, W, 3)`` RGB with V views in the lab's time-major order
([cam0 t-1, cam1 t-1, cam0 t, cam1 t]). Model input is float ``(..., 3V, H, W)`` scaled as the lab did,
``x / 255 - 0.5``, with channel ``3v + c`` holding colour c of view v. With ``channels_last`` the result
is laid out NHWC in memory (the fast layout for CPU convolutions) while keeping the logical NCHW shape.
"""

from __future__ import annotations

import torch


def frames_to_input(frames: torch.Tensor, channels_last: bool = True,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., V, H, W, 3) → float (..., 3V, H, W) in [-0.5, 0.5]."""
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
