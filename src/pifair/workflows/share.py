"""``pifair share``: a ReLU-sharing reduction of a trained run, into its own run folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..reduce.finetune import FinetuneSettings
from ..reduce.share import ShareRule, ShareScheme, share
from ..runs import CHECKPOINT, Run
from ..training import evaluate
from ._jobs import RunJob
from ._reduce import open_parent, write_reduced

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
    """Run ``job``: ReLU sharing of the parent run's model into one run folder."""
    parent = open_parent(job.from_run, job.device)
    run = job.open_run("share", out, resume=resume)
    torch.manual_seed(job.seed)
    result = share(
        parent.model,
        parent.data,
        job.budget,
        scheme=job.scheme,
        rule=job.rule,
        finetune=job.finetune,
        device=parent.device,
        progress=progress,
        checkpoints=run,
        resume=(run.path / CHECKPOINT).exists(),
    )
    write_reduced(
        run,
        result,
        parent,
        kind="share",
        curves_title=f"fine-tuning with {result.relus:,} shared decisions",
        groups_title=f"test accuracy per group, {result.relus:,} decisions",
        method=f"share-{job.scheme}-{job.rule}",
        scheme=job.scheme,
        rule=job.rule,
        budget=result.budget,
        allocation=result.allocation,
        val_accuracy=evaluate(result.model, parent.data, "val").accuracy,
    )
    return run
