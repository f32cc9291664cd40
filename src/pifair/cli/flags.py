"""Command-line flags generated from the job dataclasses, and the one config merge.

A :class:`Flag` binds ``--name`` to one or more fields of a job's config (dotted for nested
settings: ``finetune.epochs``). Its type, choices (from ``Literal``), the default shown in
``--help`` and the help text itself come from the dataclass field
(:func:`pifair.config_types.setting`), so every setting is declared once, in its dataclass; a
flag's own help only says what differs for that command.
Flags not given on the command line are absent from the namespace (``SUPPRESS``): a resumed or
re-run config keeps its own values, and explicit flags override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config_types import without_none
from ..errors import ConfigError
from ..runs import find_parent, read_config

__all__ = [
    "AtLeast",
    "Flag",
    "add_flags",
    "at_least",
    "config_from_flags",
    "dataclass_flags",
    "numeric_options",
    "declared_bounds",
    "declared_field",
    "declared_type",
    "require_keys",
    "resume_or_config",
    "run_folder",
]

_UNSET: Any = object()


@dataclasses.dataclass(frozen=True)
class Flag:
    """``name`` sets the config fields at ``paths`` (``from`` is a job's ``from_run``)."""

    name: str
    paths: tuple[str, ...]
    help: str = ""  # empty: the field's own help
    parse: Callable[[str], Any] | None = None  # instead of the field's type (lists)
    const: Any = _UNSET  # a switch that stores this value
    default_text: str | None = None  # what the default means, when the field's value does not say

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


def _walk(cls: type, path: str) -> tuple[dataclasses.Field, Any]:
    """The field at dotted ``path`` of dataclass ``cls`` (``from`` is ``from_run``) and its
    type hint."""
    head, _, rest = path.partition(".")
    name = "from_run" if head == "from" else head
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if field is None:
        raise AssertionError(f"{cls.__name__} has no field {name!r}")  # a wrong flag table
    hint = typing.get_type_hints(cls)[name]
    return _walk(hint, rest) if rest else (field, hint)


def declared_field(cls: type, path: str) -> dataclasses.Field:
    """The dataclass field a flag's ``path`` sets."""
    return _walk(cls, path)[0]


def declared_type(cls: type, path: str) -> Any:
    """The type hint of the field a flag's ``path`` sets."""
    return _walk(cls, path)[1]


def _resolve(cls: type, path: str) -> tuple[Any, Any, str]:
    """(type hint, default, help) of the field at dotted ``path`` of dataclass ``cls``."""
    field, hint = _walk(cls, path)
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = _UNSET
    return hint, default, field.metadata.get("help", "")


def _default_help(flag: Flag, default: Any) -> str:
    if flag.const is not _UNSET:
        return ""
    if flag.default_text is not None:
        return f"(default: {flag.default_text})"
    if default is _UNSET:
        return ""
    if isinstance(default, list):
        default = ",".join(map(str, default))
    return f"(default: {default})"


def add_flags(parser: argparse.ArgumentParser, cls: type, flags: Sequence[Flag]) -> None:
    """One ``--flag`` per :class:`Flag`, typed and documented from dataclass ``cls``."""
    for flag in flags:
        tp, default, field_help = _resolve(cls, flag.paths[0])
        tp = without_none(tp)
        text = " ".join(t for t in (flag.help or field_help, _default_help(flag, default)) if t)
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": argparse.SUPPRESS, "help": text}
        if flag.const is not _UNSET:
            kwargs |= {"action": "store_const", "const": flag.const}
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is typing.Literal and flag.parse is None:
            kwargs["choices"] = typing.get_args(tp)
        else:
            kwargs["type"] = flag.parse or (tp if tp in (int, float, str) else str)
        action = parser.add_argument(flag.name, **kwargs)
        if tp in (int, float) and flag.parse is None:
            field = declared_field(cls, flag.paths[0])
            _FLAG_BOUNDS[action] = dict(field.metadata.get("bounds", {}))


@dataclasses.dataclass(frozen=True)
class AtLeast:
    """An argparse type: an integer of at least ``low`` (for flags that are no setting)."""

    low: int

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < self.low:
            raise argparse.ArgumentTypeError(f"must be >= {self.low}, got {value}")
        return value


def at_least(low: int) -> AtLeast:
    """An argparse type: an integer of at least ``low``."""
    return AtLeast(low)


# the bounds each numeric flag made by add_flags declares (its setting's): the CLI's table of
# what a number may be, read by declared_bounds (and the bad-input tests)
_FLAG_BOUNDS: dict[argparse.Action, dict[str, float]] = {}


def declared_bounds(action: argparse.Action) -> dict[str, float] | None:
    """The bounds a numeric flag declares (``{"ge": 0}``...): its setting's, or its
    :class:`AtLeast` type's; None for a flag that declares none."""
    if isinstance(action.type, AtLeast):
        return {"ge": action.type.low}
    return _FLAG_BOUNDS.get(action)


def numeric_options(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.Action]]:
    """Every option that takes one number, of every (sub)command of ``parser``, with the
    command's path of names (``("sweep", "dp-train")``): what the bad-input tests and the
    reliability probe try."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += numeric_options(sub, (*path, name))
        elif action.option_strings and (
            declared_bounds(action) is not None or action.type in (int, float)
        ):
            out.append((path, action))
    return out


def dataclass_flags(cls: type) -> list[Flag]:
    """A flag for every field of a flat settings dataclass (``pifair train``, ``dp-train``),
    each with its field's help."""
    return [Flag("--" + f.name.replace("_", "-"), (f.name,)) for f in dataclasses.fields(cls)]


def config_from_flags(ns: argparse.Namespace, flags: Sequence[Flag], base: dict) -> dict:
    """``base`` (a saved config, or empty) with the flags given on the command line set."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for flag in flags:
        if flag.dest not in ns:
            continue
        value = getattr(ns, flag.dest)
        for path in flag.paths:
            *sections, key = path.split(".")
            target = config
            for section in sections:
                target = target.setdefault(section, {})
            target[key] = str(value) if key == "from" and value is not None else value
    return config


def resume_or_config(ns: argparse.Namespace) -> dict:
    """The config a command starts from: the run's with ``--resume RUN``, the file's with
    ``--config FILE``, else empty (the dataclass defaults). Without its ``command`` key."""
    path: Path | None = None
    if getattr(ns, "resume", None):
        path = ns.resume / "config.yaml"
    elif getattr(ns, "config", None):
        path = ns.config
    if path is None:
        return {}
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give the config.yaml of a run")
    config = read_config(path)
    if not config:  # an empty file would start a run of every default, unasked
        raise ConfigError(f"config file {path} is empty; give the config.yaml of a run")
    if getattr(ns, "resume", None):
        _check_resumed_kind(ns, config.get("command"))
    parent = find_parent(path.parent, config)
    if parent is not None:  # found where it is now: the tree of runs may have been moved
        config["from"] = str(parent.resolve())
    return {k: v for k, v in config.items() if k != "command"}


# what a run folder's config.yaml records as its command, per command that resumes it
_RESUMES = {"mitigate": "linearize", "sweep": "sweep-linearize"}


def _check_resumed_kind(ns: argparse.Namespace, saved: str | None) -> None:
    """Refuse ``--resume`` of a run another command wrote, naming the command that resumes it."""
    wanted = _RESUMES.get(ns.command, ns.command)
    if saved == wanted:
        return
    spoken = str(saved).replace("sweep-", "sweep ")  # sweep-linearize: pifair sweep linearize
    again = f"; continue it with pifair {spoken} --resume {ns.resume}" if saved else ""
    raise ConfigError(
        f"{ns.resume} holds a {spoken} run, not a {wanted.replace('sweep-', 'sweep ')} run{again}"
    )


def run_folder(ns: argparse.Namespace) -> Path | None:
    """The run folder of a command that takes ``--out`` and ``--resume RUN``."""
    if ns.resume and ns.out and ns.resume.resolve() != ns.out.resolve():
        raise ConfigError("give either --resume RUN or --out RUN, not two different folders")
    return ns.resume or ns.out


def require_keys(config: dict, messages: dict[str, str]) -> None:
    """Refuse a config that lacks a key a new job needs, with the flag that gives it."""
    for key, message in messages.items():
        if not config.get(key):
            raise ConfigError(message)
