"""ReLU budgets: parse ``50k`` / ``50000`` / ``12.5%`` and check them against a model's count."""

from __future__ import annotations

import math
import re

from ..errors import BudgetError

__all__ = ["parse_budget"]

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}
_PATTERN = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[kKmM%]?)\s*$")


def parse_budget(budget: str | int | float, total: int) -> int:
    """Number of ReLUs to keep, given a budget and the model's dense ReLU count ``total``.

    Accepts an int (``50000``), a string with a ``k``/``m`` suffix (``"50k"``, ``"1.5m"``) or a
    percentage of ``total`` (``"12.5%"``, rounded to the nearest integer).

    >>> import pifair
    >>> pifair.parse_budget("50k", 557_056), pifair.parse_budget("12.5%", 1000)
    (50000, 125)
    """
    if total < 0:
        raise BudgetError(f"the model's ReLU count must be >= 0, got {total}")
    if isinstance(budget, bool):
        raise BudgetError(f"budget must be a number or a string like '50k', got {budget!r}")
    if isinstance(budget, int | float):
        value, unit = float(budget), ""
    else:
        match = _PATTERN.match(str(budget))
        if match is not None:
            value, unit = float(match["num"]), match["unit"].lower()
        else:  # '-1', '1e9', 'nan' are numbers, just not counts: say what is wrong with them
            value, unit = _plain_number(str(budget), total), ""
    if not math.isfinite(value):
        raise BudgetError(f"budget must be a finite count of ReLUs, got {budget!r}")
    if value < 0:
        raise BudgetError(f"budget must be >= 0, got {budget!r} (the model has {total:,} ReLUs)")
    if unit == "%":
        if value > 100:
            raise BudgetError(f"budget {budget!r} is above 100 % of the model's {total:,} ReLUs")
        count = round(total * value / 100)
    else:
        scaled = value * _SUFFIX[unit]
        if abs(scaled - round(scaled)) > 1e-6:
            raise BudgetError(f"budget {budget!r} is not a whole number of ReLUs")
        count = round(scaled)
    if count > total:
        raise BudgetError(
            f"budget {budget!r} ({count:,} ReLUs) is above the model's ReLU count of {total:,}; "
            f"choose at most {total:,} (or a percentage)"
        )
    return count


def _plain_number(text: str, total: int) -> float:
    """``text`` read as a float, or the budget format explained."""
    try:
        return float(text)
    except ValueError:
        raise BudgetError(
            f"cannot read budget {text!r}: use a count ('50000', '50k', '1.5m') or a "
            f"percentage ('12.5%') of the model's {total:,} ReLUs"
        ) from None
