"""Fairness-aware fine-tuning objectives for reduced models (DESIGN.md section 7).

:class:`ConstrainedLoss` is Das et al.'s (ICML 2024) constrained objective
``mean(CE + KD) + sum_g gamma_g * |L_g - L|`` with ``gamma_g += mu * sum over the epoch's
batches of |L_g - L|`` after each epoch. Unlike the released code, which detaches the penalty
so it never reaches a gradient, the penalty here stays in the graph: it pulls every group's
loss towards the mean. :class:`ReweightedLoss` is the simple baseline: each sample weighted by
the inverse training frequency of its group.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["ConstrainedLoss", "ReweightedLoss", "group_losses"]


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


class ConstrainedLoss:
    """``mean(base) + sum_g gamma_g |L_g - L|`` over the groups present in the batch.

    ``base`` gives per-sample losses (``base.per_sample(logits, y, x)``, e.g. CE + KD).
    Call :meth:`end_epoch` after each epoch to apply the dual update of ``gamma``.
    """

    def __init__(self, base, num_groups: int, *, mu: float = 1e-3) -> None:
        if mu < 0:
            raise ConfigError(f"mu must be >= 0, got {mu}")
        self.base, self.num_groups, self.mu = base, num_groups, mu
        self.gamma = torch.zeros(num_groups)
        self._violation = torch.zeros(num_groups)  # sum over this epoch's batches of |L_g - L|

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        per_sample = self.base.per_sample(logits, y, x)
        mean = per_sample.mean()
        by_group, present = group_losses(per_sample, groups, self.num_groups)
        gap = (by_group - mean).abs() * present  # absent groups contribute nothing
        if self.gamma.device != gap.device:
            self.gamma, self._violation = self.gamma.to(gap.device), self._violation.to(gap.device)
        self._violation += gap.detach()
        return mean + (self.gamma * gap).sum()

    def end_epoch(self) -> dict:
        """gamma_g += mu * (sum over the epoch's batches of |L_g - L|); returns the new gamma."""
        self.gamma = self.gamma + self.mu * self._violation
        self._violation = torch.zeros_like(self._violation)
        return {"gamma": self.gamma.tolist()}

    def state_dict(self) -> dict:
        return {"gamma": self.gamma.cpu(), "violation": self._violation.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.gamma, self._violation = state["gamma"].clone(), state["violation"].clone()


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
