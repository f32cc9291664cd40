"""The one result type of every reduction (linearize, share, polyfit, mitigate)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import nn

__all__ = ["ReductionResult"]


@dataclass(kw_only=True)
class ReductionResult:
    """A reduced model and how it was made.

    ``relus`` is its comparisons per sample (kept ReLUs, shared decisions; 0 for polynomials),
    ``history`` the fine-tuning's per-epoch records, ``seconds`` the wall time of each step,
    ``val_accuracy_before_finetune`` and ``kept_before_finetune`` what
    :func:`pifair.reduce.finetune.finetune_reduced` saw of the model before fine-tuning.
    Each reduction adds its own fields; :attr:`metrics` gives them all as one JSON-ready dict.
    """

    model: nn.Module
    relus: int
    history: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    val_accuracy_before_finetune: float | None = None
    kept_before_finetune: bool = False

    @property
    def metrics(self) -> dict:
        """Every field but the model."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
