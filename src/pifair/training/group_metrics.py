"""Per-group accuracy and loss through fairlearn's MetricFrame."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from fairlearn.metrics import MetricFrame, count
from sklearn.metrics import accuracy_score

from ..errors import ConfigError

__all__ = ["GroupRow", "GroupReport", "group_report"]


@dataclass(frozen=True)
class GroupRow:
    group: int
    name: str
    count: int
    accuracy: float
    loss: float | None = None
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupReport:
    """Overall and per-group metrics of one model on one split."""

    accuracy: float
    loss: float | None
    count: int
    groups: list[GroupRow] = field(default_factory=list)

    @property
    def worst_group_accuracy(self) -> float:
        return min(g.accuracy for g in self.groups)

    @property
    def accuracy_gap(self) -> float:
        """Largest minus smallest group accuracy."""
        accs = [g.accuracy for g in self.groups]
        return max(accs) - min(accs)

    def as_dict(self) -> dict:
        return asdict(self) | {
            "worst_group_accuracy": self.worst_group_accuracy,
            "accuracy_gap": self.accuracy_gap,
        }

    def table(self) -> str:
        width = max(5, *(len(g.name) for g in self.groups))
        lines = [f"{'group':<{width}}  {'n':>6}  {'accuracy':>8}  {'loss':>7}", "-" * (width + 29)]
        for g in self.groups:
            loss = f"{g.loss:7.4f}" if g.loss is not None else "      -"
            lines.append(f"{g.name:<{width}}  {g.count:>6}  {100 * g.accuracy:7.2f}%  {loss}")
        loss = f"{self.loss:7.4f}" if self.loss is not None else "      -"
        lines += [
            "-" * (width + 29),
            f"{'all':<{width}}  {self.count:>6}  {100 * self.accuracy:7.2f}%  {loss}",
        ]
        lines.append(
            f"worst group {100 * self.worst_group_accuracy:.2f}%, gap "
            f"{100 * self.accuracy_gap:.2f} points"
        )
        return "\n".join(lines)


def _mean_loss(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean of a per-sample value passed as ``y_pred`` (MetricFrame groups it for us)."""
    return float(np.mean(y_pred))


def group_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    group_names: list[str],
    *,
    losses: np.ndarray | None = None,
    per_sample: dict[str, np.ndarray] | None = None,
) -> GroupReport:
    """Accuracy (and mean per-sample loss, when given) overall and per group.

    ``per_sample`` adds the per-group mean of other per-sample values (margins, gradient
    norms) to each row's ``extras``. Groups with no sample in ``groups`` are left out.
    """
    y_true, y_pred, groups = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    if not len(y_true) == len(y_pred) == len(groups):
        raise ConfigError(
            f"lengths differ: y_true {len(y_true)}, y_pred {len(y_pred)}, groups {len(groups)}"
        )
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "count": count},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    by_group = frame.by_group
    loss_by_group = None
    if losses is not None:
        losses = np.asarray(losses, dtype=np.float64)
        loss_by_group = MetricFrame(
            metrics=_mean_loss, y_true=y_true, y_pred=losses, sensitive_features=groups
        ).by_group
    extra_by_group = {
        name: MetricFrame(
            metrics=_mean_loss,
            y_true=y_true,
            y_pred=np.asarray(values, dtype=np.float64),
            sensitive_features=groups,
        ).by_group
        for name, values in (per_sample or {}).items()
    }
    rows = [
        GroupRow(
            group=int(g),
            name=group_names[int(g)],
            count=int(by_group.loc[g, "count"]),
            accuracy=float(by_group.loc[g, "accuracy"]),
            loss=None if loss_by_group is None else float(loss_by_group.loc[g]),
            extras={name: float(frame.loc[g]) for name, frame in extra_by_group.items()},
        )
        for g in sorted(by_group.index)
    ]
    return GroupReport(
        accuracy=float(frame.overall["accuracy"]),
        loss=None if losses is None else float(losses.mean()),
        count=int(frame.overall["count"]),
        groups=rows,
    )
