"""Small models: a LeNet-style CNN and LeNet-5 for 28x28 images, the fair-dp CNN, the HE CNN,
an MLP for tables."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..relu.sites import ActivationSite, DenseReLU, DenseTanh
from ._registry import register_model

__all__ = [
    "LeNet",
    "LeNet5",
    "FairDPCNN",
    "HECNN",
    "HECifarCNN",
    "MLP",
    "lenet",
    "lenet5",
    "fairdp_cnn",
    "he_cnn",
    "he_cifar",
    "mlp",
]

ActLayer = Callable[[], ActivationSite]


class LeNet(nn.Module):
    """Two conv-bn-act-avgpool stages and a two-layer head.

    Average pooling (not max pooling) keeps the model linear between sites, so every secure
    engine can run it once its sites are reduced or polynomial.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        act_layer: ActLayer,
        width: int = 16,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = act_layer()
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.act2 = act_layer()
        self.pool2 = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(2 * width * (h // 4) * (w // 4), 128)
        self.act3 = act_layer()
        self.fc2 = nn.Linear(128, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        return self.pool2(self.act2(self.bn2(self.conv2(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act3(self.fc1(torch.flatten(x, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class LeNet5(nn.Module):
    """LeNet-5 as published HE benchmarks run it on 28x28 digits (LeCun et al. 1998): conv 5x5
    to 6 channels (padding 2, so C1 is 28x28 as on the original 32x32 input), average pooling,
    conv 5x5 to 16 channels (10x10), average pooling, dense 400 -> 120 -> 84 -> classes, an
    activation after each convolution and hidden dense layer. Batch norm after each
    convolution (affine at inference: folded into the convolution by the HE compiler) keeps
    polynomial activations' inputs in range."""

    def __init__(
        self, *, num_classes: int, input_shape: tuple[int, ...], act_layer: ActLayer
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.act1 = act_layer()
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.act2 = act_layer()
        self.pool2 = nn.AvgPool2d(2)
        side = lambda n: (n // 2 - 4) // 2  # noqa: E731
        self.fc1 = nn.Linear(16 * side(h) * side(w), 120)
        self.act3 = act_layer()
        self.fc2 = nn.Linear(120, 84)
        self.act4 = act_layer()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        x = self.pool2(self.act2(self.bn2(self.conv2(x))))
        return self.fc3(self.act4(self.fc2(self.act3(self.fc1(torch.flatten(x, 1))))))


class FairDPCNN(nn.Module):
    """The CNN of the fair-dp experiments (Esipova et al. 2023): conv 32 -> conv 16, 3x3, tanh,
    max pooling, one linear layer. No batch norm, so it is DP-SGD compatible as is."""

    def __init__(
        self, *, num_classes: int, input_shape: tuple[int, ...], act_layer: ActLayer
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, 32, 3, 1)
        self.act1 = act_layer()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 16, 3, 1)
        self.act2 = act_layer()
        self.pool2 = nn.MaxPool2d(2)
        side = lambda n: ((n - 2) // 2 - 2) // 2  # noqa: E731
        self.fc = nn.Linear(16 * side(h) * side(w), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class HECNN(nn.Module):
    """CryptoNets-style CNN for HE (Dowlin et al. 2016): conv 5x5 stride 2 (5 channels), an
    activation, a 100-unit linear layer, an activation, the output layer. Small and shallow,
    so that after ``polyfit`` it runs under CKKS with batch-oriented packing in seconds."""

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        act_layer: ActLayer,
        channels: int = 5,
        hidden: int = 100,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv = nn.Conv2d(c, channels, 5, stride=2, padding=1)
        self.act1 = act_layer()
        side = lambda n: (n + 2 - 5) // 2 + 1  # noqa: E731
        self.fc1 = nn.Linear(channels * side(h) * side(w), hidden)
        self.act2 = act_layer()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv(x))
        return self.fc2(self.act2(self.fc1(torch.flatten(x, 1))))


class HECifarCNN(nn.Module):
    """A CIFAR-10 CNN sized for CKKS with one image per slot: every activation is a ciphertext,
    so the first stage is small (conv 5x5 stride 2 to 16 channels: 4,096 activations on
    32x32), average pooling halves each side before the wider conv 3x3 (64 channels at 8x8),
    then average pooling, a 256-unit dense layer and the output layer. Batch norm after each
    convolution (folded in by the HE compiler) keeps the polynomials' inputs in range."""

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        act_layer: ActLayer,
        channels: tuple[int, int] = (16, 64),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2 = channels
        self.conv1 = nn.Conv2d(c, c1, 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.act1 = act_layer()
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.act2 = act_layer()
        self.pool2 = nn.AvgPool2d(2)
        side = lambda n: ((n + 1) // 2) // 4  # noqa: E731
        self.fc1 = nn.Linear(c2 * side(h) * side(w), hidden)
        self.act3 = act_layer()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        x = self.pool2(self.act2(self.bn2(self.conv2(x))))
        return self.fc2(self.act3(self.fc1(torch.flatten(x, 1))))


class MLP(nn.Module):
    """Fully connected network for tabular data: (linear-act) x depth, then a linear head."""

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        act_layer: ActLayer,
        hidden: tuple[int, ...] = (256, 256),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), act_layer()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_ACTS: dict[str, ActLayer] = {"relu": DenseReLU, "tanh": DenseTanh}


def _act(act: str | ActLayer) -> ActLayer:
    if callable(act):
        return act
    if act not in _ACTS:
        raise ConfigError(f"unknown activation {act!r}; choose one of {sorted(_ACTS)}")
    return _ACTS[act]


@register_model("lenet", description="LeNet-style CNN for 28x28 images (ReLU, avg pooling)")
def lenet(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] = (1, 28, 28),
    act_layer: str | ActLayer = "relu",
    width: int = 16,
) -> LeNet:
    return LeNet(
        num_classes=num_classes, input_shape=input_shape, act_layer=_act(act_layer), width=width
    )


@register_model(
    "lenet5", description="LeNet-5: conv 5x5 6 -> 16 channels, avg pooling, dense 120-84"
)
def lenet5(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] = (1, 28, 28),
    act_layer: str | ActLayer = "relu",
) -> LeNet5:
    return LeNet5(num_classes=num_classes, input_shape=input_shape, act_layer=_act(act_layer))


@register_model("fairdp_cnn", description="fair-dp CNN: conv 32->16, 3x3, tanh, one linear layer")
def fairdp_cnn(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] = (1, 28, 28),
    act_layer: str | ActLayer = "tanh",
) -> FairDPCNN:
    return FairDPCNN(num_classes=num_classes, input_shape=input_shape, act_layer=_act(act_layer))


@register_model("he_cnn", description="CryptoNets-style CNN for HE: conv 5x5/2 (5 ch), 100 units")
def he_cnn(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] = (1, 28, 28),
    act_layer: str | ActLayer = "relu",
    channels: int = 5,
    hidden: int = 100,
) -> HECNN:
    return HECNN(
        num_classes=num_classes,
        input_shape=input_shape,
        act_layer=_act(act_layer),
        channels=channels,
        hidden=hidden,
    )


@register_model(
    "he_cifar", description="CIFAR-10 CNN sized for CKKS: conv 5x5/2 16 ch, conv 3x3 64 ch, 256"
)
def he_cifar(
    *,
    num_classes: int,
    input_shape: tuple[int, ...] = (3, 32, 32),
    act_layer: str | ActLayer = "relu",
    channels: tuple[int, int] = (16, 64),
    hidden: int = 256,
) -> HECifarCNN:
    return HECifarCNN(
        num_classes=num_classes,
        input_shape=input_shape,
        act_layer=_act(act_layer),
        channels=tuple(channels),  # type: ignore[arg-type]
        hidden=hidden,
    )


@register_model(
    "mlp", description="MLP for tabular data (2 x 256 hidden units)", input_kind="tabular"
)
def mlp(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    act_layer: str | ActLayer = "relu",
    hidden: tuple[int, ...] = (256, 256),
) -> MLP:
    return MLP(
        num_classes=num_classes,
        input_shape=input_shape,
        act_layer=_act(act_layer),
        hidden=tuple(hidden),
    )
