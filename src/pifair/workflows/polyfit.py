"""``pifair polyfit``: an HE-ready copy of a trained run, ReLUs replaced by trained polynomials."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..models.io import save_model_like
from ..reduce.finetune import FinetuneSettings
from ..reduce.polyfit import polyfit
from ..relu import count_relus
from ..relu.polynomial import PolyGranularity
from ..report import plots
from ..runs import CHECKPOINT, MODEL, Run
from ..training import evaluate, resolve_device
from ._jobs import RunJob
from .train import dataset_for_run, load_from_run

__all__ = ["PolyfitJob", "run_polyfit"]


@dataclass
class PolyfitJob(RunJob):
    """What ``pifair polyfit`` runs; its dict is the run's config.yaml."""

    from_run: str
    degree: int = 2
    granularity: PolyGranularity = "element"
    seed: int = 0
    device: str = "auto"
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    _nested: ClassVar[dict[str, type]] = {"finetune": FinetuneSettings}


def run_polyfit(
    job: PolyfitJob,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    device = resolve_device(job.device)
    parent_model, record, parent = load_from_run(job.from_run)
    data = dataset_for_run(parent)
    run = job.open_run("polyfit", out, resume=resume)
    torch.manual_seed(job.seed)
    parent_test = evaluate(parent_model.to(device), data, "test")
    result = polyfit(
        parent_model,
        data,
        degree=job.degree,
        granularity=job.granularity,
        finetune=job.finetune,
        device=device,
        progress=progress,
        checkpoints=run,
        resume=(run.path / CHECKPOINT).exists(),
    )
    save_model_like(run.file(MODEL), result.model, record)
    test = evaluate(result.model, data, "test")
    run.update_metrics(
        kind="polyfit",
        degree=result.degree,
        granularity=result.granularity,
        poly_sites=result.sites,
        coefficients=result.coefficients,
        relus=count_relus(result.model, data.input_shape).total,
        parent_relus=count_relus(parent_model, data.input_shape).total,
        test_accuracy=test.accuracy,
        parent_test_accuracy=parent_test.accuracy,
        drop=parent_test.accuracy - test.accuracy,
        val_accuracy_before_finetune=result.val_accuracy_before_finetune,
        test=test.as_dict(),
        parent_test=parent_test.as_dict(),
        history=result.history,
        seconds=result.seconds,
        data=data.summary(),
        model=record["model"],
        device=str(device),
    )
    if result.history:
        plots.training_curves(
            result.history,
            run.file("curves.png"),
            title=f"KD fine-tuning, degree-{job.degree} {job.granularity}-wise polynomials",
        )
    plots.group_accuracy(
        test.as_dict(), run.file("groups.png"), title="test accuracy per group, polynomial model"
    )
    run.log.info(
        "polynomial model: test %.4f (ReLU parent %.4f)", test.accuracy, parent_test.accuracy
    )
    return run
