"""The skeleton every "reduce a parent run" workflow shares (linearize, share, polyfit).

Open the parent run (its model, record and data, with the same split), measure the parent on
the test set, run the reduction (library code: model and data in, a ReductionResult out), then
write the reduced run: the model, the metrics every reduction reports and its plots.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import Dataset
from ..models.io import save_model_like
from ..reduce.result import ReductionResult
from ..relu import count_relus
from ..report import plots
from ..runs import CHECKPOINT, MODEL, Run
from ..training import GroupReport, evaluate, resolve_device
from .train import dataset_for_run, load_from_run

__all__ = ["Parent", "open_parent", "reduce_into_run", "write_reduced"]


@dataclass
class Parent:
    """A parent run as a reduction reads it."""

    model: nn.Module
    record: dict  # what models.io saved with the model (name, input shape, options)
    run: Run
    data: Dataset
    device: torch.device
    test: GroupReport  # the parent's test report, the reference of every drop
    relus: int


def open_parent(from_run: str, device: str) -> Parent:
    """The parent model (on ``device``), its data with the same split, and its test report."""
    dev = resolve_device(device)
    model, record, run = load_from_run(from_run)
    data = dataset_for_run(run)
    model = model.to(dev)
    return Parent(
        model=model,
        record=record,
        run=run,
        data=data,
        device=dev,
        test=evaluate(model, data, "test"),
        relus=count_relus(model, data.input_shape).total,
    )


def reduce_into_run(
    job: Any,
    command: str,
    out: str | os.PathLike | None,
    *,
    resume: bool,
    reduce: Callable[[Parent, Run, bool], ReductionResult],
) -> tuple[Run, Parent, ReductionResult]:
    """Open ``job``'s parent and its run folder (new, or the killed one to resume), then
    ``reduce(parent, run, resume_finetuning)`` with ``job.seed`` set: the run folder is the
    fine-tuning's checkpoint store, resumed when it holds a checkpoint."""
    parent = open_parent(job.from_run, job.device)
    run = job.open_run(command, out, resume=resume)
    torch.manual_seed(job.seed)
    return run, parent, reduce(parent, run, (run.path / CHECKPOINT).exists())


def write_reduced(
    run: Run,
    result: ReductionResult,
    parent: Parent,
    *,
    kind: str,
    curves_title: str,
    groups_title: str,
    **extra: Any,
) -> dict:
    """Save ``result``'s model, the metrics every reduction reports (plus ``extra``) and its
    plots into ``run``; the parent's numbers are ``parent_test_accuracy``, ``parent_test``
    and ``parent_relus``."""
    save_model_like(run.file(MODEL), result.model, parent.record)
    test = evaluate(result.model, parent.data, "test")
    metrics = run.update_metrics(
        kind=kind,
        relus=result.relus,
        parent_relus=parent.relus,
        test_accuracy=test.accuracy,
        parent_test_accuracy=parent.test.accuracy,
        drop=parent.test.accuracy - test.accuracy,
        test=test.as_dict(),
        parent_test=parent.test.as_dict(),
        history=result.history,
        seconds=result.seconds | {"total": sum(result.seconds.values())},
        data=parent.data.summary(),
        model=parent.record["model"],
        device=str(parent.device),
        **extra,
    )
    if result.history:
        plots.training_curves(result.history, run.file("curves.png"), title=curves_title)
    plots.group_accuracy(test.as_dict(), run.file("groups.png"), title=groups_title)
    run.log.info(
        "%s: %s ReLUs, test %.4f (parent %.4f)",
        kind,
        f"{result.relus:,}",
        test.accuracy,
        parent.test.accuracy,
    )
    return metrics
