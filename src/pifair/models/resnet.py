"""ResNet18 with the CIFAR stem (3x3 conv, no max pool), as used by SNL and most PI papers.

``snl_variant=True`` drops the ReLU after the stem conv, as in SNL's code: 491,520 ReLUs at
32x32 instead of 557,056. ``width`` scales every stage's channels (64 is ResNet18; 16 is the
CPU-scale model of the linearization benchmarks, a quarter of the ReLUs). ``resnet18_gn`` swaps
batch norm for group norm: batch statistics mix the samples of a batch, so DP-SGD's per-sample
gradients need a per-sample normalisation (De et al. 2022 train their DP ResNets with it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..relu.sites import ActivationSite, DenseReLU
from ._registry import register_model

__all__ = ["BasicBlock", "ResNet", "group_norm", "resnet18", "resnet18_gn"]

ActLayer = Callable[[], ActivationSite]
NormLayer = Callable[[int], nn.Module]


def group_norm(channels: int) -> nn.GroupNorm:
    """Group norm with up to 16 groups (De et al.'s DP ResNets), fewer for narrow layers."""
    return nn.GroupNorm(min(16, channels), channels)


class BasicBlock(nn.Module):
    """conv-bn-act-conv-bn (+ shortcut) -act."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        act_layer: ActLayer,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), norm_layer(planes)
            )
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet with BasicBlocks; every nonlinearity is an activation site."""

    def __init__(
        self,
        blocks: tuple[int, ...],
        *,
        num_classes: int,
        in_channels: int = 3,
        act_layer: ActLayer = DenseReLU,
        stem_act: bool = True,
        width: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"ResNet width must be >= 1, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.act1 = act_layer() if stem_act else nn.Identity()
        layers, in_planes = [], width
        for i, n in enumerate(blocks):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(
                    BasicBlock(in_planes, planes, stride if j == 0 else 1, act_layer, norm_layer)
                )
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("resnet18", description="ResNet18, CIFAR stem (557,056 ReLUs at 32x32)")
def resnet18(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] = (3, 32, 32),
    act_layer: ActLayer = DenseReLU,
    snl_variant: bool = False,
    width: int = 64,
) -> ResNet:
    """ResNet18; ``snl_variant`` removes the stem ReLU (SNL's count: 491,520); ``width`` is the
    first stage's channels (64: ResNet18)."""
    return ResNet(
        (2, 2, 2, 2),
        num_classes=num_classes,
        in_channels=input_shape[0],
        act_layer=act_layer,
        stem_act=not snl_variant,
        width=width,
    )


@register_model(
    "resnet18_gn",
    description="ResNet18 with group norm for DP-SGD, CIFAR stem, width 16 (139,264 ReLUs)",
)
def resnet18_gn(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] = (3, 32, 32),
    act_layer: ActLayer = DenseReLU,
    width: int = 16,
) -> ResNet:
    """ResNet18 with group norm in place of batch norm (trainable with per-sample gradients)."""
    return ResNet(
        (2, 2, 2, 2),
        num_classes=num_classes,
        in_channels=input_shape[0],
        act_layer=act_layer,
        width=width,
        norm_layer=group_norm,
    )
