"""Each setting is declared once, on its dataclass field (default, help, bounds): the command
line reads the help from the field, and the bounds hold however the settings are built."""

from __future__ import annotations

import argparse

import pytest

from pifair.cli import build_parser
from pifair.config_types import settings_from_dict
from pifair.errors import ConfigError
from pifair.reduce import FinetuneSettings, SearchSettings
from pifair.training import TrainConfig


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_says_what_it_does():
    """A field without help would show only its default: the field must declare its help."""
    silent = []
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = (action.help or "").split("(default", 1)[0].strip()
            if not text:
                silent.append(f"pifair {name} {action.option_strings[0]}")
    assert not silent, silent


@pytest.mark.parametrize(
    "cls, values, named",
    [
        (FinetuneSettings, {"epochs": -1}, "finetune.epochs must be >= 0"),
        (FinetuneSettings, {"select_by": "luck"}, "select_by'? must be one of"),
        (SearchSettings, {"lambda_growth": 0.5}, "search.lambda_growth must be >= 1"),
        (TrainConfig, {"label_smoothing": 1.0}, "label_smoothing must be < 1"),
        (TrainConfig, {"val_fraction": 0.0}, "val_fraction must be > 0"),
    ],
)
def test_a_bound_declared_on_a_field_holds_however_the_settings_are_built(cls, values, named):
    with pytest.raises(ConfigError, match=named):
        cls(**values)
    with pytest.raises(ConfigError, match=named):
        settings_from_dict(cls, values)
