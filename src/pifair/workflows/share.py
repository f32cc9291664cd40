"""``pifair share``: a ReLU-sharing reduction of a trained run, into its own run folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..models.io import save_model_like
from ..reduce.finetune import FinetuneSettings
from ..reduce.share import ShareRule, ShareScheme, share
from ..relu import count_relus
from ..report import plots
from ..runs import CHECKPOINT, MODEL, Run
from ..training import evaluate, resolve_device
from ._jobs import RunJob
from .train import dataset_for_run, load_from_run

__all__ = ["ShareJob", "run_share"]


@dataclass
class ShareJob(RunJob):
    """What ``pifair share`` runs; its dict is the run's config.yaml."""

    from_run: str
    budget: str
    scheme: ShareScheme = "patch"
    rule: ShareRule = "mean"
    seed: int = 0
    device: str = "auto"
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    _nested: ClassVar[dict[str, type]] = {"finetune": FinetuneSettings}


def run_share(
    job: ShareJob,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    device = resolve_device(job.device)
    dense, record, parent = load_from_run(job.from_run)
    data = dataset_for_run(parent)
    run = job.open_run("share", out, resume=resume)
    torch.manual_seed(job.seed)
    dense_test = evaluate(dense.to(device), data, "test")
    result = share(
        dense,
        data,
        job.budget,
        scheme=job.scheme,
        rule=job.rule,
        finetune=job.finetune,
        device=device,
        progress=progress,
        checkpoints=run,
        resume=(run.path / CHECKPOINT).exists(),
    )
    save_model_like(run.file(MODEL), result.model, record)
    test = evaluate(result.model, data, "test")
    run.update_metrics(
        kind="share",
        method=f"share-{job.scheme}-{job.rule}",
        scheme=job.scheme,
        rule=job.rule,
        budget=result.budget,
        relus=result.relus,
        dense_relus=count_relus(dense, data.input_shape).total,
        allocation=result.allocation,
        test_accuracy=test.accuracy,
        dense_test_accuracy=dense_test.accuracy,
        drop=dense_test.accuracy - test.accuracy,
        val_accuracy=evaluate(result.model, data, "val").accuracy,
        test=test.as_dict(),
        dense_test=dense_test.as_dict(),
        history=result.history,
        seconds=result.seconds | {"total": sum(result.seconds.values())},
        data=data.summary(),
        model=record["model"],
        device=str(device),
    )
    if result.history:
        plots.training_curves(
            result.history,
            run.file("curves.png"),
            title=f"fine-tuning with {result.relus:,} shared decisions",
        )
    plots.group_accuracy(
        test.as_dict(),
        run.file("groups.png"),
        title=f"test accuracy per group, {result.relus:,} decisions",
    )
    return run
