"""AlexNet driving model (the lab's Aug 2017 variant).

Lab layout at 94x168x12 (24,043,412 parameters with ``lab=True``: 128 mode planes)::

    conv 12->64 k11 s4 p2, ReLU, maxpool k3 s2            22x41 -> 10x20
    conv 64->192 k5 p2, ReLU, maxpool k3 s2               -> 4x9
    concat mode planes (lab: 128, 6 used)                 -> 320
    conv 320->384 k3 p1, conv 384->256 k3 p1, conv 256->256 k3 p1 (ReLU each), maxpool -> 1x4
    flatten (1024), dropout, fc 4096, ReLU, dropout, fc 4096, ReLU, fc -> 2*horizon

Smallest input: 63x63.
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

LAB_MODE_PLANES = 128


class AlexNet(DrivingModel):
    """(N, C, H, W), (N, n_modes) -> (N, horizon, 2)."""

    def __init__(
        self,
        spec: InputSpec,
        mode_planes: int | None = None,
        fc_width: int = 4096,
        dropout: float = 0.5,
        output_activation: str = "none",
    ) -> None:
        super().__init__(spec)
        height, width = (conv_out_size(side, 11, 4, 2) for side in (spec.height, spec.width))
        stages = [("conv1", height, width)]
        for stage in ("pool1", "pool2", "pool3"):
            height, width = (conv_out_size(side, 3, 2) for side in (height, width))
            stages.append((stage, height, width))
        require_positive_sizes("alexnet", spec, stages)

        self.mode_planes = resolve_mode_planes(spec, mode_planes)
        self.features_before_modes = nn.Sequential(
            nn.Conv2d(spec.channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.features_after_modes = nn.Sequential(
            nn.Conv2d(192 + self.mode_planes, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Flatten(1),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * height * width, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Linear(fc_width, spec.outputs),
        )
        self.output_activation = make_output_activation(output_activation)

    def forward_frames(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        x = self.features_before_modes(frames)  # (N, 192, 4, 9) at 94x168
        x = concat_mode_planes(x, modes, self.mode_planes)  # (N, 192 + planes, 4, 9)
        raw = self.classifier(self.features_after_modes(x))  # (N, 2*horizon)
        return self.output_activation(outputs_to_pairs(raw, self.spec.horizon))


@register_model("alexnet")
def build_alexnet(spec: InputSpec, lab: bool = False, mode_planes: int | None = None, **kwargs: Any) -> AlexNet:
    """AlexNet driver; ``lab=True`` uses the lab's 128 mode planes (24,043,412 params at the default spec)."""
    if lab and mode_planes is not None:
        raise ValueError("pass either lab=True or mode_planes, not both")
    return AlexNet(spec, mode_planes=LAB_MODE_PLANES if lab else mode_planes, **kwargs)
