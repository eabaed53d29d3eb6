"""SqueezeNet driving model (Iandola et al. 2016, v1.1 layout as the lab's PyTorch port).

Lab layout at 94x168x12 (739,988 parameters with 20 outputs and ``lab=True``)::

    conv 12->64 k3 s2, ReLU, maxpool k3 s2 (ceil)            46x83 -> 23x41
    Fire(64, 16, 64, 64)                                      -> 128
    concat mode planes (lab: 128 planes, 6 used)              -> 256
    Fire(256, 16, 64, 64), maxpool                            -> 128 @ 11x20
    Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), maxpool -> 256 @ 5x10
    Fire(256, 48, 192, 192), Fire(384, 48, 192, 192)
    Fire(384, 64, 256, 256), Fire(512, 64, 256, 256)          -> 512 @ 5x10
    dropout 0.5, conv 1x1 -> 2*horizon, global average pool

The paper's design knobs generate these widths: Fire i expands to ``e_i = base_width + width_increment *
(i // fire_frequency)`` channels, ``pct_3x3`` of them 3x3, and squeezes to ``squeeze_ratio * e_i``.
``bypass`` adds the paper's residual paths: "simple" around Fires whose input and output widths match,
"complex" also a 1x1 convolution around the others. The lab averaged only the left 5x5 window of the final
5x10 map (AvgPool k5 s6); here the pool is global, which has no parameters and uses the whole image.
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
from driver.models.fire import Fire
from driver.models.registry import register_model
from driver.models.spec import InputSpec

LAB_MODE_PLANES = 128
BYPASS_KINDS = ("none", "simple", "complex")
NUM_FIRES = 8
POOL_AFTER_FIRES = (1, 3)  # max-pool after the 2nd and 4th Fire (SqueezeNet v1.1)
MODES_BEFORE_FIRE = 1  # mode planes join the input of the 2nd Fire, as in the lab


def fire_widths(
    base_width: int, width_increment: int, fire_frequency: int, squeeze_ratio: float, pct_3x3: float
) -> list[tuple[int, int, int]]:
    """(squeeze, expand1x1, expand3x3) planes of the 8 Fire modules from the paper's knobs."""
    if not 0.0 < squeeze_ratio <= 1.0:
        raise ValueError(f"squeeze_ratio={squeeze_ratio} must be in (0, 1]")
    if not 0.0 < pct_3x3 < 1.0:
        raise ValueError(f"pct_3x3={pct_3x3} must be in (0, 1) so both expand branches exist")
    if base_width < 2 or width_increment < 0 or fire_frequency < 1:
        raise ValueError(f"base_width={base_width} must be >= 2, width_increment={width_increment} >= 0 and "
                         f"fire_frequency={fire_frequency} >= 1")
    widths = []
    for index in range(NUM_FIRES):
        expand = base_width + width_increment * (index // fire_frequency)
        expand3x3 = round(expand * pct_3x3)
        expand3x3 = min(max(expand3x3, 1), expand - 1)
        squeeze = max(1, round(expand * squeeze_ratio))
        widths.append((squeeze, expand - expand3x3, expand3x3))
    return widths


class SqueezeNetTrunk(nn.Module):
    """Stem + 8 Fire modules with mode injection: (N, C, H, W), (N, n_modes) -> (N, out_channels, h, w)."""

    def __init__(
        self,
        spec: InputSpec,
        mode_planes: int | None = None,
        stem_channels: int = 64,
        base_width: int = 128,
        width_increment: int = 128,
        fire_frequency: int = 2,
        squeeze_ratio: float = 0.125,
        pct_3x3: float = 0.5,
        bypass: str = "none",
    ) -> None:
        super().__init__()
        if bypass not in BYPASS_KINDS:
            raise ValueError(f"bypass={bypass!r} is not one of {BYPASS_KINDS}")
        height, width = (conv_out_size(side, 3, 2) for side in (spec.height, spec.width))
        stages = [("stem conv", height, width)]
        height, width = (conv_out_size(side, 3, 2, ceil_mode=True) for side in (height, width))
        stages.append(("stem pool", height, width))
        for index in POOL_AFTER_FIRES:
            height, width = (conv_out_size(side, 3, 2, ceil_mode=True) for side in (height, width))
            stages.append((f"pool after fire {index}", height, width))
        require_positive_sizes("squeezenet", spec, stages)
        self.feature_size = (height, width)

        self.mode_planes = resolve_mode_planes(spec, mode_planes)
        self.stem = nn.Sequential(
            nn.Conv2d(spec.channels, stem_channels, kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        )
        self.fires = nn.ModuleList()
        self.bypasses = nn.ModuleDict()  # fire index -> 1x1 conv ("complex") or Identity ("simple")
        channels = stem_channels
        for index, (squeeze, expand1x1, expand3x3) in enumerate(
            fire_widths(base_width, width_increment, fire_frequency, squeeze_ratio, pct_3x3)
        ):
            extra = self.mode_planes if index == MODES_BEFORE_FIRE else 0
            fire = Fire(channels + extra, squeeze, expand1x1, expand3x3)
            self.fires.append(fire)
            if bypass != "none" and fire.out_channels == channels:
                self.bypasses[str(index)] = nn.Identity()
            elif bypass == "complex":
                self.bypasses[str(index)] = nn.Conv2d(channels, fire.out_channels, kernel_size=1, bias=False)
            channels = fire.out_channels
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.out_channels = channels

    def forward(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        x = self.stem(frames)
        for index, fire in enumerate(self.fires):
            fire_input = concat_mode_planes(x, modes, self.mode_planes) if index == MODES_BEFORE_FIRE else x
            out = fire(fire_input)
            if str(index) in self.bypasses:
                out = out + self.bypasses[str(index)](x)  # bypass from the features, not the mode planes
            x = self.pool(out) if index in POOL_AFTER_FIRES else out
        return x


class SqueezeNet(DrivingModel):
    """SqueezeNet trunk + 1x1 conv head: (N, C, H, W) -> (N, horizon, 2); no fully connected layers."""

    def __init__(
        self, spec: InputSpec, dropout: float = 0.5, output_activation: str = "none", **trunk_kwargs: Any
    ) -> None:
        super().__init__(spec)
        self.features = SqueezeNetTrunk(spec, **trunk_kwargs)
        final_conv = nn.Conv2d(self.features.out_channels, spec.outputs, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.output_activation = make_output_activation(output_activation)
        init_squeezenet_weights(self, final_conv)

    def forward_frames(self, frames: Tensor, modes: Tensor | None) -> Tensor:
        raw = self.classifier(self.features(frames, modes))  # (N, 2*horizon)
        return self.output_activation(outputs_to_pairs(raw, self.spec.horizon))


def init_squeezenet_weights(module: nn.Module, final_conv: nn.Conv2d | None = None) -> None:
    """torchvision's init: Kaiming-uniform convs, N(0, 0.01) final conv, zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            if layer is final_conv:
                nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def squeezenet_mode_planes(lab: bool, mode_planes: int | None) -> int | None:
    """The lab preset only changes the number of mode planes (128, of which n_modes are used)."""
    if lab and mode_planes is not None:
        raise ValueError("pass either lab=True or mode_planes, not both")
    return LAB_MODE_PLANES if lab else mode_planes


@register_model("squeezenet")
def build_squeezenet(spec: InputSpec, lab: bool = False, mode_planes: int | None = None, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet v1.1-style driver; ``lab=True`` reproduces the lab's 128 mode planes (739,988 params)."""
    return SqueezeNet(spec, mode_planes=squeezenet_mode_planes(lab, mode_planes), **kwargs)
