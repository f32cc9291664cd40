"""Settings declared once, and checked: a field's default, help and bounds in one place.

:func:`setting` declares a field with its help text (the command line reads it) and its bounds
(:func:`check_settings` refuses a value outside them, naming the field). A dataclass does not check
its field types either, so ``epochs: ten`` in a hand-edited config.yaml would surface as a
TypeError deep in training; :func:`settings_from_dict` refuses it by name first, and refuses a
key no field has.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .errors import ConfigError

__all__ = [
    "check_settings",
    "checked_settings",
    "help_of",
    "setting",
    "settings_from_dict",
    "within_bounds",
    "without_none",
]

_BOUNDS = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    default_factory: Any = dataclasses.MISSING,
    error: type[ConfigError] | type[ValueError] = ConfigError,
    **bounds: float,
) -> Any:
    """A settings field: its default, its ``help`` (shown by ``--help``) and its bounds
    (``ge``, ``gt``, ``le``, ``lt``; None always passes), declared once. ``error`` is the
    exception a value out of bounds raises (a privacy parameter's is PrivacyParameterError)."""
    unknown = sorted(set(bounds) - set(_BOUNDS))
    if unknown:
        raise TypeError(f"unknown bounds {unknown}; use {', '.join(_BOUNDS)}")
    metadata = {"help": help, "bounds": bounds, "error": error}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(cls: type, name: str) -> str:
    """The help of field ``name`` of settings dataclass ``cls`` (a job that overrides another's
    setting says the same)."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def within_bounds(value: float, bounds: dict[str, float]) -> bool:
    """Whether ``value`` is finite and meets every bound of a :func:`setting` declaration
    (``{"ge": 0, "lt": 1}``)."""
    return math.isfinite(value) and all(_BOUNDS[k][1](value, b) for k, b in bounds.items())


def check_settings(settings: Any, *, prefix: str = "") -> None:
    """Refuse a field of dataclass instance ``settings`` that is not finite (NaN, inf), outside
    its declared bounds or not one of its ``Literal`` choices, naming it (``prefix``: its
    section, e.g. ``finetune.``).
    Call it from ``__post_init__``: every way of building the settings is then checked."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        choices = typing.get_args(without_none(hints[f.name]))
        if (
            typing.get_origin(without_none(hints[f.name])) is typing.Literal
            and value not in choices
        ):
            raise ConfigError(
                f"{prefix}{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}"
            )
        error = f.metadata.get("error", ConfigError)
        if isinstance(value, float) and not math.isfinite(value):
            raise error(
                f"{prefix}{f.name} must be a finite number, got {value}; fix it in the config or "
                "on the command line"
            )
        for kind, limit in f.metadata.get("bounds", {}).items():
            symbol, holds = _BOUNDS[kind]
            if not holds(value, limit):
                raise error(
                    f"{prefix}{f.name} must be {symbol} {limit:g}, got {value}; fix it in the "
                    "config or on the command line"
                )


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def checked_settings(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each field of dataclass ``cls`` checked against its type (ints are
    accepted for floats and converted); unknown keys pass through for the caller to judge."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.name in values:
            out[f.name] = _checked(f.name, hints[f.name], values[f.name])
    return out


def settings_from_dict(
    cls: type, values: dict[str, Any], *, ignore: tuple[str, ...] = ("command",)
) -> Any:
    """Settings dataclass ``cls`` built from a config mapping, the one way every job and
    config is read: an unknown key is refused by name (a typo must not be silently dropped),
    every field's type checked. Keys in ``ignore`` are bookkeeping of the run folder."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known - set(ignore))
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} settings {unknown}; known: {', '.join(sorted(known))}"
        )
    return cls(**checked_settings(cls, {k: v for k, v in values.items() if k in known}))


def without_none(tp: Any) -> Any:
    """``X`` for ``X | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _checked(name: str, tp: Any, value: Any) -> Any:
    args = typing.get_args(tp)
    optional = (isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union) and type(
        None
    ) in args
    if optional:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else tp
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"setting {name!r} must be one of {', '.join(map(str, choices))}, got {value!r}; "
                f"fix it in the config or on the command line"
            )
        return value
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # containers and nested settings: their own constructors check them
        return value
    if not ok:
        raise ConfigError(
            f"setting {name!r} must be {_NAMES[tp]}{' or null' if optional else ''}, "
            f"got {value!r} ({type(value).__name__}); fix it in the config or on the command line"
        )
    return value
