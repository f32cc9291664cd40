"""Wide ResNet 22-8 (Zagoruyko & Komodakis 2016), pre-activation blocks.

Follows the ReLU count used in the PI literature (1,359,872 at 32x32): the classifier reads the
last block's output after batch norm, without a final ReLU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..relu.sites import ActivationSite, DenseReLU
from ._registry import register_model

__all__ = ["WideBlock", "WideResNet", "wrn22_8"]

ActLayer = Callable[[], ActivationSite]


class WideBlock(nn.Module):
    """bn-act-conv-bn-act-conv with an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, act_layer: ActLayer) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = act_layer()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act_layer()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs; every nonlinearity is an activation site."""

    def __init__(
        self,
        *,
        depth: int,
        widen: int,
        num_classes: int,
        in_channels: int = 3,
        act_layer: ActLayer = DenseReLU,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths[1:]):
            blocks = [
                WideBlock(
                    in_planes if j == 0 else planes,
                    planes,
                    (1 if i == 0 else 2) if j == 0 else 1,
                    act_layer,
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.block3(self.block2(self.block1(self.conv1(x)))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("wrn22_8", description="Wide ResNet 22-8 (1,359,872 ReLUs at 32x32)")
def wrn22_8(
    *, num_classes: int, input_shape: tuple[int, ...] = (3, 32, 32), act_layer: ActLayer = DenseReLU
) -> WideResNet:
    return WideResNet(
        depth=22, widen=8, num_classes=num_classes, in_channels=input_shape[0], act_layer=act_layer
    )
