"""Per-group metrics (fairlearn), disparity of a reduction, and its mitigation."""

from ..training.group_metrics import GroupReport, GroupRow, group_report
from .audit import PairAudit, audit_pair, minority_gap, paired_difference
from .mitigation import OBJECTIVES, ObjectiveName, build_objective

__all__ = [
    "GroupReport",
    "GroupRow",
    "OBJECTIVES",
    "ObjectiveName",
    "PairAudit",
    "audit_pair",
    "build_objective",
    "group_report",
    "minority_gap",
    "paired_difference",
]
