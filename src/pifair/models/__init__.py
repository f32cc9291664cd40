"""Model zoo with a registry: every nonlinearity is an activation site (docs/reductions.md)."""

from . import resnet, small, wrn  # noqa: F401  (registers the families)
from ._registry import (
    ModelSpec,
    build_architecture,
    create_model,
    finish_model,
    get_model_spec,
    list_models,
    register_model,
)
from .resnet import ResNet
from .small import MLP, FairDPCNN, LeNet
from .wrn import WideResNet

__all__ = [
    "MLP",
    "FairDPCNN",
    "LeNet",
    "ModelSpec",
    "ResNet",
    "build_architecture",
    "finish_model",
    "WideResNet",
    "create_model",
    "get_model_spec",
    "list_models",
    "register_model",
]
