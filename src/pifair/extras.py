"""Optional dependency stacks: import them where used, with a clear error when absent."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["require"]


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install.

    >>> require("opacus", extra="dp", purpose="DP-SGD")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(package or module.split(".")[0], extra, purpose) from err
