"""Who pays for a ReLU reduction (Das, Romanelli, Fioretto, ICML 2024; docs/fairness.md).

For a reduced model and its dense parent, per group: accuracy and loss of both, the drop, the
mean distance to the decision boundary (softmax top-1 minus top-2) and the mean per-sample
gradient norm; overall: worst-group accuracy, the spread between the largest and smallest
drops, and the gap between the mean drops of minority and majority groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from ..data import Dataset
from ..relu.counting import count_relus
from ..training.group_metrics import GroupReport, group_report
from ..training.loop import predict
from ..training.per_sample import iter_per_sample_grads

__all__ = [
    "GroupAudit",
    "PairAudit",
    "audit_pair",
    "margins",
    "per_sample_grad_norms",
    "minority_gap",
    "minority_groups",
    "mean_ci",
    "paired_difference",
]


def minority_gap(
    drops: list[float], counts: list[int], minority: list[bool], *, weighted: bool = True
) -> float | None:
    """Mean drop of the minority groups minus that of the majority groups, each group weighing
    its sample count (``weighted``) or one; None when either side is empty."""
    sides = []
    for side in (True, False):
        chosen = [i for i, m in enumerate(minority) if m == side]
        if not chosen:
            return None
        weights = [counts[i] if weighted else 1 for i in chosen]
        sides.append(float(np.average([drops[i] for i in chosen], weights=weights)))
    return sides[0] - sides[1]


def margins(logits: torch.Tensor) -> torch.Tensor:
    """Softmax top-1 minus top-2 of each sample: its distance to the decision boundary."""
    top2 = torch.softmax(logits.float(), dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def per_sample_grad_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 64
) -> torch.Tensor:
    """L2 norm of each sample's cross-entropy gradient over all trainable parameters.

    torch.func (vmap over grad) gives per-sample gradients without Opacus; the model runs in
    eval mode so batch norm uses its running statistics and samples stay independent.
    """

    model.eval()
    norms = []
    for grads in iter_per_sample_grads(model, x, y, chunk=chunk):
        sq = sum((g.flatten(1).pow(2).sum(1) for g in grads.values()), torch.zeros(()))
        norms.append(sq.sqrt())
    return torch.cat(norms)


def minority_groups(data: Dataset) -> list[int]:
    """Groups with fewer than 80 % of the mean group's training samples: the smaller sex in
    Adult, the kept-at-10 % classes of ``--keep``; none when groups are balanced."""
    counts = torch.bincount(data.train.groups, minlength=len(data.group_names)).float()
    present = counts > 0
    mean = counts[present].mean()
    return [g for g in range(len(counts)) if present[g] and counts[g] < 0.8 * mean]


@dataclass
class GroupAudit:
    group: int
    name: str
    count: int
    minority: bool
    dense_accuracy: float
    reduced_accuracy: float
    drop: float
    dense_loss: float | None
    reduced_loss: float | None
    dense_margin: float
    reduced_margin: float
    dense_grad_norm: float | None
    reduced_grad_norm: float | None


@dataclass
class PairAudit:
    """One reduced model against its dense parent on one split."""

    name: str
    relus: int
    dense_relus: int
    dense_accuracy: float
    reduced_accuracy: float
    groups: list[GroupAudit] = field(default_factory=list)
    margins: dict[str, dict[str, list[float]]] = field(
        default_factory=dict
    )  # model -> group name -> values

    @property
    def drop(self) -> float:
        return self.dense_accuracy - self.reduced_accuracy

    @property
    def worst_group_accuracy(self) -> float:
        return min(g.reduced_accuracy for g in self.groups)

    @property
    def drop_spread(self) -> float:
        """Largest minus smallest per-group drop."""
        drops = [g.drop for g in self.groups]
        return max(drops) - min(drops)

    @property
    def minority_gap(self) -> float | None:
        """Size-weighted mean drop of the minority groups minus that of the majority groups
        (each group weighs its sample count: the drop of the pooled minority samples); None
        when no group is a minority."""
        return minority_gap(
            [g.drop for g in self.groups],
            [g.count for g in self.groups],
            [g.minority for g in self.groups],
        )

    @property
    def minority_gap_unweighted(self) -> float | None:
        """The same gap with every group weighing the same, whatever its size."""
        return minority_gap(
            [g.drop for g in self.groups],
            [g.count for g in self.groups],
            [g.minority for g in self.groups],
            weighted=False,
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("margins")
        return d | {
            "drop": self.drop,
            "worst_group_accuracy": self.worst_group_accuracy,
            "drop_spread": self.drop_spread,
            "minority_gap": self.minority_gap,
            "minority_gap_unweighted": self.minority_gap_unweighted,
        }


def _report(
    model: nn.Module, data: Dataset, split: str, device: torch.device
) -> tuple[GroupReport, torch.Tensor, torch.Tensor, torch.Tensor]:

    logits, y, g = predict(model.to(device), data, split, device=device)
    losses = F.cross_entropy(logits, y, reduction="none")
    m = margins(logits)
    report = group_report(
        y.numpy(),
        logits.argmax(1).numpy(),
        g.numpy(),
        data.group_names,
        losses=losses.numpy(),
        per_sample={"margin": m.numpy()},
    )
    return report, m, y, g


def _grad_norm_by_group(
    model: nn.Module, data: Dataset, split: str, device: torch.device, per_group: int
) -> dict[int, float]:
    s = data.split(split)
    gen = torch.Generator().manual_seed(0)
    index = torch.cat(
        [
            idx[torch.randperm(len(idx), generator=gen)[:per_group]]
            for idx in (torch.nonzero(s.groups == g).flatten() for g in torch.unique(s.groups))
        ]
    )
    x = data.normalize(s.x[index].to(device))
    norms = per_sample_grad_norms(model.to(device), x, s.y[index].to(device)).cpu()
    report = group_report(
        s.y[index].numpy(),
        s.y[index].numpy(),
        s.groups[index].numpy(),
        data.group_names,
        per_sample={"grad_norm": norms.numpy()},
    )
    return {r.group: r.extras["grad_norm"] for r in report.groups}


def audit_pair(
    dense: nn.Module,
    reduced: nn.Module,
    data: Dataset,
    *,
    name: str = "reduced",
    relus: int | None = None,
    dense_relus: int | None = None,
    split: str = "test",
    grad_samples: int = 128,
    device: torch.device | str = "cpu",
) -> PairAudit:
    """Per-group audit of ``reduced`` against ``dense`` on ``split``.

    ``grad_samples`` per group enter the gradient-norm means (0 skips them: they cost one
    backward pass per sample). ``relus`` and ``dense_relus`` are counted when not given.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> dense = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> reduced = pifair.linearize(dense, data, 40, method="naive", progress=False,
    ...                            finetune=pifair.FinetuneSettings(epochs=0)).model
    >>> audit = pifair.audit(dense, reduced, data, grad_samples=0)
    >>> audit.relus, audit.dense_relus, len(audit.groups)
    (40, 512, 10)
    """
    device = torch.device(device)
    relus = count_relus(reduced, data.input_shape).total if relus is None else relus
    dense_relus = count_relus(dense, data.input_shape).total if dense_relus is None else dense_relus
    minority = set(minority_groups(data))
    d_rep, d_m, _, g = _report(dense, data, split, device)
    r_rep, r_m, _, _ = _report(reduced, data, split, device)
    d_norm = _grad_norm_by_group(dense, data, split, device, grad_samples) if grad_samples else {}
    r_norm = _grad_norm_by_group(reduced, data, split, device, grad_samples) if grad_samples else {}
    rows = []
    for d, r in zip(d_rep.groups, r_rep.groups):
        rows.append(
            GroupAudit(
                group=d.group,
                name=d.name,
                count=d.count,
                minority=d.group in minority,
                dense_accuracy=d.accuracy,
                reduced_accuracy=r.accuracy,
                drop=d.accuracy - r.accuracy,
                dense_loss=d.loss,
                reduced_loss=r.loss,
                dense_margin=d.extras["margin"],
                reduced_margin=r.extras["margin"],
                dense_grad_norm=d_norm.get(d.group),
                reduced_grad_norm=r_norm.get(d.group),
            )
        )
    names = data.group_names
    dist = {
        label: {names[int(k)]: m[g == k].tolist() for k in torch.unique(g)}
        for label, m in (("dense", d_m), (name, r_m))
    }
    return PairAudit(
        name=name,
        relus=relus,
        dense_relus=dense_relus,
        dense_accuracy=d_rep.accuracy,
        reduced_accuracy=r_rep.accuracy,
        groups=rows,
        margins=dist,
    )


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the t confidence interval (0 for a single value)."""

    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    mean = float(np.mean(kept))
    if len(kept) < 2:
        return mean, 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, len(kept) - 1) * stats.sem(kept))
    return mean, half


def paired_difference(
    baseline: list[float], treated: list[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``treated - baseline`` over paired runs (same seeds, same dense models) and the
    bounds of its t confidence interval."""
    if len(baseline) != len(treated):
        raise ValueError(
            f"paired runs need the same seeds: {len(baseline)} baseline values, {len(treated)} "
            "treated"
        )
    mean, half = mean_ci([t - b for b, t in zip(baseline, treated)], confidence)
    return mean, mean - half, mean + half
