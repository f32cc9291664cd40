"""``mitigate``: refit a reduced model with a fairness-aware objective (DESIGN.md section 5).

The reduction stays as it is (its sites, masks and groups); only the fine-tuning changes: CE +
KD from the dense parent plus one of the objectives of :mod:`pifair.fairness.mitigation`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch
from torch import nn

from ..data import Dataset
from ..fairness.mitigation import ObjectiveName
from ..relu.counting import count_relus
from .finetune import FinetuneSettings, finetune_model, recalibrate_batchnorm, selection_score
from .result import ReductionResult

__all__ = ["mitigate"]


def mitigate(
    reduced: nn.Module,
    dense: nn.Module,
    data: Dataset,
    *,
    objective: ObjectiveName = "logit-adjust",
    finetune: FinetuneSettings | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ReductionResult:
    """A copy of ``reduced`` fine-tuned against ``dense`` with a fairness-aware objective.

    Parameters
    ----------
    reduced : nn.Module
        A reduced model (linearized, shared-ReLU or polynomial); not modified.
    dense : nn.Module
        Its dense parent: the distillation teacher and the reference of the groups' losses.
    data : Dataset
        The training data, with its groups (classes, or a sensitive attribute).
    objective : {"kd", "constrained", "anchored", "group-dro", "logit-adjust", "reweight"}
        On Fashion-MNIST and CIFAR-10 (benchmarks/results/fairness_*.json) ``logit-adjust``
        closed the minority-majority gap at no accuracy cost; ``anchored`` halved it.
    finetune : FinetuneSettings, optional
        Epochs, learning rate and the objective's parameters (``mu``, ``logit_tau``, ...).

    Returns
    -------
    ReductionResult
        The refitted model, its comparisons per sample and the fine-tuning history.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> dense = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> reduced = pifair.linearize(dense, data, 40, method="naive", progress=False,
    ...                            finetune=pifair.FinetuneSettings(epochs=0)).model
    >>> fair = pifair.mitigate(reduced, dense, data, objective="logit-adjust", progress=False,
    ...                        finetune=pifair.FinetuneSettings(epochs=1))
    >>> fair.relus, len(fair.history)
    (40, 1)
    """
    device = torch.device(device)
    settings = replace(finetune or FinetuneSettings(), objective=objective)
    teacher = copy.deepcopy(dense).to(device).eval()
    student = copy.deepcopy(reduced).to(device)
    t0 = time.perf_counter()
    if settings.recalibrate_bn:
        recalibrate_batchnorm(student, data, device=device)
    history = finetune_model(
        student,
        teacher,
        data,
        settings,
        device=device,
        progress=progress,
        select_score=selection_score(teacher, data, settings, device=device),
    )
    return ReductionResult(
        model=student.cpu().eval(),
        relus=count_relus(student, data.input_shape).total,
        history=history,
        seconds={"finetune": time.perf_counter() - t0},
    )
