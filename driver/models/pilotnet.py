"""PilotNet: NVIDIA's single-frame CNN (Bojarski et al. 2016, arXiv:1604.07316, Figure 4), written literally.

The plain baseline every recipe must beat on held-out runs. The paper's layers at its 66x200x3 input::

    normalisation (fixed, not learned)                       66x200x3
    conv 24 k5 s2, conv 36 k5 s2, conv 48 k5 s2, ReLU each  -> 31x98 -> 14x47 -> 5x22
    conv 64 k3, conv 64 k3, ReLU each                       -> 3x20 -> 1x18
    flatten (64x1x18 = 1,152), fc 100, fc 50, fc 10 (ReLU each), fc -> outputs

252,219 parameters with the paper's one output (1/r); here the output layer predicts ``2 * horizon``
(steer, motor) values, and the mode vector (when the spec has modes) joins the flattened features before
fc 100. The normalisation maps our ``x / 255 - 0.5`` input to [-1, 1], the usual reading of the paper's
hard-coded normaliser. Smallest input: 61x61.

Its layers up to fc 100 (:class:`PilotNetTrunk`) are also the per-frame encoder of the recurrent
``pilotnet_gru`` and ``pilotnet_lstm`` (:mod:`driver.models.recurrent`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from driver.models.base import (
    DrivingModel,
    conv_out_size,
    make_output_activation,
    outputs_to_pairs,
    require_positive_sizes,
)
from driver.models.registry import register_model
from driver.models.spec import InputSpec


class FixedNormalization(nn.Module):
    """The paper's hard-coded first layer: ``x / 255 - 0.5`` in [-0.5, 0.5] scaled to [-1, 1]; no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 2.0


def pilotnet_convs(spec: InputSpec, arch: str = "pilotnet") -> tuple[nn.Sequential, int]:
    """The paper's five convolutions (ReLU each) and the flatten: (N, C, H, W) -> (N, features), and the
    number of features (64 x the last map's height x width). Raises naming the stage a small input empties."""
    height, width, stages = spec.height, spec.width, []
    for index, (kernel, stride) in enumerate(((5, 2), (5, 2), (5, 2), (3, 1), (3, 1)), start=1):
        height, width = (conv_out_size(side, kernel, stride) for side in (height, width))
        stages.append((f"conv{index}", height, width))
    require_positive_sizes(arch, spec, stages)
    convs = nn.Sequential(
        nn.Conv2d(spec.channels, 24, kernel_size=5, stride=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(24, 36, kernel_size=5, stride=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(36, 48, kernel_size=5, stride=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(48, 64, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Flatten(1),
    )
    return convs, 64 * height * width


def append_modes(features: Tensor, modes: Tensor | None, n_modes: int) -> Tensor:
    """The mode vector joined to flattened features (zeros when the spec has modes and none are given)."""
    if not n_modes:
        return features
    modes = features.new_zeros(len(features), n_modes) if modes is None else modes.to(features.dtype)
    return torch.cat([features, modes], 1)


class PilotNet(DrivingModel):
    """(N, C, H, W), (N, n_modes) -> (N, horizon, 2)."""

    def __init__(self, spec: InputSpec, output_activation: str = "none") -> None:
        super().__init__(spec)
        self.normalization = FixedNormalization()
        self.features, n_features = pilotnet_convs(spec)
        self.classifier = nn.Sequential(
            nn.Linear(n_features + spec.n_modes, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, 50),
            nn.ReLU(inplace=True),
            nn.Linear(50, 10),
            nn.ReLU(inplace=True),
            nn.Linear(10, spec.outputs),
        )
        self.output_activation = make_output_activation(output_activation)

    def forward_frames(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        x = append_modes(self.features(self.normalization(frames)), modes, self.spec.n_modes)  # (N, 1152) at 66x200
        raw = self.classifier(x)  # (N, 2*horizon)
        return self.output_activation(outputs_to_pairs(raw, self.spec.horizon))


class PilotNetTrunk(nn.Module):
    """PilotNet's normalisation, convolutions and first fully connected layer (``fc_width``, the paper's 100),
    the encoder of ``pilotnet_gru``/``pilotnet_lstm``: (N, C, H, W), (N, n_modes) -> (N, fc_width)."""

    def __init__(self, spec: InputSpec, fc_width: int = 100, dropout: float = 0.0, arch: str = "pilotnet") -> None:
        super().__init__()
        if fc_width < 1:
            raise ValueError(f"{arch}: fc_width={fc_width} must be >= 1")
        self.n_modes = spec.n_modes
        self.normalization = FixedNormalization()
        self.features, n_features = pilotnet_convs(spec, arch)
        self.fc = nn.Sequential(nn.Linear(n_features + spec.n_modes, fc_width), nn.ReLU(inplace=True),
                                nn.Dropout(p=dropout))
        self.out_features = fc_width

    def forward(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        return self.fc(append_modes(self.features(self.normalization(frames)), modes, self.n_modes))


@register_model("pilotnet")
def build_pilotnet(spec: InputSpec, **kwargs) -> PilotNet:
    """PilotNet, the paper's layers (252,219 parameters at 66x200x3 with one output; see the module)."""
    return PilotNet(spec, **kwargs)
