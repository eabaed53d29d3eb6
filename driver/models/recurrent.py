"""Recurrent controllers: a per-frame CNN encoder (SqueezeNet, Z2Color or PilotNet) feeding an LSTM/GRU that
runs across consecutive frames.

Unlike the lab's SqueezeNetLSTM/GRU (whose recurrence unrolled over the 10 *future outputs*), the memory
here is over input time: each frame is encoded on its own, the RNN carries state from frame to frame, and
a linear head predicts the next ``horizon`` (steer, motor) pairs at every frame::

    clip (B, T, C, H, W) --encoder per frame--> (B, T, F) --norm, LSTM/GRU--> (B, T, hidden)
                         --linear head--> (B, T, horizon, 2)

With ``head_skip=True`` a second linear map reads the normed features of the same frame and adds to the
head's output (``head(hidden) + skip(features)``): what the picture says now reaches the output without
passing the RNN's gates, as a frame model's does, and the RNN adds what the frames before it say. With
``skip_widths=(50, 10)`` as well, that path is a small MLP (Linear + ReLU layers of those widths, then the
linear map): over ``pilotnet_gru``'s fc 100 it is PilotNet's own classifier, so the model is PilotNet plus
what the RNN adds.

With ``head_widths=(50, 10)`` the head is a small MLP instead of one linear map: Linear + ReLU layers of
those widths between the RNN's output and the final linear layer (PilotNet's fc 50 and fc 10 after its
fc 100), so the output is more than one linear read of the RNN's state.

With ``frame_head=True`` a linear map reads the same normed features and predicts the targets from the frame
alone; ``forward(..., frame_outputs=True)`` returns its (B, T, horizon, 2) output as a third value. Training
adds its loss (``--frame-loss``) so the encoder is taught to read each picture on its own, as a frame
model's is, instead of only through the RNN. It adds nothing to the driving output and is not read on the car.

The norm before the RNN (``feature_norm``) is per channel by default (``"batch"``: BatchNorm1d over the
frames of the batch, running statistics on the car): pooled ReLU features are unbounded, and a few channels
can grow by orders of magnitude during training. ``"layer"`` (LayerNorm across channels, the default before
issue 18 and what older checkpoints hold) divides every channel by a spread those few channels dominate,
which turned the RNN's input into a near-constant vector; ``"none"`` feeds the features as they are.

With ``speed_input=True`` the car's measured speed (m/s, the run's ``encoder`` series) joins the normed
features at every frame, through its own BatchNorm (running statistics on the car), so the RNN and the
head see how fast the car goes: the throttle a driver gives depends on the speed, not only on the
picture. Such a model requires ``speed`` (B, T) in ``forward`` and (B,) in ``step``.

State is explicit: ``(h, c)`` for LSTM and ``h`` for GRU, each (num_layers, B, hidden), float32. The RNN
always runs in float32 (autocast is disabled around it) so a state carried for thousands of frames on the
car does not accumulate bf16 rounding. ``forward`` over a clip equals calling ``step`` frame by frame.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from driver.models.base import (
    RecurrentState,
    fold_time,
    make_output_activation,
    outputs_to_pairs,
    require_speed,
    validate_clip,
)
from driver.models.pilotnet import PilotNetTrunk
from driver.models.registry import register_model
from driver.models.spec import InputSpec
from driver.models.squeezenet import SqueezeNetTrunk, init_squeezenet_weights, squeezenet_mode_planes
from driver.models.z2color import Z2ColorTrunk, z2color_mode_planes

RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
FEATURE_NORMS = ("batch", "layer", "none")
# Knob values that models saved before the knob existed were built with (read by legacy_kwargs).
_LEGACY = {"feature_norm": "layer", "head_skip": False}
_LEGACY_SQUEEZENET = {"pool": "avg"}


def legacy_kwargs(arch: str, arch_kwargs: dict) -> dict:
    """The kwargs that rebuild a model saved before a knob existed: recurrent models saved without
    ``feature_norm`` used LayerNorm. New models always record their knobs (``create_model``)."""
    if arch.endswith(("_lstm", "_gru")):
        legacy = {**_LEGACY, **(_LEGACY_SQUEEZENET if arch.startswith("squeezenet") else {})}
        return {**legacy, **arch_kwargs}
    return dict(arch_kwargs)


def _feature_norm(kind: str, features: int) -> nn.Module:
    if kind not in FEATURE_NORMS:
        raise ValueError(f"feature_norm={kind!r} is not one of {FEATURE_NORMS}")
    return {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}.get(kind, lambda _: nn.Identity())(features)


def _mlp(width_in: int, widths) -> tuple[nn.Sequential | None, int]:
    """Linear + ReLU layers of ``widths`` (None when there are none) and the width they end at."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(width_in, width), nn.ReLU(inplace=True)]
        width_in = width
    return (nn.Sequential(*layers) if layers else None), width_in


ENCODER_POOLS = ("avg", "spatial")


class SqueezeNetEncoder(nn.Module):
    """SqueezeNet trunk + pooling: (N, C, H, W), (N, n_modes) -> (N, out_features).

    ``pool="spatial"`` (default): a 1x1 conv to ``spatial_channels`` channels (ReLU), flattened with its
    layout, so the RNN sees where things are in the picture (as PilotNet's and Z2Color's fully connected
    layers do); ``"avg"``: global average pool, one value per channel (position-blind; the only choice
    before issue 18, what older checkpoints hold).
    """

    def __init__(self, spec: InputSpec, dropout: float = 0.0, pool: str = "spatial", spatial_channels: int = 16,
                 **trunk_kwargs: Any) -> None:
        super().__init__()
        if pool not in ENCODER_POOLS:
            raise ValueError(f"pool={pool!r} is not one of {ENCODER_POOLS}")
        self.features = SqueezeNetTrunk(spec, **trunk_kwargs)
        if pool == "avg":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(p=dropout))
            self.out_features = self.features.out_channels
        else:
            self.pool = nn.Sequential(nn.Conv2d(self.features.out_channels, spatial_channels, kernel_size=1),
                                      nn.ReLU(inplace=True), nn.Flatten(1), nn.Dropout(p=dropout))
            height, width = self.features.feature_size
            self.out_features = spatial_channels * height * width
        self.recorded_kwargs = {"pool": pool}
        init_squeezenet_weights(self)

    def forward(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        return self.pool(self.features(frames, modes))


class RecurrentDriver(nn.Module):
    """Frame encoder -> LSTM/GRU over time -> linear head. See the module docstring for shapes."""

    is_recurrent = True

    def __init__(
        self,
        spec: InputSpec,
        encoder: nn.Module,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        output_activation: str = "none",
        feature_norm: str = "batch",
        speed_input: bool = False,
        head_skip: bool = False,
        frame_head: bool = False,
        head_widths: tuple[int, ...] | list[int] = (),
        skip_widths: tuple[int, ...] | list[int] = (),
    ) -> None:
        super().__init__()
        if cell not in RNN_CELLS:
            raise ValueError(f"cell={cell!r} is not one of {sorted(RNN_CELLS)}")
        for name, value in (("speed_input", speed_input), ("head_skip", head_skip), ("frame_head", frame_head)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be true or false")
        for name, widths in (("head_widths", head_widths), ("skip_widths", skip_widths)):
            if not isinstance(widths, (tuple, list)) or not all(
                    isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 4096 for w in widths):
                raise ValueError(f"{name}={widths!r} must be a list of layer widths, each 1..4096")
        if skip_widths and not head_skip:
            raise ValueError(f"skip_widths={list(skip_widths)!r} shapes the skip path: it needs head_skip=true")
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"hidden_size={hidden_size} and num_layers={num_layers} must be >= 1")
        self.spec = spec
        self.arch = f"recurrent_{cell}"  # overwritten by create_model with the registry name
        self.arch_kwargs: dict[str, Any] = {}
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.encoder = encoder
        # Pooled CNN features are unbounded (ReLU) and would saturate the RNN's gates: normalise each channel.
        self.feature_norm = feature_norm
        self.norm = _feature_norm(feature_norm, encoder.out_features)
        # create_model records these knobs in arch_kwargs (their defaults changed over time)
        self.recorded_kwargs = {**getattr(encoder, "recorded_kwargs", {}), "feature_norm": feature_norm,
                                "head_skip": head_skip, "frame_head": frame_head}
        self.speed_input = speed_input
        self.speed_norm = nn.BatchNorm1d(1) if speed_input else None  # m/s -> about unit scale
        rnn_in = encoder.out_features + int(speed_input)
        # the training-only per-frame head (registered before ``head``: the last output layer stays the head's)
        self.frame_head = nn.Linear(rnn_in, spec.outputs) if frame_head else None
        self.rnn = RNN_CELLS[cell](rnn_in, hidden_size, num_layers=num_layers, batch_first=True)
        # the hidden layers of an MLP head (none by default: the head is one linear map); ``head`` stays the last
        self.head_layers, width_in = _mlp(hidden_size, head_widths)
        self.head = nn.Linear(width_in, spec.outputs)
        # the skip path: its MLP layers (``skip_widths``, none by default) and its last linear map
        self.skip_layers, width_in = _mlp(rnn_in, skip_widths)
        self.skip = nn.Linear(width_in, spec.outputs) if head_skip else None
        self.output_activation = make_output_activation(output_activation)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> RecurrentState:
        """Zero state: ``(h, c)`` for LSTM, ``h`` for GRU, each (num_layers, batch_size, hidden_size)."""
        hidden = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device)
        return (hidden, torch.zeros_like(hidden)) if self.cell == "lstm" else hidden

    def forward(
        self, clip: Tensor, modes: Tensor | None = None, state: RecurrentState = None, speed: Tensor | None = None,
        frame_outputs: bool = False,
    ) -> tuple[Tensor, RecurrentState] | tuple[Tensor, RecurrentState, Tensor]:
        """(B, T, C, H, W), (B, n_modes), state, speed (B, T) m/s -> ((B, T, horizon, 2), state after the last
        frame). ``speed`` is read only by a model built with ``speed_input=True``, which requires it.
        ``frame_outputs=True`` (a model built with ``frame_head=True``) also returns the per-frame head's
        (B, T, horizon, 2) prediction from each frame alone."""
        validate_clip(self.spec, clip, modes)
        if frame_outputs and self.frame_head is None:
            raise ValueError(f"{self.arch}: frame_outputs=True needs a model built with frame_head=True")
        batch, steps = clip.shape[:2]
        if self.speed_input:
            speed = require_speed(self.arch, speed, (batch, steps))
        if state is None:
            state = self.initial_state(batch, clip.device)
        frames, frame_modes = fold_time(clip, modes)
        features = self.encoder(frames, frame_modes).reshape(batch, steps, -1)  # (B, T, F)
        with torch.autocast(device_type=clip.device.type, enabled=False):
            normed = self.norm(features.float().flatten(0, 1))  # per frame
            if self.speed_norm is not None:
                normed = torch.cat([normed, self.speed_norm(speed.reshape(-1, 1).to(normed.device))], dim=1)
            normed = normed.view(batch, steps, -1)
            hidden, new_state = self.rnn(normed, state)  # (B, T, hidden)
        hidden = hidden.flatten(0, 1)
        if self.head_layers is not None:
            hidden = self.head_layers(hidden)
        raw = self.head(hidden)  # (B*T, 2*horizon)
        if self.skip is not None:
            frame = normed.flatten(0, 1).to(raw.dtype)
            raw = raw + self.skip(frame if self.skip_layers is None else self.skip_layers(frame))
        out = self.output_activation(outputs_to_pairs(raw, self.spec.horizon))
        out = out.reshape(batch, steps, self.spec.horizon, 2)
        if not frame_outputs:
            return out, new_state
        framewise = self.output_activation(outputs_to_pairs(self.frame_head(normed.flatten(0, 1)), self.spec.horizon))
        return out, new_state, framewise.reshape(batch, steps, self.spec.horizon, 2)

    def step(
        self, frame: Tensor, modes: Tensor | None = None, state: RecurrentState = None, speed: Tensor | None = None
    ) -> tuple[Tensor, RecurrentState]:
        """One frame (B, C, H, W), the previous state and speed (B,) -> ((B, horizon, 2), new state)."""
        out, new_state = self(frame.unsqueeze(1), modes, state, None if speed is None else speed.reshape(-1, 1))
        return out[:, 0], new_state


RECURRENT_ARCHS = ("squeezenet_lstm", "squeezenet_gru", "z2color_lstm", "z2color_gru", "pilotnet_lstm", "pilotnet_gru")
SPEED_INPUT_ARCHS = RECURRENT_ARCHS  # every recurrent model can take the car's speed


def is_recurrent_arch(arch: str) -> bool:
    """Whether the registered arch carries state from frame to frame (trained on lanes of clips)."""
    return arch in RECURRENT_ARCHS


def takes_speed_input(arch: str) -> bool:
    """Whether the registered arch can be built with ``speed_input=True`` (the recurrent models)."""
    return arch in SPEED_INPUT_ARCHS


_RNN_KWARGS = ("hidden_size", "num_layers", "output_activation", "feature_norm", "speed_input", "head_skip",
               "frame_head", "head_widths", "skip_widths")


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split builder kwargs into (RNN/head kwargs, encoder kwargs)."""
    rnn_kwargs = {key: kwargs.pop(key) for key in _RNN_KWARGS if key in kwargs}
    return rnn_kwargs, kwargs


def _squeezenet_recurrent(spec: InputSpec, cell: str, lab: bool, mode_planes: int | None, **kwargs: Any):
    rnn_kwargs, encoder_kwargs = _split_kwargs(kwargs)
    encoder = SqueezeNetEncoder(spec, mode_planes=squeezenet_mode_planes(lab, mode_planes), **encoder_kwargs)
    return RecurrentDriver(spec, encoder, cell=cell, **rnn_kwargs)


def _z2color_recurrent(spec: InputSpec, cell: str, lab: bool, mode_planes: int | None, **kwargs: Any):
    rnn_kwargs, encoder_kwargs = _split_kwargs(kwargs)
    encoder = Z2ColorTrunk(spec, mode_planes=z2color_mode_planes(lab, mode_planes), **encoder_kwargs)
    return RecurrentDriver(spec, encoder, cell=cell, **rnn_kwargs)


@register_model("squeezenet_lstm")
def build_squeezenet_lstm(spec: InputSpec, lab: bool = False, mode_planes: int | None = None, **kwargs: Any):
    """SqueezeNet encoder (all :class:`SqueezeNetTrunk` knobs) + LSTM(hidden_size=128) over frames."""
    return _squeezenet_recurrent(spec, "lstm", lab, mode_planes, **kwargs)


@register_model("squeezenet_gru")
def build_squeezenet_gru(spec: InputSpec, lab: bool = False, mode_planes: int | None = None, **kwargs: Any):
    """SqueezeNet encoder + GRU(hidden_size=128) over frames."""
    return _squeezenet_recurrent(spec, "gru", lab, mode_planes, **kwargs)


@register_model("z2color_lstm")
def build_z2color_lstm(spec: InputSpec, lab: bool = False, mode_planes: int | None = None, **kwargs: Any):
    """Z2Color trunk up to ip1 (512) + LSTM(hidden_size=128) over frames."""
    return _z2color_recurrent(spec, "lstm", lab, mode_planes, **kwargs)


@register_model("z2color_gru")
def build_z2color_gru(spec: InputSpec, lab: bool = False, mode_planes: int | None = None, **kwargs: Any):
    """Z2Color trunk up to ip1 (512) + GRU(hidden_size=128) over frames."""
    return _z2color_recurrent(spec, "gru", lab, mode_planes, **kwargs)


def _pilotnet_recurrent(spec: InputSpec, cell: str, **kwargs: Any):
    rnn_kwargs, encoder_kwargs = _split_kwargs(kwargs)
    encoder = PilotNetTrunk(spec, arch=f"pilotnet_{cell}", **encoder_kwargs)
    return RecurrentDriver(spec, encoder, cell=cell, **rnn_kwargs)


@register_model("pilotnet_lstm")
def build_pilotnet_lstm(spec: InputSpec, **kwargs: Any):
    """PilotNet's convolutions and fc 100 + LSTM(hidden_size=128) over frames."""
    return _pilotnet_recurrent(spec, "lstm", **kwargs)


@register_model("pilotnet_gru")
def build_pilotnet_gru(spec: InputSpec, **kwargs: Any):
    """PilotNet's convolutions and fc 100 + GRU(hidden_size=128) over frames."""
    return _pilotnet_recurrent(spec, "gru", **kwargs)
