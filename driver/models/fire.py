"""The SqueezeNet Fire module, written as torchvision's ``squeezenet.py`` does."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Fire(nn.Module):
    """1x1 squeeze, then 1x1 and 3x3 expand branches concatenated on channels.

    (N, inplanes, h, w) -> (N, expand1x1_planes + expand3x3_planes, h, w).
    """

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__()
        for name, value in (
            ("inplanes", inplanes),
            ("squeeze_planes", squeeze_planes),
            ("expand1x1_planes", expand1x1_planes),
            ("expand3x3_planes", expand3x3_planes),
        ):
            if value < 1:
                raise ValueError(f"Fire {name} must be >= 1, got {value}")
        self.inplanes = inplanes
        self.out_channels = expand1x1_planes + expand3x3_planes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )
