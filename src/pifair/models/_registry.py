"""Model registry: ``create_model(name, ...)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..relu.convert import convert_activations
from .external import build_external, parse_external

__all__ = [
    "ModelSpec",
    "register_model",
    "create_model",
    "build_architecture",
    "finish_model",
    "list_models",
]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model family: its factory and what inputs it expects."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    input_kind: str  # "image" or "tabular"


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, description: str, input_kind: str = "image"):
    """Decorator: register ``factory(*, num_classes, input_shape, **options)`` under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = ModelSpec(name, factory, description, input_kind)
        return factory

    return wrap


def list_models() -> list[str]:
    """Names of the registered models.

    Examples
    --------
    >>> import pifair
    >>> pifair.list_models()  # doctest: +NORMALIZE_WHITESPACE
    ['fairdp_cnn', 'he_cifar', 'he_cnn', 'lenet', 'lenet5', 'mlp', 'resnet18', 'resnet18_gn',
     'wrn22_8']
    """
    return sorted(_MODELS)


def get_model_spec(name: str) -> ModelSpec:
    if name not in _MODELS:
        raise UnknownNameError("model", name, list(_MODELS))
    return _MODELS[name]


def build_architecture(
    name: str, *, num_classes: int, input_shape: tuple[int, ...], **options
) -> nn.Module:
    """Model ``name`` as its builder makes it, before :func:`finish_model` (where a user's
    weights for an external model are loaded: they name the builder's modules)."""
    external = parse_external(name)
    if external is not None:
        if options:
            raise ConfigError(f"model {name!r} takes no pifair options, got {sorted(options)}")
        return build_external(external, num_classes=num_classes, input_shape=tuple(input_shape))
    spec = get_model_spec(name)
    try:
        return spec.factory(num_classes=num_classes, input_shape=tuple(input_shape), **options)
    except TypeError as err:
        raise ConfigError(
            f"model {name!r} does not take these options {sorted(options)}: {err}"
        ) from err


def finish_model(
    model: nn.Module, name: str, *, num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """``model`` checked on the input shape and class count, every ReLU call a site of its own
    (an external model is converted by graph, :func:`pifair.relu.convert_activations`)."""
    _check_shapes(model, name, tuple(input_shape), num_classes)
    if parse_external(name) is not None:
        model = convert_activations(model, tuple(input_shape))
    return model


def create_model(
    name: str, *, num_classes: int, input_shape: tuple[int, ...], **options
) -> nn.Module:
    """Build model ``name`` for inputs of per-sample ``input_shape`` and ``num_classes`` outputs.

    ``name`` is a registered model (``pifair list``), ``torchvision:NAME`` or ``timm:NAME`` (any
    classification builder of the library, no pretrained weights) or ``path/to/file.py:Class``.
    ``options`` are the family's keyword arguments (e.g. ``snl_variant=True`` for resnet18,
    ``act_layer=DenseTanh``).

    Examples
    --------
    >>> import pifair
    >>> model = pifair.create_model("resnet18", num_classes=10, input_shape=(3, 32, 32),
    ...                             snl_variant=True)
    >>> pifair.count_relus(model, (3, 32, 32)).total
    491520
    """
    model = build_architecture(name, num_classes=num_classes, input_shape=input_shape, **options)
    return finish_model(model, name, num_classes=num_classes, input_shape=input_shape)


def _check_shapes(
    model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """One forward pass of a zero sample, so that a model too deep for small inputs (or built
    for another shape or class count) is refused by name here, not mid-training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except RuntimeError as err:
        raise ConfigError(
            f"model {name!r} cannot take inputs of shape {input_shape}: "
            f"{str(err).splitlines()[0]}. "
            f"Choose a model for this data set (pifair list), e.g. --model mlp"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model {name!r} outputs {got} per sample where the data set has {num_classes} "
            f"classes; build it with num_classes={num_classes} (a user class takes a "
            "num_classes argument, or its last layer must have that many outputs)"
        )
