"""Z2Color: the lab's baseline driving network (Caffe 2016, PyTorch port 2017).

Lab layout at 94x168x12 (1,578,740 parameters with 20 outputs, the default)::

    conv1 12->96 k11 s3, ReLU, maxpool k3 s2       28x53 -> 13x26
    concat mode planes (6)                          -> 102
    conv2 102->256 k3 s2 groups 2, ReLU, maxpool     6x12 -> 2x5
    flatten (2560), ip1 -> 512, ReLU, ip2 -> 2*horizon

conv2 is grouped, so the mode planes are padded with zero planes until ``conv1_channels + planes`` is a
multiple of ``groups``. Smallest input: 53x53 (pool2 needs a 3x3 map).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from driver.models.base import (
    DrivingModel,
    concat_mode_planes,
    conv_out_size,
    make_output_activation,
    outputs_to_pairs,
    require_positive_sizes,
    resolve_mode_planes,
)
from driver.models.registry import register_model
from driver.models.spec import InputSpec


class Z2ColorTrunk(nn.Module):
    """conv1 -> pool -> modes -> grouped conv2 -> pool -> ip1: (N, C, H, W), (N, n_modes) -> (N, fc_width)."""

    def __init__(
        self,
        spec: InputSpec,
        mode_planes: int | None = None,
        conv1_channels: int = 96,
        conv2_channels: int = 256,
        groups: int = 2,
        fc_width: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if conv1_channels % groups or conv2_channels % groups:
            raise ValueError(f"conv1_channels and conv2_channels must be multiples of groups={groups}")
        height, width = (conv_out_size(side, 11, 3) for side in (spec.height, spec.width))
        stages = [("conv1", height, width)]
        height, width = (conv_out_size(side, 3, 2) for side in (height, width))
        stages.append(("pool1", height, width))
        height, width = (conv_out_size(side, 3, 2) for side in (height, width))
        stages.append(("conv2", height, width))
        height, width = (conv_out_size(side, 3, 2) for side in (height, width))
        stages.append(("pool2", height, width))
        require_positive_sizes("z2color", spec, stages)

        self.mode_planes = resolve_mode_planes(spec, mode_planes)
        self.mode_planes += (-(conv1_channels + self.mode_planes)) % groups  # grouped conv2 needs it
        self.conv1 = nn.Sequential(
            nn.Conv2d(spec.channels, conv1_channels, kernel_size=11, stride=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(conv1_channels + self.mode_planes, conv2_channels, kernel_size=3, stride=2, groups=groups),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Flatten(1),
        )
        self.ip1 = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(conv2_channels * height * width, fc_width), nn.ReLU(inplace=True)
        )
        self.out_features = fc_width
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        x = self.conv1(frames)  # (N, 96, 13, 26) at 94x168
        x = concat_mode_planes(x, modes, self.mode_planes)  # (N, 96 + planes, 13, 26)
        return self.ip1(self.conv2(x))  # (N, 512)


class Z2Color(DrivingModel):
    """Z2Color trunk + ip2: (N, C, H, W) -> (N, horizon, 2)."""

    def __init__(
        self, spec: InputSpec, output_activation: str = "none", dropout: float = 0.0, **trunk_kwargs: Any
    ) -> None:
        super().__init__(spec)
        self.features = Z2ColorTrunk(spec, dropout=dropout, **trunk_kwargs)
        self.ip2 = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.features.out_features, spec.outputs))
        nn.init.xavier_uniform_(self.ip2[1].weight)
        nn.init.zeros_(self.ip2[1].bias)
        self.output_activation = make_output_activation(output_activation)

    def forward_frames(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        raw = self.ip2(self.features(frames, modes))  # (N, 2*horizon)
        return self.output_activation(outputs_to_pairs(raw, self.spec.horizon))


def z2color_mode_planes(lab: bool, mode_planes: int | None) -> int | None:
    """The lab's Z2Color used one plane per mode, which is also the default."""
    if lab and mode_planes is not None:
        raise ValueError("pass either lab=True or mode_planes, not both")
    return mode_planes


@register_model("z2color")
def build_z2color(spec: InputSpec, lab: bool = False, mode_planes: int | None = None, **kwargs: Any) -> Z2Color:
    """Z2Color; the defaults are the lab's (1,578,740 params at the default spec); ``lab=True`` is a no-op."""
    return Z2Color(spec, mode_planes=z2color_mode_planes(lab, mode_planes), **kwargs)
