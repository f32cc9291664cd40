"""Optional dependency stacks: import them where used, with a clear error when absent."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["require", "require_torchvision"]


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install.

    >>> require("opacus", extra="dp", purpose="DP-SGD")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(package or module.split(".")[0], extra, purpose) from err


def require_torchvision(purpose: str, module: str = "torchvision") -> ModuleType:
    """``torchvision`` (or its ``module``), importable beside the CPU wheel of torch.

    PyPI's torchvision is built against torch's CUDA wheel: beside the CPU wheel its compiled
    operators (nms, roi_align) do not load, and ``import torchvision`` then fails in
    ``_meta_registrations`` ("operator torchvision::nms does not exist", pytorch/vision#9085).
    Those registrations only describe the missing operators to torch's compiler; model builders
    and data sets need none of them. So on that one failure the import is retried without them.
    """
    try:
        require("torchvision", extra="vision", purpose=purpose)
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        sys.modules["torchvision._meta_registrations"] = ModuleType(
            "torchvision._meta_registrations"
        )
    return require(module, extra="vision", purpose=purpose, package="torchvision")
