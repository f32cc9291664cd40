"""Models pifair did not write: ``torchvision:NAME``, ``timm:NAME`` and ``path/file.py:Class``.

Each is built as its library builds it (no pretrained weights: there is no download; weights
come from training or from the user, ``pifair import``), with ``num_classes`` and input
channels from the data set, then converted by graph so that every ReLU call is a site of its
own (:func:`pifair.relu.convert_activations`). The converted model is checked against the
built one before use.

A user's file is loaded from the path given (made absolute, so a run's record finds it from
any working directory); its class is built with the arguments its signature takes among
``num_classes``, ``in_channels`` and ``in_chans``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..extras import require, require_torchvision

__all__ = ["ExternalName", "parse_external", "build_external", "import_torchvision"]

_LIBRARIES = ("torchvision", "timm")


@dataclass(frozen=True)
class ExternalName:
    """A parsed external model name: the library (or ``file``) and what it builds."""

    source: str  # "torchvision", "timm" or "file"
    name: str  # the builder's name, or the class name
    path: str | None = None  # the file, for source == "file"

    def __str__(self) -> str:
        return f"{self.path}:{self.name}" if self.source == "file" else f"{self.source}:{self.name}"


def parse_external(spec: str) -> ExternalName | None:
    """``torchvision:resnet18`` / ``timm:resnet18`` / ``path/to/file.py:Class``, or None for a
    name of pifair's own registry. A file path is made absolute."""
    library, sep, rest = spec.partition(":")
    if sep and library in _LIBRARIES:
        if not rest:
            raise ConfigError(f"model {spec!r}: give the builder's name, e.g. {library}:resnet18")
        return ExternalName(library, rest)
    path, sep, cls = spec.rpartition(":")
    if sep and path.endswith(".py"):
        if not cls.isidentifier():
            raise ConfigError(f"model {spec!r}: {cls!r} is not a class name (FILE.py:ClassName)")
        return ExternalName("file", cls, str(Path(path).expanduser().resolve()))
    return None


def import_torchvision() -> types.ModuleType:
    """torchvision, importable beside torch's CPU wheel (see ``extras.require_torchvision``)."""
    return require_torchvision("torchvision models")


def _import_timm() -> types.ModuleType:
    import_torchvision()  # timm imports torchvision
    return require("timm", extra="vision", purpose="timm models")


def _torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    tv = import_torchvision()
    classification = tv.models.list_models(module=tv.models)
    if name not in classification:
        raise UnknownNameError("torchvision classification model", name, classification)
    try:
        model = tv.models.get_model(name, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"torchvision:{name} cannot be built: {err}") from None
    if in_channels != 3:
        _set_input_channels(model, name, in_channels)
    return model


def _set_input_channels(model: nn.Module, name: str, in_channels: int) -> None:
    """torchvision builds for RGB: the first convolution is rebuilt for ``in_channels``."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].groups != 1:
        raise ConfigError(
            f"torchvision:{name}: cannot adapt its input to {in_channels} channel(s) (no plain "
            "first convolution); use a data set with 3 channels"
        )
    path, conv = first
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _timm_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    timm = _import_timm()
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:20] or timm.list_models()[:20]
        raise UnknownNameError("timm model", name, close)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def _file_model(path: str, cls_name: str, num_classes: int, in_channels: int) -> nn.Module:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model file {file} does not exist; give FILE.py:ClassName")
    key = "pifair_user_model_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
    module = sys.modules.get(key)
    if module is None:
        spec = importlib.util.spec_from_file_location(key, file)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {file} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # pickled modules of this file find their class here
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[key]
            raise ConfigError(f"importing {file} failed: {type(err).__name__}: {err}") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == key
        )
        raise ConfigError(
            f"{file} has no nn.Module class {cls_name!r}; its nn.Module classes: "
            f"{', '.join(found) or 'none'}"
        )
    params = inspect.signature(cls).parameters
    offered = {"num_classes": num_classes, "in_channels": in_channels, "in_chans": in_channels}
    kwargs = {k: v for k, v in offered.items() if k in params}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(
            f"{file}:{cls_name} cannot be built with {kwargs or 'no arguments'}: {err}; pifair "
            "builds a user class with no arguments or with num_classes / in_channels"
        ) from None


def build_external(
    name: ExternalName, *, num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """The model ``name`` builds, as its library builds it (not converted yet)."""
    in_channels = int(input_shape[0]) if len(input_shape) == 3 else 0
    if name.source in ("torchvision", "timm") and len(input_shape) != 3:
        raise ConfigError(
            f"{name} takes images (C, H, W); this data set's samples have shape {input_shape}"
        )
    if name.source == "torchvision":
        return _torchvision_model(name.name, num_classes, in_channels)
    if name.source == "timm":
        return _timm_model(name.name, num_classes, in_channels)
    assert name.path is not None
    return _file_model(name.path, name.name, num_classes, in_channels)
