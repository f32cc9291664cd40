"""Model selection on validation that counts the gap, not only accuracy.

A mitigated fine-tuning picks its epoch by ``accuracy - |gap|`` on the validation split, where
``gap`` is the size-weighted minority-majority gap of the accuracy drops against the dense
model (the audit's :func:`~pifair.fairness.audit.minority_gap`). The absolute value penalises a
reversed gap as much as the original one, so selection cannot buy fairness by hurting the
majority. Never the test set.
"""

from __future__ import annotations

from collections.abc import Callable

from ..training.group_metrics import GroupReport
from .audit import minority_gap

__all__ = ["gap_penalised_accuracy"]


def gap_penalised_accuracy(
    dense: GroupReport, minority: list[int]
) -> Callable[[GroupReport], float]:
    """The selection score of a candidate's validation report against the dense model's
    ``dense`` on the same split; plain accuracy when no group is a minority."""
    dense_accuracy = {g.group: g.accuracy for g in dense.groups}

    def score(report: GroupReport) -> float:
        gap = minority_gap(
            [dense_accuracy[g.group] - g.accuracy for g in report.groups],
            [g.count for g in report.groups],
            [g.group in minority for g in report.groups],
        )
        return report.accuracy - (abs(gap) if gap is not None else 0.0)

    return score
