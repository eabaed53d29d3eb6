"""Shared interface and helpers of every driving model.

Every model maps a clip of frames to (steer, motor) predictions for the next ``horizon`` steps:

    forward(clip (B, T, C, H, W), modes (B, n_modes) | None, state, speed (B, T) | None)
        -> (out (B, T, horizon, 2), new_state)
    step(frame (B, C, H, W), modes, state, speed (B,) | None) -> (out (B, horizon, 2), new_state)

``out[..., 0]`` is steer and ``out[..., 1]`` motor, both in the normalised units of ``driver.units``
(-1..1, 0 = neutral). Frame-wise models fold T into the batch and return ``state=None``.

``speed`` is the car's measured speed in m/s (the run's ``encoder`` series). Only a model built with
``speed_input=True`` (``model.speed_input``) reads it, and then requires it; every other model accepts and
ignores it, so callers may always pass what they have.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from driver.errors import SpeedRequired
from driver.models.spec import InputSpec

RecurrentState = Tensor | tuple[Tensor, ...] | None

OUTPUT_ACTIVATIONS = ("none", "tanh")


def conv_out_size(size: int, kernel: int, stride: int = 1, padding: int = 0, ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's rule, including ceil_mode)."""
    span = size + 2 * padding - kernel
    if span < 0:
        return 0
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input
    return out


def require_positive_sizes(arch: str, spec: InputSpec, stages: list[tuple[str, int, int]]) -> None:
    """Raise ``ValueError`` naming the first stage whose (h, w) feature map would be empty."""
    for stage, height, width in stages:
        if height < 1 or width < 1:
            raise ValueError(
                f"{arch}: input {spec.height}x{spec.width} is too small, the feature map after {stage} "
                f"would be {height}x{width}; use a larger InputSpec.height/width"
            )


def make_output_activation(name: str) -> nn.Module:
    """``"none"`` (linear, as the lab) or ``"tanh"`` (bounded to (-1, 1))."""
    if name not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"output_activation={name!r} is not one of {OUTPUT_ACTIVATIONS}")
    return nn.Tanh() if name == "tanh" else nn.Identity()


def resolve_mode_planes(spec: InputSpec, mode_planes: int | None, multiple_of: int = 1) -> int:
    """Number of constant planes injected for the modes: ``n_modes`` unless set, padded to a multiple.

    Extra planes beyond ``n_modes`` stay zero (the lab's PyTorch SqueezeNet used 128 planes for 6 modes).
    """
    planes = spec.n_modes if mode_planes is None else mode_planes
    if isinstance(planes, bool) or not isinstance(planes, int) or planes < spec.n_modes:
        raise ValueError(f"mode_planes={mode_planes!r} must be an int >= InputSpec.n_modes={spec.n_modes}")
    return planes + (-planes) % multiple_of


def concat_mode_planes(features: Tensor, modes: Tensor | None, planes: int) -> Tensor:
    """Append the mode vector as constant planes: (N, F, h, w), (N, n_modes) -> (N, F + planes, h, w).

    Plane i is filled with ``modes[:, i]``; planes beyond ``n_modes`` (and all of them when ``modes`` is
    None) are zero.
    """
    if planes == 0:
        return features
    batch, _, height, width = features.shape
    if modes is None:
        values = features.new_zeros(batch, planes)
    else:
        values = F.pad(modes.to(features.dtype), (0, planes - modes.shape[1]))  # zero extra planes
    mode_maps = values[:, :, None, None].expand(batch, planes, height, width)
    if not features.is_contiguous() and features.is_contiguous(memory_format=torch.channels_last):
        # cat returns NCHW unless every input is channels_last; keep the layout for the layers after.
        mode_maps = mode_maps.contiguous(memory_format=torch.channels_last)
    return torch.cat([features, mode_maps], dim=1)


def outputs_to_pairs(raw: Tensor, horizon: int) -> Tensor:
    """Lab output order ``[steer x horizon, motor x horizon]`` (N, 2*horizon) -> (N, horizon, 2)."""
    return raw.view(raw.shape[0], 2, horizon).transpose(1, 2)


def detach_state(state: RecurrentState) -> RecurrentState:
    """Cut the autograd graph of a recurrent state (truncated BPTT); None passes through."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return tuple(part.detach() for part in state)


def validate_clip(spec: InputSpec, clip: Tensor, modes: Tensor | None) -> None:
    """Raise ``ValueError`` unless clip is (B, T, C, H, W) matching ``spec`` and modes is (B, n_modes)."""
    expected = (spec.channels, spec.height, spec.width)
    if clip.dim() != 5 or tuple(clip.shape[2:]) != expected:
        expected_text = ", ".join(map(str, expected))
        raise ValueError(f"expected a clip of shape (B, T, {expected_text}), got {tuple(clip.shape)}")
    if modes is not None and tuple(modes.shape) != (clip.shape[0], spec.n_modes):
        raise ValueError(f"expected modes of shape ({clip.shape[0]}, {spec.n_modes}), got {tuple(modes.shape)}")


def fold_time(clip: Tensor, modes: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(B, T, C, H, W), (B, M) -> frames (B*T, C, H, W), per-frame modes (B*T, M)."""
    batch, steps = clip.shape[:2]
    frames = clip.flatten(0, 1)
    if modes is not None:
        modes = modes[:, None, :].expand(batch, steps, modes.shape[1]).flatten(0, 1)
    return frames, modes


def require_speed(arch: str, speed: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    """``speed`` as float32 of ``shape``; raise :class:`SpeedRequired` when it is missing or mis-shaped."""
    if speed is None:
        raise SpeedRequired(f"{arch} was trained with the car's speed as an input (speed_input): pass speed= "
                            "(m/s, the run's encoder series)")
    if tuple(speed.shape) != shape:
        raise SpeedRequired(f"{arch}: expected speed of shape {shape}, got {tuple(speed.shape)}")
    return speed.float()


class DrivingModel(nn.Module):
    """Base of frame-wise (non-recurrent) models: subclasses implement :meth:`forward_frames`.
    They do not take the car's speed (``speed`` is accepted and ignored)."""

    is_recurrent = False
    speed_input = False

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.spec = spec
        self.arch = type(self).__name__.lower()  # overwritten by create_model with the registry name
        self.arch_kwargs: dict[str, Any] = {}

    def forward_frames(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        """(N, C, H, W), (N, n_modes) | None -> (N, horizon, 2)."""
        raise NotImplementedError

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> RecurrentState:
        """Frame-wise models carry no state."""
        return None

    def forward(
        self, clip: Tensor, modes: Tensor | None = None, state: RecurrentState = None, speed: Tensor | None = None
    ) -> tuple[Tensor, RecurrentState]:
        """(B, T, C, H, W), (B, n_modes) -> ((B, T, horizon, 2), None); frames are independent."""
        validate_clip(self.spec, clip, modes)
        batch, steps = clip.shape[:2]
        frames, frame_modes = fold_time(clip, modes)
        out = self.forward_frames(frames, frame_modes)  # (B*T, horizon, 2)
        return out.reshape(batch, steps, self.spec.horizon, 2), None

    def step(
        self, frame: Tensor, modes: Tensor | None = None, state: RecurrentState = None, speed: Tensor | None = None
    ) -> tuple[Tensor, RecurrentState]:
        """One frame (B, C, H, W) -> ((B, horizon, 2), new_state)."""
        out, new_state = self(frame.unsqueeze(1), modes, state)
        return out[:, 0], new_state
