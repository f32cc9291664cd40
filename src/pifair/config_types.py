"""Type checks of settings read from a config.yaml (or given to a settings dataclass).

A dataclass does not check its field types, so ``epochs: ten`` in a hand-edited config.yaml
would surface as a TypeError deep in training; here it is refused by name first.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .errors import ConfigError

__all__ = ["checked_settings", "settings_from_dict"]

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
