"""Fairness-aware training objectives for reduced models (docs/fairness.md).

Each objective wraps the per-sample CE + KD of :class:`~pifair.training.distill.DistillationLoss`
and is selected by name (``FinetuneSettings.objective`` for the fine-tuning,
``SearchSettings.objective`` for the SNL mask search and hardening):

- ``kd``: plain CE + KD (SNL);
- ``constrained``: Das et al. (ICML 2024): ``mean + sum_g gamma_g |L_g - L|`` with dual ascent
  ``gamma_g += mu |L_g - L|``, per step or per epoch, from warm-started ``gamma_g``;
- ``anchored``: a group may not lose more than its share: the rise of its CE over the dense
  model's on the same samples may not exceed the overall rise; projected dual ascent on the
  multipliers of those constraints (the dense model is the KD teacher, already run per batch);
- ``group-dro``: Sagawa et al. (ICLR 2020), online: exponentiated-gradient weights on the groups'
  losses;
- ``logit-adjust``: Menon et al. (ICLR 2021): the CE term on ``logits + tau log prior(y)``
  (KD on the raw logits), which corrects for label imbalance;
- ``reweight``: each sample weighted by the inverse training frequency of its group.

None of these is in a library pifair uses (fairlearn's reductions fit sklearn estimators, not a
network's loss), so they are written here, each small and tested against its rule.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Protocol, get_args

import torch
from torch import nn

from ..errors import ConfigError
from ..training.distill import DistillationLoss

__all__ = [
    "OBJECTIVES",
    "ConstrainedLoss",
    "DenseAnchoredLoss",
    "GroupDROLoss",
    "ReweightedLoss",
    "build_objective",
    "group_losses",
    "label_log_prior",
]

ObjectiveName = Literal["kd", "constrained", "anchored", "group-dro", "logit-adjust", "reweight"]
DualUpdate = Literal["step", "epoch"]
OBJECTIVES: tuple[str, ...] = get_args(ObjectiveName)
DUAL_UPDATES: tuple[str, ...] = get_args(DualUpdate)


class ObjectiveParams(Protocol):
    """What :func:`build_objective` reads (``FinetuneSettings`` has all of it)."""

    temperature: float
    kd_weight: float
    mu: float
    multiplier_init: float
    dual_update: DualUpdate
    dro_step: float
    logit_tau: float


def group_losses(
    per_sample: torch.Tensor, groups: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss of each group in the batch and a mask of the groups present in it."""
    counts = torch.bincount(groups, minlength=num_groups).to(per_sample.dtype)
    sums = torch.zeros(num_groups, dtype=per_sample.dtype, device=per_sample.device).index_add(
        0, groups, per_sample
    )
    present = counts > 0
    return sums / counts.clamp(min=1), present


def label_log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log of each class's training frequency (classes never seen get the smallest one's)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    counts = torch.where(counts > 0, counts, counts[counts > 0].min())
    return (counts / counts.sum()).log()


def _check_dual(mu: float, multiplier_init: float, dual_update: str) -> None:
    if mu < 0:
        raise ConfigError(f"mu (dual step) must be >= 0, got {mu}")
    if multiplier_init < 0:
        raise ConfigError(f"multiplier_init must be >= 0, got {multiplier_init}")
    if dual_update not in DUAL_UPDATES:
        raise ConfigError(f"dual_update must be 'step' or 'epoch', got {dual_update!r}")


class _Dual:
    """Multipliers with an accumulator: the state shared by the two constrained objectives,
    each on top of ``base`` (per-sample CE + KD). Unset ``mu`` and ``dual_update`` are the
    objective's own defaults."""

    default_mu: ClassVar[float]
    default_dual_update: ClassVar[str]

    def __init__(
        self,
        base,
        num_groups: int,
        *,
        mu: float | None = None,
        multiplier_init: float = 0.0,
        dual_update: str | None = None,
    ) -> None:
        mu = self.default_mu if mu is None else mu
        dual_update = dual_update or self.default_dual_update
        _check_dual(mu, multiplier_init, dual_update)
        self.base = base
        self.num_groups, self.mu, self.dual_update = num_groups, mu, dual_update
        self.gamma = torch.full((num_groups,), float(multiplier_init))
        self._violation = torch.zeros(num_groups)  # sum over this epoch's batches

    def _to(self, device: torch.device) -> None:
        if self.gamma.device != device:
            self.gamma, self._violation = self.gamma.to(device), self._violation.to(device)

    def _project(self, gamma: torch.Tensor) -> torch.Tensor:
        return gamma

    def _observe(self, violation: torch.Tensor) -> None:
        """Record a batch's violations; a per-step dual update applies them at once (after the
        step's loss used the old multipliers)."""
        self._violation += violation
        if self.dual_update == "step":
            self.gamma = self._project(self.gamma + self.mu * violation)

    def end_epoch(self) -> dict:
        """Per-epoch dual update ``gamma += mu * (sum over the epoch's batches of the
        violations)``; returns the multipliers (recorded in the fine-tuning history)."""
        if self.dual_update == "epoch":
            self.gamma = self._project(self.gamma + self.mu * self._violation)
        self._violation = torch.zeros_like(self._violation)
        return {"gamma": self.gamma.tolist()}

    def state_dict(self) -> dict:
        return {"gamma": self.gamma.cpu(), "violation": self._violation.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.gamma, self._violation = state["gamma"].clone(), state["violation"].clone()


class ConstrainedLoss(_Dual):
    """Das et al.: ``mean(base) + sum_g gamma_g |L_g - L|`` over the groups in the batch.

    ``base.per_sample(logits, y, x)`` gives per-sample losses (CE + KD). Unlike the released
    code, which detaches the penalty so it never reaches a gradient, the penalty stays in the
    graph: it pulls every group's loss towards the mean. ``multiplier_init`` > 0 makes the
    objective act from the first step (the paper's zero start leaves epoch 1 plain CE + KD).
    """

    default_mu = 1e-3
    default_dual_update = "epoch"

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        per_sample = self.base.per_sample(logits, y, x)
        mean = per_sample.mean()
        by_group, present = group_losses(per_sample, groups, self.num_groups)
        gap = (by_group - mean).abs() * present  # absent groups contribute nothing
        self._to(gap.device)
        loss = mean + (self.gamma * gap).sum()
        self._observe(gap.detach())
        return loss


class DenseAnchoredLoss(_Dual):
    """``mean(base) + sum_g lambda_g v_g`` with ``v_g = (CE_g - CE_g^dense) - (CE - CE^dense)``
    on the batch: group g's rise in cross-entropy over the dense model's, minus the overall
    rise. The constraint ``v_g <= 0`` says that no group loses more than its share; the
    multipliers follow projected dual ascent ``lambda_g = max(0, lambda_g + mu v_g)``.

    ``base`` must be a :class:`~pifair.training.distill.DistillationLoss` (its teacher is the dense
    model; ``base.terms`` gives the teacher's cross-entropy without a second forward pass).
    """

    default_mu = 1e-2
    default_dual_update = "step"

    def _project(self, gamma: torch.Tensor) -> torch.Tensor:
        return gamma.clamp(min=0)

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        terms = self.base.terms(logits, y, x)
        rise = terms["ce"] - terms["teacher_ce"]
        by_group, present = group_losses(rise, groups, self.num_groups)
        violation = (by_group - rise.mean()) * present
        self._to(violation.device)
        loss = terms["loss"].mean() + (self.gamma * violation).sum()
        self._observe(violation.detach())
        return loss


class GroupDROLoss:
    """Online group DRO (Sagawa et al. 2020, Algorithm 1): after each batch,
    ``q_g <- q_g exp(eta L_g)`` for the groups present, renormalised; the loss is
    ``sum_g q_g L_g`` over the groups present (weights renormalised over them)."""

    def __init__(self, base, num_groups: int, *, step: float = 0.01) -> None:
        if not step > 0:
            raise ConfigError(f"group DRO step (dro_step) must be > 0, got {step}")
        self.base, self.num_groups, self.step = base, num_groups, step
        self.q = torch.full((num_groups,), 1.0 / num_groups)

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        per_sample = self.base.per_sample(logits, y, x)
        by_group, present = group_losses(per_sample, groups, self.num_groups)
        if self.q.device != by_group.device:
            self.q = self.q.to(by_group.device)
        q = self.q * torch.exp(self.step * by_group.detach() * present)
        self.q = q / q.sum()
        weights = self.q * present
        return (weights * by_group).sum() / weights.sum()

    def end_epoch(self) -> dict:
        return {"group_weights": self.q.tolist()}

    def state_dict(self) -> dict:
        return {"q": self.q.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].clone()


class ReweightedLoss:
    """Per-sample ``base`` loss weighted by ``1 / train frequency`` of the sample's group,
    normalised so that the training set's mean weight is 1."""

    def __init__(self, base, group_counts: torch.Tensor) -> None:
        counts = group_counts.float()
        weights = torch.where(
            counts > 0,
            counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()),
            torch.zeros_like(counts),
        )
        self.base, self.weights = base, weights

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        per_sample = self.base.per_sample(logits, y, x)
        w = self.weights.to(per_sample.device)[groups]
        return (w * per_sample).sum() / w.sum()


def build_objective(name: str, teacher: nn.Module, data, params: ObjectiveParams):
    """The training loss ``loss(logits, y, x, groups)`` called ``name`` (one of
    :data:`OBJECTIVES`), distilling from ``teacher`` on ``data``'s training split."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}; got {name!r}")
    num_groups = len(data.group_names)
    offset = None
    if name == "logit-adjust":
        if not params.logit_tau >= 0:
            raise ConfigError(f"logit_tau must be >= 0, got {params.logit_tau}")
        offset = params.logit_tau * label_log_prior(data.train.y, data.num_classes)
    base = DistillationLoss(
        teacher, temperature=params.temperature, weight=params.kd_weight, ce_offset=offset
    )
    dual: dict[str, Any] = dict(
        mu=params.mu, multiplier_init=params.multiplier_init, dual_update=params.dual_update
    )
    if name == "constrained":
        return ConstrainedLoss(base, num_groups, **dual)
    if name == "anchored":
        return DenseAnchoredLoss(base, num_groups, **dual)
    if name == "group-dro":
        return GroupDROLoss(base, num_groups, step=params.dro_step)
    if name == "reweight":
        return ReweightedLoss(base, torch.bincount(data.train.groups, minlength=num_groups))
    return base
