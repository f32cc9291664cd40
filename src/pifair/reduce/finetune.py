"""The one fine-tuning step after a reduction: linearize, share, polyfit and mitigate call
:func:`finetune_reduced`, so every :class:`FinetuneSettings` field acts the same way in each.

After a reduction swaps activation sites (SNL masks, shared ReLUs, polynomials), the network is
fine-tuned with CE + KD from the dense model (or a fairness-aware objective of
:mod:`pifair.fairness.mitigation`), after recomputing batch-norm statistics (binarizing or
replacing activations shifts every distribution; stale statistics send accuracy to chance).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config_types import check_settings, setting
from ..data import Dataset, ResidentLoader
from ..fairness.audit import minority_groups
from ..fairness.mitigation import (
    DualUpdate,
    ObjectiveName,
    build_objective,
)
from ..fairness.selection import gap_penalised_accuracy
from ..training.loop import CheckpointStore, LoopSettings, evaluate, fit

__all__ = [
    "FinetuneOutcome",
    "FinetuneSettings",
    "finetune_reduced",
    "recalibrate_batchnorm",
    "selection_score",
]


@dataclass
class FinetuneSettings:
    """Fine-tuning after binarization. SNL's paper: SGD lr 1e-3, 100 epochs, final epoch."""

    epochs: int = setting(20, help="fine-tuning epochs (0: none)", ge=0)
    batch_size: int = setting(128, help="fine-tuning batch", ge=1)
    lr: float = setting(0.01, help="fine-tuning learning rate (SGD, cosine)", gt=0)
    momentum: float = setting(0.9, help="SGD momentum", ge=0)
    weight_decay: float = setting(5e-4, help="SGD weight decay", ge=0)
    temperature: float = setting(4.0, help="distillation temperature", gt=0)
    kd_weight: float = setting(1.0, help="weight of the distillation term", ge=0)
    recalibrate_bn: bool = setting(
        True, help="recompute batch-norm statistics of the reduced model first"
    )
    select_best: bool = setting(True, help="keep the best validation epoch (not the last)")
    # after hardening the model before fine-tuning can already be better on validation than
    # every fine-tuned epoch. Off by default: on the linearization ablation it did not lower
    # the test drop (linearize_ablation_*.json results)
    start_candidate: bool = setting(
        False, help="with select_best, the model before fine-tuning is a candidate too"
    )
    seed: int = setting(0, help="seed of the fine-tuning's batches")
    grad_clip: float | None = setting(  # nearly linear networks (tiny budgets) can diverge
        5.0, help="gradient-norm clip (unset: none)", gt=0
    )
    objective: ObjectiveName = setting(
        "kd",
        help="fine-tuning objective: kd = CE + KD; constrained = Das et al. 2024, anchored = no "
        "group loses more than its share against the dense model, group-dro = Sagawa et al. "
        "2020, logit-adjust = Menon et al. 2021, reweight = inverse group frequency",
    )
    mu: float = setting(1e-2, help="dual step of constrained and anchored", ge=0)
    multiplier_init: float = setting(
        0.5, help="their multipliers' warm start (Das et al.: 0)", ge=0
    )
    dual_update: DualUpdate = setting("step", help="multipliers updated per step or per epoch")
    dro_step: float = setting(0.01, help="group DRO's exponentiated-gradient step", gt=0)
    logit_tau: float = setting(1.0, help="logit adjustment's tau", ge=0)
    select_by: Literal["accuracy", "fair"] = setting(
        "accuracy",
        help="fine-tuning epoch kept: best validation accuracy, or fair = accuracy - "
        "|minority-majority gap| against the dense model",
    )

    def __post_init__(self) -> None:
        check_settings(self, prefix="finetune.")


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    data: Dataset,
    *,
    device: torch.device,
    batches: int = 50,
    batch_size: int = 256,
) -> None:
    """Recompute every BatchNorm's running statistics on training batches (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.to(device).train()
    loader = ResidentLoader(
        data,
        "train",
        batch_size=batch_size,
        device=device,
        shuffle=True,
        seed=54321,
        channels_last=device.type == "cuda",
    )
    for i, (x, _, _) in enumerate(loader):
        if i >= batches:
            break
        model(x)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    model.eval()


def selection_score(
    dense: nn.Module, data: Dataset, settings: FinetuneSettings, *, device: torch.device
) -> Callable | None:
    """The validation score that picks the kept epoch: None (accuracy) or, with
    ``select_by="fair"``, accuracy minus |minority-majority gap| against ``dense``."""
    if settings.select_by == "accuracy":
        return None
    return gap_penalised_accuracy(
        evaluate(dense, data, "val", device=device), minority_groups(data)
    )


@dataclass
class FinetuneOutcome:
    """What the fine-tuning step did: its per-epoch ``history``, the validation accuracy of the
    reduced model before it (after batch-norm recalibration; None without a validation split),
    and whether validation kept that start model over every fine-tuned epoch."""

    history: list[dict]
    val_accuracy_before_finetune: float | None
    kept_before_finetune: bool

    def result_fields(self) -> dict:
        """The fields of a :class:`~pifair.reduce.result.ReductionResult` this step fills."""
        return dict(
            history=self.history,
            val_accuracy_before_finetune=self.val_accuracy_before_finetune,
            kept_before_finetune=self.kept_before_finetune,
        )


def finetune_reduced(
    model: nn.Module,
    dense: nn.Module,
    data: Dataset,
    settings: FinetuneSettings,
    *,
    device: torch.device,
    progress: bool,
    checkpoints: CheckpointStore | None = None,
    resume: bool = False,
) -> FinetuneOutcome:
    """Fine-tune the reduced ``model`` in place against ``dense``, its parent, reading every
    field of ``settings``: batch-norm recalibration first (``recalibrate_bn``), the objective,
    the kept epoch (``select_best`` by ``select_by``), and the model before fine-tuning as a
    candidate (``start_candidate``). ``checkpoints`` (a run folder, say) makes every epoch
    resumable."""
    if settings.recalibrate_bn:
        recalibrate_batchnorm(model, data, device=device)
    score = selection_score(dense, data, settings, device=device) if len(data.val) else None
    before = evaluate(model, data, "val", device=device) if len(data.val) else None
    start_state = (
        copy.deepcopy(model.state_dict())
        if settings.select_best and settings.start_candidate and before is not None
        else None
    )
    history = _fit(model, dense, data, settings, device, progress, checkpoints, resume, score)
    kept = False
    if start_state is not None and before is not None and history:
        before_score = score(before) if score else before.accuracy
        if before_score > max(h.get("val_score", h["val_accuracy"]) for h in history):
            model.load_state_dict(start_state)  # validation prefers the model before fine-tuning
            for h in history:
                h["selected"] = False
            kept = True
    return FinetuneOutcome(history, before.accuracy if before else None, kept)


def _fit(
    model: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    settings: FinetuneSettings,
    device: torch.device,
    progress: bool,
    checkpoints: CheckpointStore | None,
    resume: bool,
    select_score: Callable | None,
) -> list[dict]:
    """The training loop of :func:`finetune_reduced`: its per-epoch history."""
    if settings.epochs == 0:
        return []
    loop = LoopSettings(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        schedule="cosine",
        seed=settings.seed,
        device=device,
        progress=progress,
        grad_clip=settings.grad_clip,
    )
    loss = build_objective(settings.objective, teacher, data, settings)
    return fit(
        model,
        data,
        loop,
        loss_fn=loss,
        checkpoints=checkpoints,
        resume=resume,
        select_best=settings.select_best,
        select_score=select_score,
    )
