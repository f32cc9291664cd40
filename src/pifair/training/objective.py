"""The contract of a training objective, declared once for every loop that trains (``fit``, the
SNL search, hardening, the fine-tuning after a reduction).

An objective is called as ``loss(logits, y, x, groups)``. One that carries state from batch to
batch (the dual multipliers of the constrained objectives, group DRO's weights) is a
:class:`StatefulObjective`: the loop records what :meth:`end_epoch` returns in its history and
checkpoints :meth:`state_dict`, so a resumed run continues with the same multipliers.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Objective", "StatefulObjective", "end_epoch", "objective_state", "restore_objective"]


@runtime_checkable
class Objective(Protocol):
    """``loss(logits, y, x, groups)``: a scalar to minimise on one batch."""

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, groups: torch.Tensor, /
    ) -> torch.Tensor: ...


@runtime_checkable
class StatefulObjective(Objective, Protocol):
    """An objective with state across batches: per-epoch updates, checkpointed with the run."""

    def end_epoch(self) -> dict[str, Any]:
        """Close the epoch (a per-epoch update, if any); returns what the history records."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def end_epoch(loss_fn: Objective) -> dict[str, Any]:
    """What ``loss_fn`` records at the end of an epoch ({} for a stateless objective)."""
    return loss_fn.end_epoch() if isinstance(loss_fn, StatefulObjective) else {}


def objective_state(loss_fn: Objective) -> dict[str, Any] | None:
    """``loss_fn``'s checkpointable state (None for a stateless objective)."""
    return loss_fn.state_dict() if isinstance(loss_fn, StatefulObjective) else None


def restore_objective(loss_fn: Objective, state: dict[str, Any] | None) -> None:
    """Give ``loss_fn`` back the state a checkpoint saved."""
    if state is not None and isinstance(loss_fn, StatefulObjective):
        loss_fn.load_state_dict(state)
