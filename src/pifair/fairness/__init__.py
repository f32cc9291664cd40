"""Per-group metrics (fairlearn), disparity of a reduction, and its mitigation."""

from ._group_metrics import GroupReport, GroupRow, group_report

__all__ = ["GroupReport", "GroupRow", "group_report"]
