import pytest

from pifair.errors import BudgetError
from pifair.relu import parse_budget


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50k", 50_000),
        ("50000", 50_000),
        (50_000, 50_000),
        ("12.5%", 69_632),
        ("0", 0),
        ("1.5k", 1_500),
        ("100%", 557_056),
        ("0.5m", 500_000),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text, 557_056) == expected


def test_budget_above_count_names_the_count():
    with pytest.raises(BudgetError, match="557,056"):
        parse_budget("600k", 557_056)


@pytest.mark.parametrize("bad", ["-5", -5, "abc", "5kk", "120%", "1.5", True])
def test_bad_budgets_are_rejected(bad):
    with pytest.raises(BudgetError):
        parse_budget(bad, 1000)


def test_budget_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_budget("2000", 1000)
